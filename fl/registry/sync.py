"""Bring the aggregator VM's model store home, so nothing is lost when the VM is destroyed.

:func:`pull_store` copies the VM's store over SFTP into a snapshot under the state directory,
imports every committed round into the operator's store (checksums verified) and checks the
result; it raises :class:`fedcloud.core.errors.RegistryError`, so a failed pull stops
``pulumi destroy``. See fl/README.md, "Where the store lives".
"""

from __future__ import annotations

import shutil
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fedcloud.core.errors import RegistryError
from fl.app.store import (
    ARTIFACTS_DIR,
    DB_FILE,
    ROUND_TAG_PREFIX,
    ROUNDS_ARTIFACT_DIR,
    RUN_STATUSES,
    round_key,
)
from fl.registry.store import MlflowRoundStore, RunInfo, open_store

# Where the ServerApp's store on the aggregator VM is seen by the operator's SSH user, relative to
# its home (SFTP resolves relative paths from there). The VM bootstrap (infra/cloudinit.py) keeps
# the store in AGGREGATOR_REGISTRY_DIR and links it here.
AGGREGATOR_STORE_DIR = "fedcloud-state/registry"
SNAPSHOTS_DIR = "registry-pulls"
SOURCE_RUN_TAG = "fedcloud.source_run_id"
SOURCE_TAG = "fedcloud.source"


class SftpLike(Protocol):
    """The part of ``paramiko.SFTPClient`` that :func:`pull_store` uses."""

    def listdir_attr(self, path: str = ".") -> Sequence[Any]:
        """List a remote directory (entries with ``filename`` and ``st_mode``)."""
        ...

    def get(self, remotepath: str, localpath: str) -> None:
        """Copy one remote file to a local path."""
        ...


@dataclass(frozen=True)
class PullReport:
    """What a pull brought home.

    Attributes:
        snapshot: The raw copy of the VM's store on the operator's side.
        runs: Operator-store run ids holding the pulled runs.
        rounds_imported: Rounds newly recorded in the operator's store.
        rounds_present: Rounds that were already there (an earlier pull).
    """

    snapshot: Path
    runs: tuple[str, ...]
    rounds_imported: int
    rounds_present: int


def fetch_tree(sftp: SftpLike, remote_dir: str, local_dir: Path) -> int:
    """Copy a remote directory tree into ``local_dir``; return the number of files.

    Raises:
        RegistryError: Listing or copying a remote path failed.
    """
    local_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    try:
        entries = list(sftp.listdir_attr(remote_dir))
    except OSError as exc:
        raise RegistryError(f"cannot list {remote_dir} on the aggregator ({exc}).",
                            "check the VM is up and the store path "
                            f"(default ~/{AGGREGATOR_STORE_DIR}).") from None
    for entry in entries:
        remote = f"{remote_dir.rstrip('/')}/{entry.filename}"
        if entry.st_mode is not None and stat.S_ISDIR(entry.st_mode):
            count += fetch_tree(sftp, remote, local_dir / entry.filename)
            continue
        try:
            sftp.get(remote, str(local_dir / entry.filename))
        except OSError as exc:
            raise RegistryError(f"copying {remote} from the aggregator failed ({exc}).",
                                "retry the pull; the VM and its store are untouched.") from None
        count += 1
    return count


def pull_store(sftp: SftpLike, remote_dir: str, local_location: str | Path, experiment: str,
               state_dir: Path) -> PullReport:
    """Copy the aggregator's store home and import it into the operator's store.

    Args:
        sftp: An open SFTP session to the aggregator VM (``paramiko.SFTPClient``).
        remote_dir: The VM's store directory (``AGGREGATOR_STORE_DIR``).
        local_location: The operator's store (``StackConfig.registry.location``).
        experiment: ``fedcloud-<stack>`` (the same on both sides).
        state_dir: The stack's state directory; snapshots go under ``registry-pulls/``.

    Raises:
        RegistryError: The transfer, the import or the verification failed (nothing is half
            written: no partial snapshot, and rounds are committed one by one).
    """
    snapshots = state_dir / SNAPSHOTS_DIR
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    final = snapshots / f"pull-{stamp}"
    suffix = 1
    while final.exists():
        suffix += 1
        final = snapshots / f"pull-{stamp}-{suffix}"
    partial = final.with_name(f".{final.name}.partial")
    try:
        fetch_tree(sftp, remote_dir, partial)
        if not (partial / DB_FILE).is_file():
            raise RegistryError(f"{remote_dir} on the aggregator holds no model store "
                                f"({DB_FILE} missing).",
                                "check the ServerApp's store path "
                                f"(default ~/{AGGREGATOR_STORE_DIR}).")
        partial.rename(final)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return import_store(final, local_location, experiment)


