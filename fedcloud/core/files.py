"""Files from outside the program, read with bounds; state files, written atomically.

* :func:`read_bounded` reads a regular file under a stated size (never a directory, a FIFO or a
  device such as ``/dev/zero``, which would block or stream forever);
* :func:`load_yaml` is a strict YAML reader on top of ``yaml.SafeLoader``'s rules: UTF-8 only,
  no anchors or aliases, no duplicate or oversized keys, bounded depth and node count;
* :func:`short` cuts a value for an error message, so a hostile value is never echoed in full;
* :func:`write_atomic` / :func:`write_json_atomic` replace a file so that a reader sees the old
  or the new content, never a partial one, even after a crash.

Every refusal is one line naming the file and the fix (:class:`~fedcloud.core.errors.ConfigError`
unless the caller asks for another :class:`~fedcloud.core.errors.FedcloudError` class).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, Event
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from fedcloud.core.errors import ConfigError, FedcloudError

KIB_BYTES = 1024
MIB_BYTES = 1024 * KIB_BYTES
STACK_FILE_MAX_BYTES = 1 * MIB_BYTES
YAML_MAX_DEPTH = 50
YAML_MAX_NODES = 100_000
YAML_MAX_KEY_CHARS = 128
SHORT_CHARS = 40
_MESSAGE_PART_CHARS = 120
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _PyParser(Reader, Scanner, Parser):
    """The pure-Python reader, scanner and event parser, when libyaml is not installed."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)




def short(value: Any, limit: int = SHORT_CHARS) -> str:
    """Return ``value`` as one printable line of at most ``limit`` characters.

    Longer values keep a prefix and end in ``...``; control characters are escaped. Only the
    prefix is examined, so a 10 MB string costs no more than a short one.
    """
    text = value if isinstance(value, str) else repr(value)
    head = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    if len(text) <= limit and len(head) <= limit:
        return head
    return head[: max(limit - 3, 1)] + "..."


def _size(n_bytes: int) -> str:
    for unit, factor in (("MiB", MIB_BYTES), ("KiB", KIB_BYTES)):
        if n_bytes >= factor:
            amount = n_bytes / factor
            return f"{amount:.0f} {unit}" if amount == int(amount) else f"{amount:.1f} {unit}"
    return f"{n_bytes} bytes"


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_bounded(path: str | Path, max_bytes: int, what: str, *,
                 error: type[FedcloudError] = ConfigError, prefix: str = "",
                 fix: str | None = None) -> bytes:
    """Return the bytes of the regular file ``path``, refusing anything over ``max_bytes``.

    The file type is checked before the file is opened (and again on the open descriptor,
    opened non-blocking), so a FIFO, a terminal or ``/dev/zero`` is refused at once; at most
    ``max_bytes + 1`` bytes are ever read.

    Args:
        path: The file.
        max_bytes: The largest size accepted.
        what: What the file should be, for messages (``"a stack file"``).
        error: The error class raised (a :class:`FedcloudError` subclass).
        prefix: Put before every message (``"aws: "``).
        fix: The fix of every refusal, instead of the generic ones (for state files).

    Raises:
        FedcloudError: (``error``) missing, unreadable, not a regular file, or too large.
    """
    p = Path(path)
    limit = f"the {_size(max_bytes)} limit for {what}"

    def refuse(problem: str, generic_fix: str) -> FedcloudError:
        return error(f"{prefix}{p}{problem}.", fix or generic_fix)

    try:
        info = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        raise refuse(f" not found ({what} expected)",
                     "check the path (and the current directory).") from None
    except OSError as exc:
        raise _unreadable(refuse, p, what, exc) from None
    if not stat.S_ISREG(info.st_mode):
        raise refuse(f" is {_file_kind(info.st_mode)}, not {what}",
                     f"pass {what} itself (a regular file).")
    if info.st_size > max_bytes:
        raise refuse(f" is {_size(info.st_size)}, over {limit}",
                     f"check that {p} is {what}; such files are a few KiB.")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise _unreadable(refuse, p, what, exc) from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):  # replaced between stat and open
            raise refuse(f" is {_file_kind(mode)}, not {what}",
                         f"pass {what} itself (a regular file).")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise refuse(f" grew over {limit} while being read",
                     f"check that {p} is {what} and that nothing is writing to it.")
    return data


