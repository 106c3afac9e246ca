"""The harness contract's shared vocabulary: what a harness and the evaluator exchange.

This module is the harness SDK. It depends only on the standard library and pydantic, and it
is the part of the project (with :mod:`inner.sdk.errors`, :mod:`inner.sdk.templates` and
:mod:`inner.sdk.child`) that is visible inside the sealed sandbox, so a harness can
``from inner.sdk.contract import Challenge, RubricItem, render, ...`` there. Everything that
*decides* acceptance (quality check, solvers, judge, rubric policy, scoring, gate) lives
elsewhere in ``inner/`` and never runs in the sandbox.

- records of a round (:class:`Challenge`, :class:`RubricItem`, :class:`QVVerdict`,
  :class:`SolverAttempt`, :class:`RoundRecord`, :class:`FailureMode`): the evaluator's report
  that ``agent.evaluate`` returns and that ``agent.rounds`` keeps;
- LLM replies (:class:`Completion`, :class:`JSONResult`) and the JSON parsing/repair helpers
  shared by the parent's client and the sandbox's proxy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator

from inner.sdk.templates import render

__all__ = [
    "LABEL_CHARS", "Challenge", "Completion", "CriterionGrade", "FailureMode", "JSONResult", "JudgeOutput",
    "QVVerdict", "RoleUsageRecord", "RoundRecord", "RubricItem", "SolverAttempt", "challenge_key", "clean_label",
    "clean_text", "json_with_repair", "model_schema", "parse_json_output", "render",
]  # fmt: skip

T = TypeVar("T", bound=BaseModel)
Message = dict[str, str]

#: longest label (a challenge's ``question_type``, a schema name, an event's role), characters;
#: a longer one is cut (:func:`clean_label`)
LABEL_CHARS = 64

_SURROGATE = re.compile("[\ud800-\udfff]")
_SPACE = re.compile(r"[\s\x00-\x1f\x7f]+")


def clean_text(text: str) -> str:
    """``text`` as valid UTF-8: every lone surrogate (JSON allows ``"\\udcff"``, UTF-8 does not)
    replaced by U+FFFD; other characters kept."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def clean_label(text: object, default: str = "other") -> str:
    """A bounded label: valid UTF-8, runs of whitespace and control characters made one space,
    trimmed, cut to :data:`LABEL_CHARS` characters; ``default`` when nothing is left. A label
    describes a record and never decides acceptance, so an over-long one is cut, not refused."""
    label = _SPACE.sub(" ", clean_text(str(text))).strip()[:LABEL_CHARS].strip()
    return label or default


class FailureMode(StrEnum):
    """Outcome of one round: the gate's decision, or why the gate was never reached."""

    ACCEPTED = "ACCEPTED"
    TOO_EASY = "TOO_EASY"  # weak solver too good, or strong_avg >= strong_avg_max
    WEAK_ZERO = "WEAK_ZERO"  # some weak attempt scored 0 (question likely broken)
    FAILED_STRONG = "FAILED_STRONG"  # strong too weak, a strong 0, or gap too small
    FAILED_QV = "FAILED_QV"  # the frozen quality check rejected the challenge
    INVALID_CHALLENGE = "INVALID_CHALLENGE"  # over the challenge limits, breaks the rubric policy, or a 4xx
    WEAK_PASSED = "WEAK_PASSED"  # evaluated with side="weak" only: the weak side passes the gate
    JUDGE_ERROR = "JUDGE_ERROR"  # an attempt stayed ungraded after a retry (infrastructure; redone)


class RubricItem(BaseModel):
    """One rubric criterion. ``weight`` is an integer in [-10, 10] without 0; a negative weight
    marks a pitfall (arXiv 2606.25996). Weights are stored as written: whether they are allowed
    is the rubric policy's decision (:func:`inner.evaluator.scoring.check_rubric_policy`), never clamped."""

    id: str
    criterion: str
    weight: int = Field(default=1, description="integer in [-10, 10] without 0; negative = pitfall")


class Challenge(BaseModel):
    """The challenger's output: one training example before evaluation.

    ``context`` describes the problem setting (never the paper's solution); ``question`` is
    atomic and specific to the document; ``reference_answer`` is never shown to the solvers or
    the judge. Whether the answer is checked by exact match is the task's decision
    (``task.verifiable``), never the challenger's: extra fields such as ``answer_is_exact`` are
    ignored. ``question_type`` is a label of at most :data:`LABEL_CHARS` characters (longer is
    cut); the other fields' limits are the frozen evaluator's (:mod:`inner.evaluator.scoring`).
    """

    context: str = Field(min_length=1)
    question: str = Field(min_length=1)
    reference_answer: str = Field(min_length=1)
    rubric: list[RubricItem] = Field(min_length=1)
    question_type: str = "other"

    @field_validator("question_type", mode="before")
    @classmethod
    def _label(cls, v: object) -> str:
        """A bounded label (:func:`clean_label`: at most :data:`LABEL_CHARS` characters, cut),
        never free text: it is copied into ``dataset.jsonl``."""
        return clean_label(v)


class QVVerdict(BaseModel):
    """A quality verdict; ``reason`` explains a rejection. The gate reads only the frozen
    quality check's verdict (:class:`RoundRecord` ``qv``); a harness's own self-check is
    recorded as ``self_check`` and never lets a round pass."""

    passed: bool
    reason: str = ""