def _round_dir(snapshot: Path, run_id: str, server_round: int) -> Path:
    return (snapshot / ARTIFACTS_DIR / run_id / "artifacts" / ROUNDS_ARTIFACT_DIR /
            round_key(server_round))


def import_store(snapshot: Path, local_location: str | Path, experiment: str) -> PullReport:
    """Import every committed round of an embedded store copy into another store.

    Args:
        snapshot: A directory holding ``mlflow.db`` and ``artifacts/`` (an embedded store).
        local_location: The destination store.
        experiment: The experiment to import (same name on both sides).

    Raises:
        RegistryError: The snapshot lacks the experiment or a round's files, a checkpoint is
            corrupt, or the destination did not end up with every round.
    """
    source = open_store(snapshot, experiment)
    runs = source.runs()
    dest = open_store(local_location, experiment)
    dest.experiment_id(create=True)
    existing = {r.tags.get(SOURCE_RUN_TAG): r for r in dest.runs() if SOURCE_RUN_TAG in r.tags}
    imported = present = 0
    touched: list[str] = []
    for run in reversed(runs):  # oldest first, so the newest pulled run stays the newest
        target = existing.get(run.run_id) or _create_copy(dest, run, snapshot)
        have = {r.server_round: r.sha256 for r in target.rounds}
        for r in run.rounds:
            if r.server_round in have:
                present += 1
                continue
            directory = _round_dir(snapshot, run.run_id, r.server_round)
            if not directory.is_dir():
                raise RegistryError(f"the snapshot {snapshot} lacks the files of round "
                                    f"{r.server_round} of run {run.run_id}.",
                                    "pull again; the VM's store is untouched.")
            dest.commit_round_dir(target.run_id, directory)
            imported += 1
        if run.status in RUN_STATUSES and target.status != run.status:
            with dest.mlflow_errors(f"closing the copy of run {run.run_id}", "pull again."):
                dest.client.set_terminated(target.run_id, status=run.status)
        touched.append(target.run_id)
    _verify(dest, runs, touched)
    return PullReport(snapshot=snapshot, runs=tuple(touched), rounds_imported=imported,
                      rounds_present=present)


def _create_copy(dest: MlflowRoundStore, run: RunInfo, snapshot: Path) -> RunInfo:
    from mlflow.entities import Param

    tags = {k: v for k, v in run.tags.items()
            if not k.startswith(ROUND_TAG_PREFIX) and not k.startswith("mlflow.")}
    tags[SOURCE_RUN_TAG] = run.run_id
    tags[SOURCE_TAG] = str(snapshot)
    with dest.mlflow_errors(f"copying run {run.run_id}", "pull again."):
        created = dest.client.create_run(dest.experiment_id(), start_time=run.start_time,
                                         run_name=run.run_name, tags=tags)
        params = [Param(k, v) for k, v in run.params.items()]
        for start in range(0, len(params), 100):
            dest.client.log_batch(created.info.run_id, params=params[start:start + 100])
    return RunInfo(run_id=created.info.run_id, run_name=run.run_name,
                   status=created.info.status, start_time=run.start_time,
                   params=dict(run.params), tags=tags)


def _verify(dest: MlflowRoundStore, runs: list[RunInfo], touched: list[str]) -> None:
    after = {r.run_id: r for r in dest.runs()}
    for run, target_id in zip(reversed(runs), touched, strict=True):
        got = {r.server_round: r.sha256 for r in after[target_id].rounds}
        for r in run.rounds:
            if got.get(r.server_round) != r.sha256:
                raise RegistryError(
                    f"round {r.server_round} of run {run.run_id} did not reach the operator's "
                    f"store intact (run {target_id}).",
                    "pull again before destroying the aggregator.")
