"""A run's outputs as one set: staged inside the output dataset, committed by renames.

Every output of a run (data files, sidecars, report) is first written under a hidden staging
directory of the output dataset (the same file system, so a rename is atomic); the content
digests of those files go into the provenance record, staged last. The commit then writes a
plan (what to move, what to remove), removes the previous record, renames the files into
place and renames the new record last. Everything happens under the run's lock.

The plan makes a commit recoverable: a process killed while renaming leaves its staging
directory with its plan, and whoever takes the run's lock next finishes the renames
(:meth:`OutputSet.recover`); a staging directory without a plan is an attempt that never
reached its commit, and is removed. A record on disk thus always describes a complete set,
and :meth:`OutputSet.verify` checks a set against its record by content.

Under ``<output_dir>/.masker-wf/`` (hidden: validators and pybids skip it):

- ``locks/<key>.lock``: the run's lock (``flock``), held while its outputs are checked,
  staged, committed or confirmed;
- ``staging/<key>/<attempt>/``: one attempt's files at their paths relative to the output
  dataset, and its ``plan.json``;
- ``digests/<key>.json``: digests of the run's outputs and inputs by stat key (resolved
  path, size, times, inode: see :func:`masker_wf._io.stat_key`), so that checking
  a set and recording its inputs read no file whose stat did not change.

``<key>`` identifies the set: a digest of its provenance record's path (run, desc, res).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from .._io import file_digest, stat_key
from ..bids import derivatives as deriv
from .errors import OutputError

__all__ = ["STATE_DIR", "DigestMemo", "OutputSet", "Stage", "locked", "output_error", "sweep"]

#: The App's own state in the output dataset (locks, staging, digest memos).
STATE_DIR = ".masker-wf"
_PLAN = "plan.json"
_PROBE = ".masker-wf-probe-"


def output_error(path, exc: OSError) -> OutputError:
    """An :class:`OutputError` naming ``path`` for the system error ``exc``."""
    return OutputError(path, exc.errno, exc.strerror or str(exc))


def _key(out_dir: Path, record: Path) -> str:
    relative = record.relative_to(out_dir).as_posix()
    return hashlib.sha256(relative.encode()).hexdigest()[:24]


@contextlib.contextmanager
def _flock(path: Path, *, blocking: bool = True):
    """Hold an exclusive ``flock`` on ``path``; yields False when not blocking and busy."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise output_error(path, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def locked(path):
    """Context manager holding an exclusive lock on the file ``path`` (waits for it)."""
    return _flock(Path(path))


def _move(source: Path, destination: Path) -> None:
    # One function for every rename of a commit (tests kill the App at the n-th one).
    os.replace(source, destination)


class DigestMemo:
    """SHA-256 digests of files, remembered by stat key, saved as one JSON file.

    Parameters
    ----------
    path : pathlib.Path
        The memo file (created by :meth:`save`).
    """

    def __init__(self, path: Path):
        self.path = path
        self.changed = False
        self._entries = None

    @property
    def entries(self) -> dict:
        """Resolved path -> ``[size, mtime, ctime, inode, digest]`` (read when first used)."""
        if self._entries is None:
            try:
                entries = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                entries = {}
            self._entries = entries if isinstance(entries, dict) else {}
        return self._entries

    def known(self, path, key=None) -> str | None:
        """The file's digest when the memo holds it for the file as it is now, else None.

        Nothing is read; the digest is not given to the process's memo (see
        :func:`masker_wf._io.remember_digest` for what Pydra's file hash should know).
        """
        key = stat_key(path) if key is None else key
        entry = self.entries.get(key[0])
        if isinstance(entry, list) and entry[:-1] == list(key[1:]):
            return entry[-1]
        return None

    def digest(self, path) -> str:
        """The file's digest: from the memo when its stat key is unchanged, else computed."""
        key = stat_key(path)
        value = self.known(path, key)
        if value is not None:
            return value
        value = file_digest(key[0])
        self.entries[key[0]] = [*key[1:], value]
        self.changed = True
        return value

    def remember(self, path, value: str) -> None:
        """Record ``value`` as the digest of ``path`` as it is now (after a rename)."""
        key = stat_key(path)
        self.entries[key[0]] = [*key[1:], value]
        self.changed = True

    def save(self) -> None:
        """Write the memo (it is a cache: a failure is not an error)."""
        if not self.changed:
            return
        with contextlib.suppress(OSError):
            deriv.write_json(self.path, self.entries)
        self.changed = False