class CriterionGrade(BaseModel):
    """The judge's verdict on one criterion: 1 = satisfied completely and unambiguously (for a
    pitfall: the answer commits it), 0 otherwise; 0.5 only with partial credit."""

    id: str
    score: float

    @field_validator("score", mode="before")
    @classmethod
    def _clip(cls, v: object) -> float:
        return min(1.0, max(0.0, float(v)))  # type: ignore[arg-type]


class JudgeOutput(BaseModel):
    """The judge's reply: one :class:`CriterionGrade` per rubric criterion (the evaluator
    narrows the schema to the challenge's ids, see :func:`inner.evaluator.roles.judge_output_model`)."""

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
    """One round: one distinct challenge through the frozen evaluator. This is the report
    ``agent.evaluate`` returns to a harness, and the line of ``trajectories/<doc>.json``.

    Attributes:
        round: 1-based round number within the document.
        key: :func:`challenge_key` of the challenge (the same content is never a second round).
        side: ``weak`` (weak solver only) or ``both``.
        self_check: the harness's own verdict, if it passed one (recorded, never gating).
        qv: the frozen quality check's verdict (the one the gate reads).
        verifiable: answers were checked by equivalence with the reference (task rule).
        weak / strong: the solver attempts with their per-criterion grades.
        failure_mode / reasons: the gate's decision and why.
        usage: calls and tokens of the evaluator's roles for this round.
        wall_s: seconds the evaluation took.
    """

    round: int
    key: str = ""
    side: str = "both"
    challenge: Challenge | None = None
    self_check: QVVerdict | None = None
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
    usage: dict[str, RoleUsageRecord] = {}
    wall_s: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.failure_mode is FailureMode.ACCEPTED


def challenge_key(challenge: Challenge) -> str:
    """16 hex of a sha256 over the challenge's content (context, question, reference answer,
    rubric): two evaluations of the same content are one round."""
    blob = json.dumps(
        challenge.model_dump(include={"context", "question", "reference_answer", "rubric"}), sort_keys=True
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@dataclass
class Completion:
    """One chat completion.

    Attributes:
        text: the assistant message content.
        prompt_tokens / completion_tokens: usage reported by the server (0 if it reports none).
        cached: served from the response cache (no request was made).
        latency_s: wall time of the request in seconds (0 for cache hits).
        finish_reason: ``stop``, ``length``, ``tool_calls``, ... as reported by the server.
        tool_calls: OpenAI-style tool calls of the reply (``[{"id", "type": "function",
            "function": {"name", "arguments"}}]``), when tools were offered.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    latency_s: float = 0.0
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


@dataclass
class JSONResult(Generic[T]):
    """A structured output: the validated ``value``, or a typed failure with the raw text.

    Attributes:
        value: the parsed pydantic model, or ``None`` when both attempts failed.
        raw: raw text of every attempt (one, or two when a repair was asked for).
        error: the last validation error, ``None`` on success.
    """

    value: T | None
    raw: list[str]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_json_output(text: str, model: type[T]) -> T:
    """Parse an LLM reply into ``model``.

    Tolerates code fences and prose around the JSON object (the outermost ``{...}`` is used).

    Raises:
        ValueError: no JSON object, invalid JSON, or a schema violation (message says which).
    """
    candidate = text.strip()
    fenced = _FENCE.search(candidate)
    if fenced:
        candidate = fenced.group(1).strip()
    start, end = candidate.find("{"), candidate.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object found in the reply")
    try:
        data = json.loads(candidate[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"JSON does not match the schema: {problems}") from exc


CompleteFn = Callable[[list[Message], dict[str, Any]], Awaitable[Completion]]


async def json_with_repair(send: CompleteFn, messages: list[Message], model: type[T]) -> JSONResult[T]:
    """Ask for ``model`` as JSON through ``send(messages, schema)``; on a parse or schema error
    ask once more with the error appended; return the value or a typed failure with the raw
    texts. Shared by :meth:`LLMClient.complete_json` and the harness sandbox's proxy."""
    schema = model_schema(model)
    raws: list[str] = []
    error = ""
    convo = list(messages)
    for attempt in range(2):
        comp = await send(convo, schema)
        raws.append(comp.text)
        try:
            return JSONResult(parse_json_output(comp.text, model), raws)
        except ValueError as exc:
            error = str(exc)
            if comp.finish_reason == "length":
                error += " (the reply was cut off at max_tokens: be more concise)"
        if attempt == 0:
            convo = convo + [
                {"role": "assistant", "content": comp.text},
                {
                    "role": "user",
                    "content": f"Your reply could not be used: {error}\n"
                    "Reply again with only one JSON object that matches the required schema.",
                },
            ]
    return JSONResult(None, raws, error)


@functools.lru_cache(maxsize=128)
def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The flat JSON schema of a pydantic model, computed once per model class (it is on the
    hot path: one per structured call)."""
    return inline_schema(model.model_json_schema())


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Resolve local ``$ref``/``$defs`` of a pydantic JSON schema and drop ``title`` keys,
    so grammar converters that do not follow references (llama.cpp) get a flat schema."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].split("/")[-1]])
            return {k: walk(v) for k, v in node.items() if k not in ("$defs", "title")}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)