def _unreadable(refuse: Callable[[str, str], FedcloudError], path: Path, what: str,
                exc: OSError) -> FedcloudError:
    if isinstance(exc, PermissionError):
        return refuse(f" is not readable by this user ({what} expected)",
                      f"run as the file's owner or 'chmod u+r {path}'.")
    return refuse(f" cannot be read ({exc.strerror})",
                  f"check that {path} is {what} on a readable filesystem.")


class _Strict(Composer, SafeConstructor, Resolver):
    """Safe YAML with no anchors, aliases or merge keys, no duplicate keys, bounded size.

    The composer is always this Python one (it comes before the parser in the method order),
    so the checks run on every event whichever parser produced it.
    """

    PARSER: Any = None
    peek_event: Callable[[], Event]  # from the parser class
    dispose: Callable[[], None]

    def __init__(self, text: str, source: str, what: str) -> None:
        self.PARSER.__init__(self, text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.source = source
        self.what = what
        self.depth = 0
        self.nodes = 0

    def refuse(self, mark: Any, problem: str, fix: str) -> ConfigError:
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
        return ConfigError(f"{self.source}: {where}: {problem}.", fix)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event: Event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if isinstance(event, AliasEvent) or anchor:
            kind = "alias *" if isinstance(event, AliasEvent) else "anchor &"
            raise self.refuse(event.start_mark,
                              f"YAML {kind}{short(anchor)} is not accepted in {self.what}",
                              "write the value out in full (no &name or *name).")
        self.depth += 1
        self.nodes += 1
        if self.depth > YAML_MAX_DEPTH:
            raise self.refuse(event.start_mark,
                              f"nested deeper than {YAML_MAX_DEPTH} levels",
                              f"flatten the structure; {self.what} needs a few levels.")
        if self.nodes > YAML_MAX_NODES:
            raise self.refuse(event.start_mark, f"more than {YAML_MAX_NODES} values",
                              f"check that {self.source} is {self.what}.")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # ValueError and OverflowError explain the value (a day out of range, too many
            # digits); the others are the constructor tripping over a malformed one.
            text = str(exc).splitlines()[0] if str(exc) else ""
            explained = isinstance(exc, ValueError | OverflowError) and text
            reason = f" ({short(text, _MESSAGE_PART_CHARS)})" if explained else ""
            shown = f"'{short(node.value)}'" if isinstance(node, ScalarNode) else "a collection"
            tag = short(node.tag.removeprefix("tag:yaml.org,2002:"))
            raise self.refuse(node.start_mark, f"the value {shown} cannot be read as {tag}{reason}",
                              "quote it to make it a string, or correct it.") from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            self.check_keys(node)
        return super().construct_mapping(node, deep)

    def check_keys(self, node: MappingNode) -> None:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            mark = key_node.start_mark
            if key_node.tag == _MERGE_TAG:
                raise self.refuse(mark, f"merge keys (<<) are not accepted in {self.what}",
                                  "write the merged keys out in full.")
            if not isinstance(key_node, ScalarNode):
                raise self.refuse(mark, "a mapping key is a list or a mapping",
                                  "use plain names as keys.")
            if len(key_node.value) > YAML_MAX_KEY_CHARS:
                raise self.refuse(mark, f"the key '{short(key_node.value)}' is "
                                  f"{len(key_node.value)} characters long, over "
                                  f"{YAML_MAX_KEY_CHARS}", "use a short key name.")
            if not key_node.value.isprintable():
                raise self.refuse(mark, f"the key '{short(key_node.value)}' holds a control "
                                  "character (a line break, a tab ...)", "use a plain key name.")
            key = self.construct_object(key_node)
            try:
                first = seen.get(key)
            except TypeError:
                raise self.refuse(mark, "a mapping key is not a plain value",
                                  "use plain names as keys.") from None
            if first is not None:
                raise self.refuse(mark, f"duplicate key '{short(key_node.value)}' (first at "
                                  f"line {first})", "keep one of the two entries.")
            seen[key] = mark.line + 1


class _PyStrictLoader(_Strict, _PyParser):
    PARSER = _PyParser


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _CStrictLoader(_Strict, CParser):
        PARSER = CParser  # libyaml's event parser: C, no recursion, several times faster

    _StrictLoader: type[_Strict] = _CStrictLoader
else:
    _StrictLoader = _PyStrictLoader


def _yaml_error(source: str, text: str, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None)
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.character, int):
        # The first occurrence is the one refused (an earlier one would have been refused).
        at = max(text.find(chr(exc.character)), 0)
        where = f" line {text.count(chr(10), 0, at) + 1}, column {at - text.rfind(chr(10), 0, at)}"
        problem = f"unacceptable character #x{exc.character:04x}"
    problem = problem or (str(exc).splitlines() or [type(exc).__name__])[0]
    return ConfigError(f"{source}:{where} is not valid YAML "
                       f"({short(problem, _MESSAGE_PART_CHARS)}).",
                       "correct the YAML syntax at that position.")