class Stage:
    """One attempt's staging directory; files are staged at their final relative paths."""

    def __init__(self, out_dir: Path, root: Path):
        self.out_dir, self.root = out_dir, root

    def path(self, final) -> Path:
        """Where the output ``final`` (absolute, in the output dataset) is staged."""
        staged = self.root / Path(final).relative_to(self.out_dir)
        try:
            staged.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(final, exc) from exc
        return staged

    def final(self, staged) -> Path:
        """The output a staged path stands for (itself when outside the stage)."""
        staged = Path(staged)
        if staged.is_relative_to(self.root):
            return self.out_dir / staged.relative_to(self.root)
        return staged

    def files(self) -> list[str]:
        """Relative paths of the staged files (temporary files and the plan excluded)."""
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.is_file() and not path.name.startswith(".") and path.name != _PLAN
        )

    def digests(self, exclude=()) -> dict:
        """``relative path -> {"sha256", "size"}`` of the staged files (each read once)."""
        return {
            relative: {
                "sha256": file_digest(self.root / relative),
                "size": (self.root / relative).stat().st_size,
            }
            for relative in self.files()
            if relative not in exclude
        }

    def discard(self) -> None:
        """Remove the staging directory and everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)


class OutputSet:
    """The outputs of one run (one provenance record) in the output dataset.

    Used as a context manager: entering takes the run's lock (waiting for another process
    that holds it) and recovers what killed attempts left; leaving saves the digest memo
    and releases the lock.

    Parameters
    ----------
    out_dir : pathlib.Path
        The output dataset.
    record : pathlib.Path
        The run's provenance record (absolute path in ``out_dir``).
    """

    def __init__(self, out_dir, record):
        self.out_dir = Path(out_dir)
        self.record = Path(record)
        self.key = _key(self.out_dir, self.record)
        state = self.out_dir / STATE_DIR
        self.lock_file = state / "locks" / f"{self.key}.lock"
        self.staging = state / "staging" / self.key
        self.memo = DigestMemo(state / "digests" / f"{self.key}.json")
        self._lock = None

    @property
    def relative_record(self) -> str:
        """The record's path relative to the output dataset."""
        return self.record.relative_to(self.out_dir).as_posix()

    def __enter__(self) -> OutputSet:
        self._lock = _flock(self.lock_file)
        self._lock.__enter__()
        try:
            self.recover()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.memo.save()
        finally:
            self._lock.__exit__(*exc_info)

    # ---------------------------------------------------------------------- killed attempts
    def recover(self) -> list[str]:
        """Finish the commits of killed attempts, remove the other leftovers (lock held).

        Returns
        -------
        list of str
            What was done, one line per staging directory.
        """
        done = []
        # Oldest plan first: the newest commit is the one that stays.
        attempts = sorted((p for p in self.staging.glob("*") if p.is_dir()), key=_plan_time)
        for attempt in attempts:
            plan = _read_plan(attempt)
            if plan is None:
                shutil.rmtree(attempt, ignore_errors=True)
                done.append(f"removed the staged files of an interrupted attempt ({attempt.name})")
            else:
                self._apply(attempt, plan)
                done.append(f"finished the commit of an interrupted attempt ({attempt.name})")
        # A memo is only saved under this lock: a temporary file of it is a killed save's.
        memo = self.memo.path
        for leftover in memo.parent.glob(f".{memo.name}.*.tmp*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
                done.append(f"removed the temporary file of an interrupted save ({leftover.name})")
        return done

    # ------------------------------------------------------------------------- checking
    def verify(self, files) -> list[str]:
        """What differs between the output dataset and a record's ``Files`` (empty: same).

        A file of the set is checked by size, then by content digest (read only when its
        stat key is not in the memo).
        """
        problems = []
        for relative, expected in sorted(dict(files).items()):
            path = self.out_dir / relative
            try:
                size = path.stat().st_size
            except OSError:
                problems.append(f"{relative}: missing")
                continue
            if size != expected.get("size") or self.memo.digest(path) != expected.get("sha256"):
                problems.append(f"{relative}: changed since it was written")
        return problems

    def stale(self, candidates, keep) -> list[str]:
        """Relative paths of ``candidates`` present in the output dataset, not in ``keep``."""
        keep = set(keep)
        return sorted(
            relative
            for relative in candidates
            if relative not in keep and (self.out_dir / relative).is_file()
        )

    def remove_leftovers(self, relatives) -> None:
        """Remove the temporary files earlier writers left next to these outputs (lock held)."""
        _remove_leftovers(*(self.out_dir / relative for relative in relatives))

    # ------------------------------------------------------------------------- writing
    def stage(self) -> Stage:
        """A new staging directory for this run's outputs."""
        root = self.staging / uuid.uuid4().hex
        try:
            root.mkdir(parents=True)
        except OSError as exc:
            raise output_error(root, exc) from exc
        return Stage(self.out_dir, root)

    def check_destinations(self, relatives) -> None:
        """Refuse, before anything is written, outputs whose place is taken.

        Raises
        ------
        OutputError
            A file where an output directory must be (73), or a directory where an output
            file must be (73).
        """
        for relative in relatives:
            final = self.out_dir / relative
            for parent in reversed(final.relative_to(self.out_dir).parents[:-1]):
                directory = self.out_dir / parent
                if directory.exists() and not directory.is_dir():
                    raise OutputError(
                        directory, errno.ENOTDIR, "a file is in the way of an output directory"
                    )
            if final.is_dir():
                raise OutputError(final, errno.EISDIR, "a directory is in the way of an output")

    def _prepare_directories(self, relatives, stage: Stage) -> None:
        """Create the output directories; check they take renames from the stage."""
        created = []
        staging_device = os.stat(stage.root).st_dev
        try:
            for directory in sorted({(self.out_dir / r).parent for r in relatives}):
                missing = [p for p in (directory, *directory.parents) if not p.exists()]
                directory.mkdir(parents=True, exist_ok=True)
                created += [p for p in missing if p.is_relative_to(self.out_dir)]
                if os.stat(directory).st_dev != staging_device:
                    raise OutputError(
                        directory,
                        errno.EXDEV,
                        "on another file system than the output dataset (the outputs of a run "
                        "are committed by renames)",
                    )
                # Permissions, immutable directories, read-only mounts: found before the
                # plan, when the previous set is still intact.
                fd, probe = tempfile.mkstemp(prefix=_PROBE, dir=directory)
                os.close(fd)
                os.unlink(probe)
        except OutputError:
            _remove_empty(created)
            raise
        except OSError as exc:
            _remove_empty(created)
            raise output_error(exc.filename or self.out_dir, exc) from exc

    def commit(self, stage: Stage, digests: dict, stale=()) -> None:
        """Move the staged set into place, the provenance record last; remove ``stale``.

        The staged record must be the last file written to ``stage``; ``digests`` are the
        files' (:meth:`Stage.digests`, as the record lists them): remembered for the files
        in place, so that checking the set later reads none of them.

        Raises
        ------
        OutputError
            An output directory cannot be created or written (nothing is changed then).
        """
        record = self.record.relative_to(self.out_dir).as_posix()
        files = [f for f in stage.files() if f != record]
        self._prepare_directories([*files, record], stage)
        plan = {"record": record, "files": files, "remove": sorted(set(stale) - set(files))}
        try:
            deriv.write_json(stage.root / _PLAN, plan)
        except OSError as exc:
            raise output_error(self.record, exc) from exc
        self._apply(stage.root, plan)
        for relative in files:
            with contextlib.suppress(OSError, KeyError):
                self.memo.remember(self.out_dir / relative, digests[relative]["sha256"])

    def _apply(self, root: Path, plan: dict) -> None:
        """Carry out a plan (again, after a kill: every step can be repeated)."""
        staged_record = root / plan["record"]
        if staged_record.exists():  # else the commit was complete: only cleaning is left
            final_record = self.out_dir / plan["record"]
            try:
                # The previous set stops being a set first: no record ever lists a mix.
                final_record.unlink(missing_ok=True)
                moves = [
                    (root / relative, self.out_dir / relative)
                    for relative in plan["files"]
                    if (root / relative).exists()
                ]
                for _, destination in moves:
                    destination.parent.mkdir(parents=True, exist_ok=True)
                _remove_leftovers(*(destination for _, destination in moves), final_record)
                for source, destination in moves:
                    _move(source, destination)
                for relative in plan["remove"]:
                    (self.out_dir / relative).unlink(missing_ok=True)
                _move(staged_record, final_record)
            except OSError as exc:
                raise output_error(exc.filename or final_record, exc) from exc
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):
            root.parent.rmdir()  # the run's staging directory, when no other attempt is left


