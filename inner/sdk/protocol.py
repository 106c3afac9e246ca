"""The sandbox protocol: its typed messages and how the parent reads what a harness sends it.

Each protocol message is one line of JSON (an object)::

    parent -> child  run      {"t": "run", "doc", "domain", "max_rounds", "budget", "doc_chars"}
    child  -> parent req      {"t": "req", "id", "op": ...}: one of :data:`Request`, on ``op``:
                              llm | evaluate | note | budget | structured_ok | schema_failure
    parent -> child  resp     {"t": "resp", "id", "ok": true, "value"} | {..., "ok": false, "kind", "error"}
    child  -> parent done     {"t": "done", "ok", "error"?}

A request is validated once, by :func:`parse_request` (one ``TypeAdapter`` over the
discriminated union), and served by a :class:`Host`: the parent's document session
(:class:`inner.engine.loop.DocumentSession`) and the sandbox's dry run
(:class:`inner.sdk.child._DryConnection`) implement the same interface, dispatched by
:func:`serve`. What is the host's to decide (which roles, the budgets) stays with the host.

A line from the sandbox is untrusted input, read once by :func:`decode_line` before anything
else looks at it:

- a line that is not JSON, not an object, nested deeper than :data:`MAX_DEPTH`, or so deep that
  the JSON decoder gives up, is a :class:`ProtocolError` (the parent ends the document as
  ``crashed`` with that reason, at once); a line over the reader's byte limit is refused the
  same way by :mod:`inner.sandbox.process`;
- every string in it (keys included) is valid UTF-8 afterwards: a lone surrogate (JSON allows
  ``"\\udcff"``; UTF-8 does not) becomes U+FFFD (:func:`clean_text`), so no string a harness
  hands the parent can break a record's serialization.

The caps on what a harness may put into the records (notes, labels) are here too:
:data:`NOTE_CHARS`, :data:`LABEL_CHARS` and :func:`clean_label` (the last two, with
:func:`clean_text`, live in :mod:`inner.sdk.contract`, whose ``Challenge.question_type`` is a label).

This module is part of the harness SDK (it is copied into the sandbox): it imports nothing of
the project outside ``inner/sdk/``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError, field_validator

from inner.sdk.contract import LABEL_CHARS, Challenge, QVVerdict, clean_label, clean_text

__all__ = [
    "LABEL_CHARS", "MAX_DEPTH", "NOTE_CHARS", "BudgetRequest", "EvaluateRequest", "Host", "LLMRequest",
    "NoteRequest", "ProtocolError", "Request", "SchemaFailureRequest", "StructuredOkRequest", "clean_label",
    "clean_text", "decode_line", "parse_request", "sanitize", "serve",
]  # fmt: skip

#: deepest nesting of lists and objects a protocol line may have (a real request is under 20:
#: a JSON schema or a tool definition inside an ``llm`` request)
MAX_DEPTH = 64
#: longest note, refusal or reported error kept in a trajectory event, characters
NOTE_CHARS = 4000


class ProtocolError(ValueError):
    """A protocol line that cannot be read: not JSON, not an object, or pathological (too deep).
    The message reads as what was sent (``"malformed protocol line ..."``)."""


def sanitize(value: Any, *, max_depth: int = MAX_DEPTH) -> Any:
    """A copy of the JSON value ``value`` with every string (keys included) passed through
    :func:`clean_text`; iterative, so no depth can exhaust the stack.

    Raises:
        ProtocolError: lists and objects nested deeper than ``max_depth``.
    """

    def leaf(v: Any) -> Any:
        return clean_text(v) if isinstance(v, str) else v

    if not isinstance(value, dict | list):
        return leaf(value)
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any, int]] = [(value, root, 1)]
    while stack:
        src, dst, depth = stack.pop()
        if depth > max_depth:
            raise ProtocolError(f"protocol line nested deeper than {max_depth} levels")
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for k, v in items:
            if isinstance(v, dict | list):
                child: Any = {} if isinstance(v, dict) else []
                stack.append((v, child, depth + 1))
            else:
                child = leaf(v)
            if isinstance(dst, dict):
                dst[clean_text(k)] = child
            else:
                dst.append(child)
    return root


def decode_line(raw: bytes | str) -> dict[str, Any]:
    """One protocol line as a JSON object whose strings are all valid UTF-8 (:func:`sanitize`).

    Raises:
        ProtocolError: not JSON, not an object, or nested too deep (the message says which).
    """
    try:
        msg = json.loads(raw)
    except RecursionError as exc:
        raise ProtocolError(f"protocol line nested too deep to decode (over {MAX_DEPTH} levels)") from exc
    except ValueError as exc:
        raise ProtocolError(f"malformed protocol line ({exc}): {raw[:200]!r}") from exc
    if not isinstance(msg, dict):
        raise ProtocolError(f"protocol line that is not an object: {raw[:200]!r}")
    return sanitize(msg)


# -- the typed requests (child -> parent) -------------------------------------------------------
class _Request(BaseModel):
    """What every request carries: ``t = "req"`` and the id its response answers. Unknown
    fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    t: Literal["req"] = "req"
    id: StrictInt = 0


