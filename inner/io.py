"""Durable file writes: atomic replacement and fsynced JSON lines.

Every record of a run is written through these: a reader (or a run resumed after a kill) sees a
file's old content or its new one, never a mix, and an append-only log loses at most its torn
last line, which readers skip.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from inner.sdk.errors import AutodataError

_R = TypeVar("_R")
log = logging.getLogger(__name__)

#: errno values that say the run's environment cannot hold its records, with what to do: no
#: document or harness is at fault, and retrying the document cannot help
ENVIRONMENT_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "free space on that file system and rerun the same command",
    errno.EDQUOT: "free space within the disk quota and rerun the same command",
    errno.EROFS: "the file system is read-only: make it writable or choose another hydra.run.dir",
    errno.EACCES: "make it writable by this user or choose another hydra.run.dir",
    errno.EPERM: "make it writable by this user or choose another hydra.run.dir",
    errno.EMFILE: "raise the open-file limit (ulimit -n) or lower inner.max_concurrent_documents",
    errno.ENFILE: "the system's open-file table is full: lower inner.max_concurrent_documents",
}


class StorageError(AutodataError, OSError):
    """The run cannot write its records (disk full, read-only or not ours) or open another
    file: an :class:`OSError` (``errno``, ``filename`` kept) that is also an
    :class:`~inner.sdk.errors.AutodataError`, so the console scripts print its one-line
    message and exit 1. What was written before is intact (writes are atomic or append-only)."""

    def __init__(self, message: str, *, errno_: int, path: str | None = None) -> None:
        OSError.__init__(self, errno_, message)
        self.filename = path
        self.message = message

    def __str__(self) -> str:
        return self.message


def environment_error(exc: BaseException, path: Path | str | None = None) -> StorageError | None:
    """``exc`` as a :class:`StorageError` when it is an :class:`OSError` of
    :data:`ENVIRONMENT_ERRNOS` (itself if it already is one), else ``None``.

    Args:
        path: the file being written, when ``exc`` does not name it.
    """
    if isinstance(exc, StorageError):
        return exc
    if not isinstance(exc, OSError) or exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = exc.filename or path
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    what = f"cannot write {where}" if where else "cannot write the run's records (disk)"
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        what = f"cannot open {where}" if where else "cannot open another file"
    return StorageError(
        f"{what}: {exc.strerror or os.strerror(exc.errno)} ({name}); {ENVIRONMENT_ERRNOS[exc.errno]}. "
        "Nothing finished was lost: records are written atomically or appended",
        errno_=exc.errno,
        path=str(where) if where else None,
    )


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` durably: a temp file in the same directory, fsynced,
    renamed over ``path`` with ``os.replace``, then the directory fsynced.

    A reader sees the old content or the new one, never a mix; after a crash or power loss
    the file holds one of the two (the rename itself is made durable by the directory fsync).
    A failed write leaves the old content and no temp file.

    Raises:
        StorageError: the disk is full, read-only or not writable, or no file can be opened
            (:func:`environment_error`).
        OSError: the directory cannot be created or written otherwise.
    """
    try:
        _atomic_write_text(path, text)
    except OSError as exc:
        err = environment_error(exc, path)
        if err is None or err is exc:
            raise
        raise err from exc


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """fsync ``directory`` so that a file created or renamed in it survives a crash (POSIX;
    a no-op where directories cannot be opened, e.g. on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def _salvage(line: str, parse: Callable[[str], _R]) -> tuple[_R, str] | None:
    """``(parse(line), line)``; if that fails, the same for the longest tail of ``line`` that
    starts a JSON object and parses (a record glued to a torn one by a writer that did not
    terminate it); ``None`` if nothing parses."""
    start = 0
    while start >= 0:
        try:
            return parse(line[start:]), line[start:]
        except ValueError:
            start = line.find('{"', start + 1)
    return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines of a JSONL file. A torn line (a kill during a write) is skipped; a complete
    record glued to the end of a torn one is recovered."""
    if not path.exists():
        return []
    out = []
    # a line torn inside a multi-byte character must not make the whole file unreadable
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        got = _salvage(line, json.loads)
        if got is not None:
            out.append(got[0])
    return out


def _append_line(path: Path, line: str) -> None:
    """Append ``line`` (ending in a newline) durably: a torn previous line (a kill during a
    write) is terminated first so both stay separable, the file is fsynced, and so is its
    directory when this call created the file.

    Raises:
        StorageError: see :func:`atomic_write_text` (a partial line may remain: readers skip
            it, and the next append terminates it).
    """
    try:
        _append(path, line)
    except OSError as exc:
        err = environment_error(exc, path)
        if err is None or err is exc:
            raise
        raise err from exc


def _append(path: Path, line: str) -> None:
    created = not path.exists()
    with path.open("a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write(line.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    if created:
        fsync_dir(path.parent)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync; a torn previous line is terminated first so the new
    record stays parseable."""
    _append_line(path, json.dumps(record, default=str) + "\n")


#: a temp file of :func:`atomic_write_text` (``tempfile.mkstemp``: ``.<name>.<8 random>.tmp``)
_ATOMIC_TMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
#: a temp directory named after its writer's pid (``<name>.tmp<pid>``: :meth:`meta.lineage.Lineage.materialize`)
_PID_TMP = re.compile(r"\.tmp(\d+)$")
#: directories of a run whose content is not written through this module: not descended into
#: (``harnesses`` and ``export`` hold harness files, which are data; their own temp
#: directories sit at their top level)
_SWEEP_SKIP = frozenset({".git", "lineage", "llm_cache", "scratch", ".hydra"})
_SWEEP_TOP_ONLY = frozenset({"harnesses", "export"})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists
        return True
    return True


def sweep_stale_temps(run_dir: Path) -> list[Path]:
    """Remove the temp files and directories a killed run left in ``run_dir``: the
    ``.<name>.<random>.tmp`` files of :func:`atomic_write_text` (the records themselves are
    intact: a temp file is renamed over its target or never), ``<name>.tmp<pid>`` directories
    whose process is gone (a half-materialized harness) and ``export/<commit>.tmp`` (a
    half-made export). Called when a run starts in ``run_dir``; one run per directory at a
    time is assumed (a temp file of a live writer in the same directory would go too).

    Returns:
        What was removed (logged at INFO when anything was).
    """
    removed: list[Path] = []
    if not run_dir.is_dir():
        return removed
    for top, dirs, files in os.walk(run_dir):
        here = Path(top)
        rel = here.relative_to(run_dir).parts
        if rel and rel[0] in _SWEEP_TOP_ONLY:
            for d in list(dirs):
                m = _PID_TMP.search(d)
                if (m and not _pid_alive(int(m.group(1)))) or (rel[0] == "export" and d.endswith(".tmp")):
                    shutil.rmtree(here / d, ignore_errors=True)
                    removed.append(here / d)
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if d not in _SWEEP_SKIP]
        for name in files:
            if _ATOMIC_TMP.match(name):
                with contextlib.suppress(FileNotFoundError):
                    (here / name).unlink()
                    removed.append(here / name)
    if removed:
        log.info("removed %d temp file(s) left by an interrupted run in %s", len(removed), run_dir)
    return removed
