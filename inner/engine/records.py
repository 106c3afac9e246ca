"""Records: what the inner loop writes to the run directory (ARCHITECTURE.md, "Records").

- ``dataset.jsonl``            one :class:`Example` per accepted challenge (append-only)
- ``trajectories/<doc>.json``  one :class:`Trajectory` per document, rewritten atomically
                               after every round
- ``stats.json``               :func:`inner.engine.stats.compute_stats`
- ``calls.jsonl``              one line per LLM call (role, cache key, tokens, latency)

:class:`RunWriter` owns those files. A killed run loses nothing it had finished: a torn last
line of ``dataset.jsonl`` is dropped on the next start, finished documents are skipped, and
an example already in the dataset is never appended twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from inner.io import _append_line, _salvage, atomic_write_text
from inner.sdk.contract import (  # noqa: F401  (re-exported: records and the harness SDK share them)
    Challenge,
    CriterionGrade,
    FailureMode,
    JudgeOutput,
    QVVerdict,
    RoleUsageRecord,
    RoundRecord,
    RubricItem,
    SolverAttempt,
)

_R = TypeVar("_R")


class HarnessEvent(BaseModel):
    """One thing the harness did, in order: an LLM call (``llm``), an evaluation
    (``evaluate``, pointing at its round), a note (``note``), a refused request
    (``refused``: an unknown role or an exhausted budget), or structured output still unusable
    after its repair (``schema_failure``, reported by ``agent.llm_json``).

    Attributes:
        kind: ``llm`` | ``evaluate`` | ``note`` | ``refused`` | ``schema_failure``.
        role: the LLM role (``llm``), or the side evaluated (``evaluate``).
        text: the reply (``llm``, cut to 4,000 characters), the note, or why it was refused.
        round: the round an ``evaluate`` created or returned.
        prompt_tokens / completion_tokens: usage of an ``llm`` call; ``cached``: replayed.
        t: seconds since the document started.
    """

    kind: str
    role: str | None = None
    text: str = ""
    round: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    t: float = 0.0


class Trajectory(BaseModel):
    """Everything about one document.

    Attributes:
        status: ``running`` | ``accepted`` | ``exhausted`` (no accepted challenge: the harness
            returned or a budget ran out) | ``crashed`` (the harness itself failed: raised,
            exited, hung, broke its limits) | ``error`` (infrastructure: an LLM request failed
            after retries or a judge grade stayed unusable; redone on the next run).
        end_reason: why the document ended, in words.
        rounds: one :class:`RoundRecord` per distinct challenge evaluated.
        events: every call the harness made, in order.
        harness_error: the harness's traceback or exit status when ``crashed``.
        harness_usage: calls and tokens of the harness roles.
        error: the infrastructure failure when ``error``.
        judge_errors: rounds of this document redone after JUDGE_ERROR (shifts the judge's
            sample indices so a redo draws new grades).
        wall_s: seconds spent on the document, over all runs.
    """

    doc_id: str
    doc_path: str
    title: str
    method: str
    harness_id: str
    status: str = "running"
    end_reason: str = ""
    rounds: list[RoundRecord] = []
    events: list[HarnessEvent] = []
    harness_error: str | None = None
    harness_usage: dict[str, RoleUsageRecord] = {}
    error: str | None = None
    judge_errors: int = 0
    wall_s: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status in ("accepted", "exhausted", "crashed")


class Example(BaseModel):
    """One accepted training example (a line of ``dataset.jsonl``)."""

    example_id: str
    doc_id: str
    task: str
    method: str
    harness_id: str
    round: int
    context: str
    question: str
    reference_answer: str
    rubric: list[RubricItem]
    question_type: str
    verifiable: bool
    weak_scores: list[float]
    strong_scores: list[float]
    weak_avg: float
    strong_avg: float
    gap: float


def example_id(doc_id: str, question: str) -> str:
    """``<doc_id>:<12 hex of sha256(question)>``."""
    return f"{doc_id}:{hashlib.sha256(question.encode('utf-8')).hexdigest()[:12]}"


class RunWriter:
    """Owns the records of one run directory.

    Args:
        run_dir: the Hydra run directory (created if missing).
        readonly: only read (no directory is created and a torn dataset line is not repaired);
            for reports.
    """

    def __init__(self, run_dir: Path, *, readonly: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.traj_dir = self.run_dir / "trajectories"
        self.dataset_path = self.run_dir / "dataset.jsonl"
        if not readonly:
            self.traj_dir.mkdir(parents=True, exist_ok=True)
        self._example_ids = {e.example_id for e in self.load_examples(repair=not readonly)}

    def load_examples(self, *, repair: bool = False) -> list[Example]:
        """Examples in ``dataset.jsonl``; a torn line is skipped, and a complete example glued
        to a torn one is recovered. With ``repair``, the file is rewritten (atomically) with
        exactly the recovered examples, one per line."""
        if not self.dataset_path.exists():
            return []
        lines = self.dataset_path.read_text(encoding="utf-8").splitlines(keepends=True)
        examples, good = [], []
        for line in lines:
            got = _salvage(line.rstrip("\n"), Example.model_validate_json)
            if got is not None:
                examples.append(got[0])
                good.append(got[1] + "\n")
        if repair and good != lines:
            atomic_write_text(self.dataset_path, "".join(good))
        return examples

    def trajectory_path(self, doc_id: str) -> Path:
        """``<run>/trajectories/<doc_id>.json``."""
        return self.traj_dir / f"{doc_id}.json"

    def load_trajectory(self, doc_id: str) -> Trajectory | None:
        """The stored trajectory, or ``None`` if absent or unreadable."""
        try:
            return Trajectory.model_validate_json(self.trajectory_path(doc_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def load_trajectories(self) -> list[Trajectory]:
        """Every readable trajectory in the run directory, sorted by file name."""
        return list(self.iter_trajectories())

    def iter_trajectories(self) -> Iterator[Trajectory]:
        """Every readable trajectory in the run directory, sorted by file name, loaded one at a
        time (memory flat in the number of documents)."""
        for p in sorted(self.traj_dir.glob("*.json")):
            t = self.load_trajectory(p.stem)
            if t is not None:
                yield t

    def write_trajectory(self, traj: Trajectory) -> None:
        """Atomically (re)write ``trajectories/<doc_id>.json``."""
        atomic_write_text(self.trajectory_path(traj.doc_id), traj.model_dump_json(indent=1))

    async def write_trajectory_off_loop(self, traj: Trajectory) -> None:
        """:meth:`write_trajectory` with the file work (write, fsync, rename, directory fsync:
        about 1.6 ms per write, mostly waiting on the disk) in a worker thread, so that the
        event loop serves other documents meanwhile (``experiments/bench/README.md``). ``traj``
        is serialized before this awaits, so later changes to it are not written."""
        path, text = self.trajectory_path(traj.doc_id), traj.model_dump_json(indent=1)
        await asyncio.to_thread(atomic_write_text, path, text)

    def append_example(self, ex: Example) -> bool:
        """Append ``ex`` to ``dataset.jsonl`` and fsync; returns ``False`` (and writes nothing)
        if an example with the same id is already there."""
        if ex.example_id in self._example_ids:
            return False
        _append_line(self.dataset_path, ex.model_dump_json() + "\n")
        self._example_ids.add(ex.example_id)
        return True

    def write_json(self, name: str, data: object) -> Path:
        """Atomically write ``<run_dir>/<name>`` as indented JSON."""
        path = self.run_dir / name
        atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
        return path
