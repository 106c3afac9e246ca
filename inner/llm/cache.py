"""A content-addressed on-disk cache of LLM responses.

The key is the sha256 of the canonical JSON of everything that determines a completion:
model, messages, sampling parameters, response format and the sample index (so the n
attempts of one solver prompt are n distinct entries). A rerun of a finished run therefore
makes zero LLM calls, and a killed run resumes by replaying what it had already paid for.

Storage is append-only: each process appends ``{"key": ..., "entry": ...}`` lines to its own
segment ``<root>/segment-<pid>-<start time>.jsonl`` and flushes every line; opening the cache
reads all segments into an index of ``key -> (segment, offset, length)``, and a hit is one
``pread``. A torn last line (a kill during a write) is skipped. One file per entry was
measured at ~0.3 ms of CPU per call (an ``open`` per lookup and per write) and capped the
inner loop below its throughput target (``experiments/bench/README.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def cache_key(payload: dict[str, Any]) -> str:
    """sha256 hex digest of the canonical (sorted-keys, compact) JSON of ``payload``."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` durably: a temp file in the same directory, fsynced,
    renamed over ``path`` with ``os.replace``, then the directory fsynced.

    A reader sees the old content or the new one, never a mix; after a crash or power loss
    the file holds one of the two (the rename itself is made durable by the directory fsync).

    Raises:
        OSError: the directory cannot be created or written.
    """
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


class ResponseCache:
    """Append-only response cache in ``root`` (see the module docstring).

    Args:
        root: cache directory; created on first write. Several processes may share it: each
            writes its own segment, and entries written by others after this one opened the
            cache are not seen until the next open.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._index: dict[str, tuple[int, int, int]] = {}
        self._fds: list[int] = []
        self._out: Any = None
        self._out_seg = -1
        if self.root.is_dir():
            for seg in sorted(self.root.glob("segment-*.jsonl")):
                self._load(seg)

    def _load(self, seg: Path) -> None:
        fd = os.open(seg, os.O_RDONLY)
        self._fds.append(fd)
        n = len(self._fds) - 1
        offset = 0
        with open(seg, "rb") as fh:
            for line in fh:
                if line.endswith(b"\n"):
                    try:
                        key = json.loads(line)["key"]
                    except (ValueError, KeyError, TypeError):
                        key = None
                    if key:
                        self._index[key] = (n, offset, len(line))
                offset += len(line)

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry, or ``None`` if absent."""
        where = self._index.get(key)
        if where is None:
            return None
        n, offset, length = where
        try:
            return json.loads(os.pread(self._fds[n], length, offset))["entry"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Append ``entry`` (JSON-serialisable) under ``key``; flushed before returning."""
        if self._out is None:
            self.root.mkdir(parents=True, exist_ok=True)
            seg = self.root / f"segment-{os.getpid()}-{time.time_ns()}.jsonl"
            self._out = open(seg, "ab")  # noqa: SIM115 - kept open for the cache's lifetime
            self._fds.append(os.open(seg, os.O_RDONLY))
            self._out_seg = len(self._fds) - 1
        line = (json.dumps({"key": key, "entry": entry}, ensure_ascii=False) + "\n").encode("utf-8")
        offset = self._out.tell()
        self._out.write(line)
        self._out.flush()
        self._index[key] = (self._out_seg, offset, len(line))

    def close(self) -> None:
        """Close the segment files (the cache is unusable afterwards)."""
        if self._out is not None:
            self._out.close()
            self._out = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: os may be gone
            self.close()