def load_yaml(path: str | Path, max_bytes: int = STACK_FILE_MAX_BYTES,
              what: str = "a stack file") -> Any:
    """Parse a YAML file strictly; return plain Python values (``None`` for an empty file).

    Args:
        path: The file.
        max_bytes: The largest size accepted (default: a stack file's 1 MiB).
        what: What the file is, for messages.

    Raises:
        ConfigError: Not a bounded regular file, not UTF-8, not YAML, or uses anchors/aliases,
            merge keys, duplicate or oversized keys, or nests too deep; names the position.
    """
    source = str(path)
    data = read_bounded(path, max_bytes, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{source}: byte {exc.start} (line {line}, value 0x"
                          f"{data[exc.start]:02x}) is not UTF-8.",
                          "save the file as UTF-8.") from None
    return _parse(text, source, what)


def _parse(text: str, source: str, what: str, loader_class: type[_Strict] = _StrictLoader) -> Any:
    loader = None
    try:
        loader = loader_class(text, source, what)  # the pure-Python reader checks characters here
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise _yaml_error(source, text, exc) from None
    finally:
        if loader is not None:
            loader.dispose()


def write_atomic(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    A temporary file in the same directory gets ``mode`` (exactly, before any byte is written,
    so a private file is never readable by others), the data and an ``fsync``; ``os.replace``
    puts it in place and the directory is ``fsync``-ed so the rename survives a crash. The
    parent directory is created if missing.

    Args:
        path: The destination.
        data: The complete new content.
        mode: The file's permission bits (``0o600`` for anything private).
    """
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            out.write(data)

    write_atomic_with(path, write, mode)


def write_atomic_with(path: str | Path, write: Callable[[Path], object], mode: int = 0o644,
                      ) -> None:
    """Like :func:`write_atomic`, with the content written to the temporary path by ``write``.

    For writers that want a path (``torch.save``, a CSV writer, a plot); ``write`` may also
    check the finished temporary file and raise to keep the old ``path``.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        os.fchmod(fd, mode)
        os.close(fd)
        write(Path(tmp))
        with open(tmp, "rb") as done:
            os.fsync(done.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(dest.parent)


def write_json_atomic(path: str | Path, doc: Any, mode: int = 0o644) -> None:
    """Write ``doc`` as JSON (indented, sorted keys, UTF-8, final newline) with write_atomic."""
    text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_atomic(path, text.encode("utf-8"), mode)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a directory; the rename stands
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