class LLMRequest(_Request):
    """``agent.llm``: one completion of a harness role (which roles: the host's decision).
    ``group`` numbers the ``agent.llm_json`` request the call belongs to."""

    op: Literal["llm"]
    role: str
    messages: list[dict[str, Any]]
    json_schema: dict[str, Any] | None = None
    schema_name: str = "output"
    tools: list[dict[str, Any]] | None = None
    sample: int | None = Field(default=None, ge=0)
    group: StrictInt | None = None

    @field_validator("schema_name", mode="before")
    @classmethod
    def _label(cls, v: object) -> str:
        return clean_label(v or "output", "output")


class EvaluateRequest(_Request):
    """``agent.evaluate``: one challenge through the frozen evaluator, ``weak`` side only or
    ``both``; the harness's own verdict (``self_check``, reason capped) is recorded, never gating."""

    op: Literal["evaluate"]
    challenge: Challenge
    side: str = "both"
    self_check: QVVerdict | None = None

    @field_validator("side")
    @classmethod
    def _side(cls, v: str) -> str:
        if v not in ("weak", "both"):
            raise ValueError(f"side must be 'weak' or 'both', not {v[:LABEL_CHARS]!r}")
        return v

    @field_validator("self_check")
    @classmethod
    def _bounded(cls, v: QVVerdict | None) -> QVVerdict | None:
        return v if v is None else v.model_copy(update={"reason": v.reason[:NOTE_CHARS]})


class NoteRequest(_Request):
    """``agent.note``: a line for the trajectory, cut to :data:`NOTE_CHARS`."""

    op: Literal["note"]
    text: str = ""

    @field_validator("text", mode="before")
    @classmethod
    def _cap(cls, v: object) -> str:
        return str(v)[:NOTE_CHARS]


class BudgetRequest(_Request):
    """``agent.budget``: what is left."""

    op: Literal["budget"]


class StructuredOkRequest(_Request):
    """An ``agent.llm_json`` request ended usable: its replies may be cached."""

    op: Literal["structured_ok"]
    group: StrictInt


class SchemaFailureRequest(_Request):
    """An ``agent.llm_json`` request stayed unusable after its repair (a typed failure of ``role``)."""

    op: Literal["schema_failure"]
    group: StrictInt
    role: str
    schema_name: str = "output"
    error: str = "unusable output"

    @field_validator("schema_name", mode="before")
    @classmethod
    def _label(cls, v: object) -> str:
        return clean_label(v or "output", "output")

    @field_validator("error", mode="before")
    @classmethod
    def _cap(cls, v: object) -> str:
        return str(v or "unusable output")[:NOTE_CHARS]


#: a request of the sandbox, told apart by ``op``
Request = Annotated[
    LLMRequest | EvaluateRequest | NoteRequest | BudgetRequest | StructuredOkRequest | SchemaFailureRequest,
    Field(discriminator="op"),
]
_REQUEST: TypeAdapter[Request] = TypeAdapter(Request)
#: the operations a request may name
OPS = ("llm", "evaluate", "note", "budget", "structured_ok", "schema_failure")


def parse_request(msg: dict[str, Any]) -> Request:
    """The typed request of a decoded ``{"t": "req", ...}`` line (:func:`decode_line`).

    Raises:
        ProtocolError: an unknown ``op`` (``unknown request 'x'``), or fields that do not fit it
            (the message names each field and why).
    """
    op = msg.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown request {str(op)[:LABEL_CHARS]!r}")
    try:
        return _REQUEST.validate_python(msg)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'][1:])) or op}: {e['msg']}" for e in exc.errors(include_url=False)[:5]
        )
        raise ProtocolError(f"bad {op} request: {problems}"[:NOTE_CHARS]) from exc


class Host(Protocol):
    """What serves the sandbox's requests: one coroutine per operation, each given the
    validated request; the return value is the response's ``value``. Implemented by the
    parent's document session and by the sandbox's dry run."""

    async def on_llm(self, req: LLMRequest) -> dict[str, Any]:
        """One completion of a harness role: ``{text, finish_reason, prompt_tokens,
        completion_tokens, cached, tool_calls}``. Raises ``HarnessError`` for a non-harness role."""
        ...

    async def on_evaluate(self, req: EvaluateRequest) -> dict[str, Any]:
        """The frozen evaluator's report on the challenge (a ``RoundRecord`` as JSON)."""
        ...

    async def on_note(self, req: NoteRequest) -> None:
        """Keep the note (already cut to :data:`NOTE_CHARS`) in the trajectory's events."""
        ...

    async def on_budget(self, req: BudgetRequest) -> dict[str, float]:
        """What is left: ``rounds``, ``calls``, ``tokens``, ``seconds``."""
        ...

    async def on_structured_ok(self, req: StructuredOkRequest) -> None:
        """An ``llm_json`` request ended usable: its replies may be cached."""
        ...

    async def on_schema_failure(self, req: SchemaFailureRequest) -> None:
        """An ``llm_json`` request ended unusable: count one schema failure, cache nothing."""
        ...


async def serve(host: Host, req: Request) -> Any:
    """``req`` served by the ``host`` method of its operation."""
    return await getattr(host, f"on_{req.op}")(req)
