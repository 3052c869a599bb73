"""``flwr-clientapp`` as the SuperExec finds it on PATH: hand the start to the warm starter.

Sends its command line, environment, working directory and standard streams to the starter's
socket (``FEDCLOUD_WARM_SOCKET``) and exits once a ClientApp runs with them; when the starter
does not answer it becomes Flower's own ``flwr-clientapp`` (``FEDCLOUD_REAL_CLIENTAPP``), so a
start is never lost. Stdlib only, run with ``python -S``. See fl/README.md, "Warm ClientApp
starts".
"""

import json
import os
import socket
import sys

REAL_ENV = "FEDCLOUD_REAL_CLIENTAPP"


def main() -> None:
    """Start the ClientApp warm, or cold when the starter is not there."""
    path = os.environ.get("FEDCLOUD_WARM_SOCKET", "")
    real = os.environ.get(REAL_ENV, "")
    doc = {"argv": ["flwr-clientapp", *sys.argv[1:]], "env": dict(os.environ),
           "cwd": os.getcwd()}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(path)
            socket.send_fds(conn, [json.dumps(doc).encode("utf-8")], [0, 1, 2])
            if conn.recv(32).strip().isdigit():
                return
    except OSError:
        pass
    if not real or os.path.realpath(real) == os.path.realpath(sys.argv[0]):
        sys.exit("flwr-clientapp: the warm starter does not answer and Flower's own "
                 f"flwr-clientapp was not found ({REAL_ENV} is {real!r})")
    os.execv(real, [real, *sys.argv[1:]])


if __name__ == "__main__":
    main()
