"""A content-addressed on-disk cache of LLM responses.

The key is the sha256 of the canonical JSON of everything that determines a completion:
model, messages, sampling parameters, response format and the sample index (so the n
attempts of one solver prompt are n distinct entries; :func:`sample_index` derives every index
from the evaluation's replicate, so replicates are distinct entries too). A rerun of a finished run therefore
makes zero LLM calls, and a killed run resumes by replaying what it had already paid for.

Storage is append-only: each process appends ``{"key": ..., "entry": ...}`` lines to its own
segment ``<root>/segment-<pid>-<start time>.jsonl`` and flushes every line; opening the cache
reads all segments into an index of ``key -> (segment, offset, length)``, and a hit is one
``pread``. A torn last line (a kill during a write) is skipped. One file per entry was
measured at ~0.3 ms of CPU per call (an ``open`` per lookup and per write) and capped the
inner loop below its throughput target (``experiments/bench/README.md``).

The index (:class:`_Index`) keeps about 20 bytes per entry (sorted arrays of the key's first
8 bytes and the location, plus a small dict of recent entries), not the ~330 bytes of a dict
of key strings and tuples: at 14 calls per document that was ~4.6 KB of memory per finished
document, the largest growth of a long run (``experiments/bench/README.md``, "Memory").
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: sample indices per replicate: replicate ``r`` uses ``r * REPLICATE_STRIDE + ...`` (so replicate
#: 0 keeps the indices, seeds and cache keys of runs made before replicates existed)
REPLICATE_STRIDE = 1_000_000
#: first sample index of each stream within a replicate: weak and strong solver attempts must not
#: share seeds (with one model in one mode, strong attempt i would replay weak attempt i on a
#: seed-deterministic server); the judge, the quality check and the harness are separate roles,
#: hence separate cache keys, and start at 0
STREAM_OFFSETS = {"weak": 0, "strong": 1000, "judge": 0, "quality": 0, "harness": 0}


def sample_index(*, replicate: int = 0, stream: str, index: int = 0) -> int:
    """The one place sample indices are computed: ``replicate * REPLICATE_STRIDE +
    STREAM_OFFSETS[stream] + index``. The client seeds the request with ``llm.seed +
    sample_index`` and puts the index in the cache key, so replicate ``r`` of an evaluation
    (harness, evaluator, documents) draws fresh samples for every role while a rerun of the same
    replicate replays them from the cache (zero calls). ``index`` is the stream's own counter
    (solver attempt, judge offset + attempt, a harness's repeated call) and stays below the stride.

    Raises:
        ValueError: a negative replicate or index, an index reaching the stride, or an unknown stream.
    """
    if stream not in STREAM_OFFSETS:
        raise ValueError(f"unknown sample stream {stream!r}; one of {sorted(STREAM_OFFSETS)}")
    if replicate < 0 or index < 0 or STREAM_OFFSETS[stream] + index >= REPLICATE_STRIDE:
        raise ValueError(f"sample index out of range: replicate={replicate} index={index}")
    return replicate * REPLICATE_STRIDE + STREAM_OFFSETS[stream] + index


def cache_key(payload: dict[str, Any]) -> str:
    """sha256 hex digest of the canonical (sorted-keys, compact) JSON of ``payload``."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class _Index:
    """``key -> (segment, offset, length)`` in about 20 bytes per entry.

    Entries live in three parallel arrays sorted by the key's first 8 bytes (as a signed
    64-bit int); new entries go to a dict of at most :attr:`MERGE` entries that is merged into
    the arrays when full. A prefix may (very rarely) be shared by two keys, so :meth:`find`
    yields every candidate location and the caller checks the full key stored with the entry.
    """

    MERGE = 4096

    def __init__(self) -> None:
        self.prefixes = array("q")
        self.where = array("q")  # segment << 40 | offset: segments < 2**23, offsets < 1 TiB
        self.lengths = array("l")
        self.recent: dict[str, tuple[int, int, int]] = {}

    @staticmethod
    def prefix(key: str) -> int:
        """The first 8 bytes of a hex key (of its sha256 for any other string), signed."""
        try:
            head = bytes.fromhex(key[:16])
        except ValueError:
            head = b""
        if len(head) < 8:
            head = hashlib.sha256(key.encode("utf-8")).digest()
        return int.from_bytes(head[:8], "big", signed=True)

    def __len__(self) -> int:
        return len(self.prefixes) + len(self.recent)

    def add(self, key: str, seg: int, offset: int, length: int) -> None:
        self.recent[key] = (seg, offset, length)
        if len(self.recent) >= self.MERGE:
            self._merge()

    def find(self, key: str) -> Iterator[tuple[int, int, int]]:
        """Candidate locations of ``key``, the most recent first."""
        hit = self.recent.get(key)
        if hit is not None:
            yield hit
        k = self.prefix(key)
        i = bisect.bisect_left(self.prefixes, k)
        while i < len(self.prefixes) and self.prefixes[i] == k:
            w = self.where[i]
            yield w >> 40, w & ((1 << 40) - 1), self.lengths[i]
            i += 1

    def _merge(self) -> None:
        """Merge the recent entries into the sorted arrays (C-level slice copies between the
        insertion points)."""
        new = sorted((self.prefix(k), (seg << 40) | off, n) for k, (seg, off, n) in self.recent.items())
        prefixes, where, lengths = array("q"), array("q"), array("l")
        lo = 0
        for k, w, n in new:
            i = bisect.bisect_left(self.prefixes, k, lo)
            prefixes.extend(self.prefixes[lo:i])
            where.extend(self.where[lo:i])
            lengths.extend(self.lengths[lo:i])
            prefixes.append(k)
            where.append(w)
            lengths.append(n)
            lo = i
        prefixes.extend(self.prefixes[lo:])
        where.extend(self.where[lo:])
        lengths.extend(self.lengths[lo:])
        self.prefixes, self.where, self.lengths = prefixes, where, lengths
        self.recent = {}


class ResponseCache:
    """Append-only response cache in ``root`` (see the module docstring).

    Args:
        root: cache directory; created on first write. Several processes may share it: each
            writes its own segment, and entries written by others after this one opened the
            cache are not seen until the next open.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._index = _Index()
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
                        self._index.add(key, n, offset, len(line))
                offset += len(line)

    def __len__(self) -> int:
        """Entries stored (a key written twice, e.g. by two processes, counts twice)."""
        return len(self._index)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry, or ``None`` if absent."""
        for n, offset, length in self._index.find(key):
            try:
                rec = json.loads(os.pread(self._fds[n], length, offset))
            except (OSError, ValueError):
                continue
            if isinstance(rec, dict) and rec.get("key") == key and "entry" in rec:
                return rec["entry"]
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
        self._index.add(key, self._out_seg, offset, len(line))

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