def _plan_time(attempt: Path) -> int:
    try:
        return (attempt / _PLAN).stat().st_mtime_ns
    except OSError:
        return 0


def _read_plan(attempt: Path) -> dict | None:
    try:
        plan = json.loads((attempt / _PLAN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(plan, dict) or not {"record", "files", "remove"} <= set(plan):
        return None
    return plan


def _remove_leftovers(*destinations: Path) -> None:
    """Temporary files of earlier writers of ``destinations`` (``.<name>.<random>.tmp…``).

    Each directory is listed once, whatever the number of its destinations.
    """
    names_in: dict[Path, set] = {}
    for destination in destinations:
        names_in.setdefault(destination.parent, set()).add(destination.name)
    for directory, names in names_in.items():
        try:
            entries = [entry.name for entry in os.scandir(directory)]
        except OSError:
            continue
        for entry in entries:
            if _is_leftover(entry, names):
                (directory / entry).unlink(missing_ok=True)


def _is_leftover(entry: str, names) -> bool:
    """``entry`` is ``.<name>.<anything>.tmp<anything>`` for one of ``names``."""
    if not entry.startswith(".") or ".tmp" not in entry:
        return False
    return any(
        entry.startswith(f".{name}.") and ".tmp" in entry[len(name) + 2 :] for name in names
    )


def _remove_empty(directories) -> None:
    for directory in sorted(directories, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()


def sweep(out_dir) -> list[str]:
    """Recover what killed attempts left in the output dataset, for every idle run.

    Runs whose lock another process holds are left to it.

    Returns
    -------
    list of str
        What was done.
    """
    out_dir = Path(out_dir)
    staging = out_dir / STATE_DIR / "staging"
    done = []
    if not staging.is_dir():
        return done
    for key_dir in sorted(p for p in staging.iterdir() if p.is_dir()):
        lock = out_dir / STATE_DIR / "locks" / f"{key_dir.name}.lock"
        with _flock(lock, blocking=False) as acquired:
            if not acquired:
                continue
            attempts = [p for p in key_dir.iterdir() if p.is_dir()]
            plans = [_read_plan(p) for p in attempts]
            record = next((p["record"] for p in plans if p is not None), None)
            if record is None:  # nothing to finish: no need to know the run
                for attempt in attempts:
                    shutil.rmtree(attempt, ignore_errors=True)
                    done.append(f"removed interrupted attempt {attempt.name}")
            else:
                output_set = OutputSet(out_dir, out_dir / record)
                done += output_set.recover()
                output_set.memo.save()
            with contextlib.suppress(OSError):
                key_dir.rmdir()
    return done
