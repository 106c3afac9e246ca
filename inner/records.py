"""Records: what the inner loop writes to the run directory (DESIGN.md, "Records").

- ``dataset.jsonl``            one :class:`Example` per accepted challenge (append-only)
- ``trajectories/<doc>.json``  one :class:`Trajectory` per document, rewritten atomically
                               after every round
- ``stats.json``               :func:`inner.stats.compute_stats`
- ``calls.jsonl``              one line per LLM call (role, cache key, tokens, latency)

:class:`RunWriter` owns those files. A killed run loses nothing it had finished: a torn last
line of ``dataset.jsonl`` is dropped on the next start, finished documents are skipped, and
an example already in the dataset is never appended twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from inner.llm.cache import atomic_write_text


class FailureMode(StrEnum):
    """Outcome of one round (the gate's decision or why the gate was never reached)."""

    ACCEPTED = "ACCEPTED"
    TOO_EASY = "TOO_EASY"  # weak solver too good, or strong_avg >= strong_avg_max
    WEAK_ZERO = "WEAK_ZERO"  # some weak attempt scored 0 (question likely broken)
    FAILED_STRONG = "FAILED_STRONG"  # strong too weak, a strong 0, or gap too small
    FAILED_QV = "FAILED_QV"  # quality verifier rejected the challenge
    INVALID_CHALLENGE = "INVALID_CHALLENGE"  # challenger output unparseable after one repair
    HARNESS_ERROR = "HARNESS_ERROR"  # harness code raised
    JUDGE_ERROR = "JUDGE_ERROR"  # no usable judge grade for one side


class RubricItem(BaseModel):
    """One rubric criterion. ``weight`` is an integer in [-10, 10] without 0; a negative weight
    marks a pitfall (arXiv 2606.25996). Weights are stored as written: whether they are allowed
    is the rubric policy's decision (:func:`inner.scoring.check_rubric_policy`), never clamped."""

    id: str
    criterion: str
    weight: int = Field(default=1, description="integer in [-10, 10] without 0; negative = pitfall")


class Challenge(BaseModel):
    """The challenger's output: one training example before evaluation.

    ``context`` describes the problem setting (never the paper's solution); ``question`` is
    atomic and specific to the document; ``answer_is_exact`` marks a short exact answer that
    verifiable tasks check by majority vote.
    """

    context: str = Field(min_length=1)
    question: str = Field(min_length=1)
    reference_answer: str = Field(min_length=1)
    rubric: list[RubricItem] = Field(min_length=1)
    question_type: str = "other"
    answer_is_exact: bool = False


class QVVerdict(BaseModel):
    """Quality verifier verdict; ``reason`` explains a rejection (and is fed back)."""

    passed: bool
    reason: str = ""


class CriterionGrade(BaseModel):
    """The judge's grade of one criterion: ``score`` in [0, 1] (1 met, 0.5 partly, 0 not)."""

    id: str
    score: float

    @field_validator("score", mode="before")
    @classmethod
    def _clip(cls, v: object) -> float:
        return min(1.0, max(0.0, float(v)))  # type: ignore[arg-type]


class JudgeOutput(BaseModel):
    """The judge's reply: one :class:`CriterionGrade` per rubric criterion (the evaluator
    narrows the schema to the challenge's ids, see :func:`inner.evaluator.judge_output_model`)."""

    grades: list[CriterionGrade]


class SolverAttempt(BaseModel):
    """One solver answer and its grading.

    Attributes:
        score: weighted rubric score in [0, 1] (or 1/0 exact match in verifiable mode);
            ``None`` if the judge output was unusable.
        extracted: the normalized final answer (verifiable mode only).
    """

    index: int
    answer: str
    grades: list[CriterionGrade] = []
    score: float | None = None
    extracted: str | None = None
    judge_raw: list[str] = []
    error: str | None = None


class RoleUsageRecord(BaseModel):
    """Calls (sent / from the cache / failed) and prompt and completion tokens of one role."""

    calls: int = 0
    cached_calls: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RoundRecord(BaseModel):
    """Everything about one round; see DESIGN.md "Records"."""

    round: int
    challenge: Challenge | None = None
    challenger_raw: list[str] = []
    challenger_error: str | None = None
    qv: QVVerdict | None = None
    verifiable: bool = False
    weak: list[SolverAttempt] = []
    strong: list[SolverAttempt] = []
    weak_scores: list[float] = []
    strong_scores: list[float] = []
    weak_avg: float | None = None
    strong_avg: float | None = None
    gap: float | None = None
    failure_mode: FailureMode
    reasons: list[str] = []
    feedback: str | None = None
    harness_error: str | None = None
    usage: dict[str, RoleUsageRecord] = {}
    wall_s: float = 0.0


class Trajectory(BaseModel):
    """All rounds of one document. ``status``: running | accepted | exhausted | error."""

    doc_id: str
    doc_path: str
    title: str
    method: str
    harness_id: str
    status: str = "running"
    rounds: list[RoundRecord] = []
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("accepted", "exhausted")


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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines of a JSONL file; a torn last line (a kill during a write) is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync; a torn previous line is terminated first so the new
    record stays parseable."""
    data = json.dumps(record, default=str) + "\n"
    with path.open("a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write(data.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


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
        """Examples in ``dataset.jsonl``. With ``repair``, a torn last line (a kill during a
        write) is removed from the file."""
        if not self.dataset_path.exists():
            return []
        lines = self.dataset_path.read_text(encoding="utf-8").splitlines(keepends=True)
        examples, good = [], []
        for line in lines:
            try:
                examples.append(Example.model_validate_json(line))
                good.append(line if line.endswith("\n") else line + "\n")
            except ValueError:
                continue
        if repair and (len(good) != len(lines) or (lines and not lines[-1].endswith("\n"))):
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
        out = []
        for p in sorted(self.traj_dir.glob("*.json")):
            t = self.load_trajectory(p.stem)
            if t is not None:
                out.append(t)
        return out

    def write_trajectory(self, traj: Trajectory) -> None:
        """Atomically (re)write ``trajectories/<doc_id>.json``."""
        atomic_write_text(self.trajectory_path(traj.doc_id), traj.model_dump_json(indent=1))

    def append_example(self, ex: Example) -> bool:
        """Append ``ex`` to ``dataset.jsonl`` and fsync; returns ``False`` (and writes nothing)
        if an example with the same id is already there."""
        if ex.example_id in self._example_ids:
            return False
        with self.dataset_path.open("a", encoding="utf-8") as fh:
            fh.write(ex.model_dump_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._example_ids.add(ex.example_id)
        return True

    def write_json(self, name: str, data: object) -> Path:
        """Atomically write ``<run_dir>/<name>`` as indented JSON."""
        path = self.run_dir / name
        atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
        return path
