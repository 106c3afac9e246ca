"""The child side of the sealed harness sandbox (runs *inside* bubblewrap, never in the parent).

Started by :mod:`inner.sandbox.process` as
``python -I /sdk/inner/sdk/child.py /harness [--check | --dry-run]``
with only the harness SDK (:mod:`inner.sdk.contract`, :mod:`inner.sdk.protocol`, :mod:`inner.sdk.templates`,
:mod:`inner.sdk.errors` and this file) and the harness directory visible. It imports the harness, builds the
:class:`Agent` and runs ``await harness.run(agent)`` on the one document the parent sends.

Every capability of the agent is a request to the parent over JSON lines (requests on a
private duplicate of stdout; the harness's own prints go to stderr); the messages are typed in
:mod:`inner.sdk.protocol`::

    parent -> child  {"t": "run", "doc": {...}, "domain", "max_rounds", "budget": {...}}
    child  -> parent {"t": "req", "id", "op": "llm" | "evaluate" | "note" | "budget" | "structured_ok"
                      | "schema_failure", ...}
    parent -> child  {"t": "resp", "id", "ok": true, "value": ...}
                     {"t": "resp", "id", "ok": false, "kind", "error"}
    child  -> parent {"t": "done", "ok": true} | {"t": "done", "ok": false, "error": "<traceback>"}

The parent enforces roles and budgets and writes every record; nothing the child says is
trusted beyond being a request.

``--dry-run`` runs the harness once with no LLM and no evaluator (:func:`dry_run`): after
``ready`` the parent sends one ``{"t": "dry_run", "roles", "max_rounds", "max_calls"}`` line;
``agent.llm`` answers with a canned minimal instance of the requested JSON schema (or a call of
each offered tool in turn), ``agent.evaluate`` with a canned TOO_EASY report, and the child ends
with ``{"t": "done", "ok": ..., "calls", "rounds"}``. It catches a harness that raises, renders
a prompt with a missing placeholder or never returns, before any evaluation is spent.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import re
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

if __name__ == "__main__":  # inside the sandbox: the SDK directory is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pydantic import BaseModel

from inner.sdk.contract import (
    Challenge,
    Completion,
    FailureMode,
    JSONResult,
    QVVerdict,
    RoundRecord,
    challenge_key,
    json_with_repair,
)
from inner.sdk.errors import BudgetExhausted, HarnessError, LLMCallError
from inner.sdk.protocol import (
    BudgetRequest,
    EvaluateRequest,
    LLMRequest,
    NoteRequest,
    ProtocolError,
    SchemaFailureRequest,
    StructuredOkRequest,
    decode_line,
    parse_request,
    serve,
)

T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True)
class DocumentView:
    """The part of the source document the sandbox receives.

    Attributes:
        doc_id: the document id.
        title: the title.
        text: the document cut to ``inner.harness_doc_chars`` characters (the rest never leaves
            the parent).
    """

    doc_id: str
    title: str
    text: str

    def excerpt(self, max_chars: int) -> str:
        """The first ``max_chars`` characters, cut at a paragraph or sentence boundary."""
        if max_chars <= 0:
            return ""
        if len(self.text) <= max_chars:
            return self.text
        head = self.text[:max_chars]
        for sep in ("\n\n", ". ", "\n", " "):
            cut = head.rfind(sep)
            if cut >= max_chars // 2:
                return head[: cut + (1 if sep == ". " else 0)].rstrip()
        return head

    def sections(self) -> list[tuple[str, str]]:
        """``(heading, body)`` pairs: paragraphs that look like headings (short, no final
        period, e.g. ``3 Method`` or ``## Results``) start a section; text before the first
        heading is the section ``""``."""
        out: list[tuple[str, list[str]]] = [("", [])]
        for para in re.split(r"\n\s*\n", self.text):
            p = para.strip()
            if not p:
                continue
            first = p.splitlines()[0].strip()
            if len(p.splitlines()) == 1 and len(first) <= 80 and not first.endswith((".", ":", ",", ";")):
                out.append((first.lstrip("#").strip(), []))
            else:
                out[-1][1].append(p)
        return [(h, "\n\n".join(body)) for h, body in out if h or body]

    def search(self, phrase: str, *, window: int = 300, limit: int = 5) -> list[str]:
        """Up to ``limit`` passages (``window`` characters either side) around case-insensitive
        matches of ``phrase``."""
        hits, low, needle = [], self.text.lower(), phrase.lower().strip()
        if not needle:
            return []
        start = 0
        while len(hits) < limit and (i := low.find(needle, start)) >= 0:
            hits.append(self.text[max(0, i - window) : i + len(needle) + window])
            start = i + len(needle)
        return hits


@dataclass
class Agent:
    """What ``harness.run(agent)`` gets: the document, LLM roles, the frozen evaluator as a
    tool, memory and budgets. Documented in :mod:`inner.engine.harness` (the contract)."""

    doc: DocumentView
    domain: str
    max_rounds: int
    budget_limits: dict[str, float]
    doc_chars: dict[str, int]
    _conn: _Connection
    #: the evaluator's reports of this document so far (memory), oldest first
    rounds: list[RoundRecord] = field(default_factory=list)
    _json_groups: Iterator[int] = field(default_factory=itertools.count, repr=False)

    async def llm(
        self,
        role: str,
        messages: list[dict[str, Any]],
        *,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "output",
        tools: list[dict[str, Any]] | None = None,
        sample: int | None = None,
    ) -> Completion:
        """One completion for a harness role (``challenger``, ``main_agent``, ``self_check``).

        Each call is a fresh sample unless ``sample`` pins the sample index (identical calls
        with the same ``sample`` return the same cached reply). ``tools`` are OpenAI-style
        function tools, passed to endpoints that support them; tool calls come back in
        ``Completion.tool_calls``.

        Raises:
            BudgetExhausted: the document's call or token budget is spent (the document ends).
            LLMCallError: the request failed after retries (the document is redone later).
            HarnessError: the role is not a harness role.
        """
        return await self._llm(role, messages, json_schema, schema_name, tools, sample, None)

    async def _llm(
        self,
        role: str,
        messages: list[dict[str, Any]],
        json_schema: dict[str, Any] | None,
        schema_name: str,
        tools: list[dict[str, Any]] | None,
        sample: int | None,
        group: int | None,
    ) -> Completion:
        """:meth:`llm`; ``group`` numbers the :meth:`llm_json` request the call belongs to (the
        parent caches its replies only once that request ends usable)."""
        v = await self._conn.request(
            "llm", role=role, messages=messages, json_schema=json_schema, schema_name=schema_name,
            tools=tools, sample=sample, group=group,
        )  # fmt: skip
        return Completion(
            text=v["text"],
            finish_reason=v.get("finish_reason"),
            prompt_tokens=v.get("prompt_tokens", 0),
            completion_tokens=v.get("completion_tokens", 0),
            cached=v.get("cached", False),
            tool_calls=v.get("tool_calls"),
        )

    async def llm_json(
        self, role: str, messages: list[dict[str, Any]], model: type[T], *, sample: int | None = None
    ) -> JSONResult[T]:
        """A structured completion parsed into ``model``: schema-constrained where the endpoint
        supports it, one repair request on bad output, then a typed failure with the raw text
        (:func:`inner.sdk.contract.json_with_repair`). A typed failure is also reported to the
        parent, which counts it as an ``LLMSchemaError`` of ``role`` (``calls.jsonl``,
        ``stats.json`` ``failures_by_kind.schema``) and does not cache its replies, so a rerun
        asks again; the replies of a usable result are cached."""
        group = next(self._json_groups)

        async def send(convo: list[dict[str, Any]], schema: dict[str, Any]) -> Completion:
            return await self._llm(role, convo, schema, model.__name__, None, sample, group)

        res = await json_with_repair(send, messages, model)
        if res.ok:
            await self._conn.request("structured_ok", group=group)
        else:
            await self._conn.request(
                "schema_failure", group=group, role=role, schema_name=model.__name__, error=res.error or ""
            )
        return res

    async def evaluate(
        self, challenge: Challenge, *, side: str = "both", self_check: QVVerdict | None = None
    ) -> RoundRecord:
        """Run the frozen evaluator on ``challenge`` and return its report.

        Each distinct challenge is one round (``max_rounds`` per document); evaluating the same
        challenge again returns the recorded report (with ``side="both"`` after a
        ``side="weak"`` report that passed, the strong side runs on the same round). The first
        ACCEPTED report ends the document: the sandbox is stopped right after.

        Args:
            side: ``weak`` (weak solver only: TOO_EASY / WEAK_ZERO / WEAK_PASSED) or ``both``.
            self_check: the harness's own quality verdict, recorded with the round; it never
                lets a round pass (the frozen quality check decides).

        Raises:
            BudgetExhausted: the round budget is spent (the document ends).
        """
        v = await self._conn.request(
            "evaluate",
            challenge=challenge.model_dump(mode="json"),
            side=side,
            self_check=self_check.model_dump() if self_check else None,
        )
        rec = RoundRecord.model_validate(v)
        if not any(r.key == rec.key and r.side == rec.side for r in self.rounds):
            self.rounds[:] = [r for r in self.rounds if r.key != rec.key] + [rec]
        return rec

    async def note(self, text: str) -> None:
        """Keep a line of reasoning in the trajectory (``events`` of kind ``note``)."""
        await self._conn.request("note", text=str(text)[:4000])

    async def budget(self) -> dict[str, float]:
        """What is left: ``rounds``, ``calls``, ``tokens``, ``seconds``."""
        return await self._conn.request("budget")

    def document(self, budget: str | int | None = None) -> str:
        """The document text, cut at a clean boundary to ``budget``: a harness role's
        configured budget (``llm.roles.<role>.doc_chars``) or a number of characters."""
        if budget is None:
            return self.doc.text
        chars = self.doc_chars.get(budget, 0) if isinstance(budget, str) else int(budget)
        return self.doc.excerpt(chars)


class _Connection:
    """Requests to the parent and the replies routed back to them."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.ids = itertools.count()
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    def send(self, msg: dict[str, Any]) -> None:
        self.out.write(json.dumps(msg) + "\n")
        self.out.flush()

    async def request(self, op: str, **args: Any) -> Any:
        rid = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        self.send({"t": "req", "id": rid, "op": op, **args})
        msg = await fut
        if msg["ok"]:
            return msg.get("value")
        kind, error = msg.get("kind"), msg.get("error", "")
        if kind == "budget":
            raise BudgetExhausted(error)
        if kind == "transport":
            raise LLMCallError(error, role=str(args.get("role", op)))
        raise HarnessError(error)

    def resolve(self, msg: dict[str, Any]) -> None:
        fut = self.waiting.pop(msg.get("id", -1), None)
        if fut is not None and not fut.done():
            fut.set_result(msg)


def load_harness_module(path: Path) -> Any:
    """Import ``<path>/harness.py`` and check it defines ``async def run(agent)``.

    Raises:
        HarnessError: import failure (message carries the exception) or no ``run`` coroutine.
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location("harness", path / "harness.py")
    if spec is None or spec.loader is None:
        raise HarnessError(f"cannot import {path / 'harness.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["harness"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise HarnessError(f"harness.py failed to import: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, "run", None)
    if fn is None or not inspect.iscoroutinefunction(fn):
        raise HarnessError(
            "harness.py must define `async def run(agent)` (the harness contract, inner/engine/harness.py)"
        )
    return module


async def _serve(module: Any, conn: _Connection) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    started: asyncio.Task[None] | None = None

    async def run(msg: dict[str, Any]) -> None:
        d = msg["doc"]
        agent = Agent(
            doc=DocumentView(d["doc_id"], d["title"], d["text"]),
            domain=msg["domain"],
            max_rounds=msg["max_rounds"],
            budget_limits=msg["budget"],
            doc_chars=msg.get("doc_chars", {}),
            _conn=conn,
        )
        try:
            await module.run(agent)
            conn.send({"t": "done", "ok": True})
        except BaseException:  # noqa: BLE001 - every failure of harness code is reported, then we exit
            conn.send({"t": "done", "ok": False, "error": traceback.format_exc(limit=12)})

    while line := await reader.readline():
        msg = json.loads(line)
        if msg["t"] == "run" and started is None:
            started = asyncio.create_task(run(msg))
        elif msg["t"] == "resp":
            conn.resolve(msg)
    if started is not None and not started.done():
        started.cancel()


# -- dry run ---------------------------------------------------------------------------------
DRY_RUN_DOCUMENT = """Title: A dry-run document

1 Introduction

This paper studies how a cache of intermediate results changes the cost of a recurrent computation. It finds that reuse halves the cost when inputs repeat.

2 Method

The method stores each intermediate result under a hash of its inputs and looks it up before recomputing. Entries are evicted in least-recently-used order.

3 Results

On three workloads the cache cut the wall time by 40 to 55 percent; it did not help when inputs never repeated.

4 Limitations

The cache costs memory proportional to the number of distinct inputs.
"""


def schema_instance(schema: Any, tag: str = "") -> Any:
    """A minimal value that satisfies a JSON schema (enum/const first, every listed object
    property, ``minItems`` items (at least one), strings padded to ``minLength``, numbers within
    ``minimum``/``maximum``): the dry run's canned structured reply. ``tag`` is appended to
    every string, so that successive replies differ."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key, []) if isinstance(o, dict) and o.get("type") != "null"]
        if options:
            return schema_instance(options[0], tag)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        return {name: schema_instance(sub, tag) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        n = max(1, int(schema.get("minItems", 1)))
        if "maxItems" in schema:
            n = min(n, int(schema["maxItems"]))
        return [schema_instance(schema.get("items", {}), f"{tag}.{i}") for i in range(n)]
    if kind in ("integer", "number"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        value = 1 if (lo is None or lo <= 1) and (hi is None or hi >= 1) else (lo if lo is not None else hi)
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    text = f"dry-run text {tag}".strip()
    return text + "x" * max(0, int(schema.get("minLength", 0)) - len(text))


class _DryConnection:
    """Answers the agent's requests inside the sandbox, with no parent, no LLM, no evaluator: the
    dry run's :class:`~inner.sdk.protocol.Host`. Each request goes through the same JSON line
    and the same validation as to the parent (:func:`~inner.sdk.protocol.decode_line`,
    :func:`~inner.sdk.protocol.parse_request`)."""

    def __init__(self, *, roles: list[str], max_rounds: int, max_calls: int) -> None:
        self.roles, self.max_rounds, self.max_calls = roles, max_rounds, max_calls
        self.calls = 0
        self.reports: dict[str, dict[str, Any]] = {}

    async def request(self, op: str, **args: Any) -> Any:
        await asyncio.sleep(0)
        try:
            req = parse_request(decode_line(json.dumps({"t": "req", "id": 0, "op": op, **args})))
        except ProtocolError as exc:
            raise HarnessError(str(exc)) from exc
        return await serve(self, req)

    async def on_note(self, req: NoteRequest) -> None:
        return None

    async def on_structured_ok(self, req: StructuredOkRequest) -> None:
        return None

    async def on_schema_failure(self, req: SchemaFailureRequest) -> None:
        return None

    async def on_budget(self, req: BudgetRequest) -> dict[str, float]:
        return {"rounds": self.max_rounds - len(self.reports), "calls": self.max_calls - self.calls,
                "tokens": 10**6, "seconds": 60.0}  # fmt: skip

    async def on_llm(self, req: LLMRequest) -> dict[str, Any]:
        if req.role not in self.roles:
            raise HarnessError(f"a harness may only call the roles {tuple(self.roles)}, not {req.role!r}")
        if self.calls >= self.max_calls:
            raise BudgetExhausted(f"dry run: LLM call budget spent ({self.max_calls} calls)")
        self.calls += 1
        reply: dict[str, Any] = {"text": "dry-run reply", "finish_reason": "stop", "prompt_tokens": 1,
                                 "completion_tokens": 1, "cached": False, "tool_calls": None}  # fmt: skip
        if req.json_schema is not None:
            reply["text"] = json.dumps(schema_instance(req.json_schema, str(self.calls)))
        elif req.tools:  # each offered tool in turn
            tool = req.tools[(self.calls - 1) % len(req.tools)]
            fn = tool.get("function", {}) if isinstance(tool, dict) else {}
            args = schema_instance(fn.get("parameters") or {"type": "object"}, str(self.calls))
            reply.update(text="", finish_reason="tool_calls", tool_calls=[
                {"id": f"dry_{self.calls}", "type": "function",
                 "function": {"name": str(fn.get("name", "tool")), "arguments": json.dumps(args or {})}}])  # fmt: skip
        return reply

    async def on_evaluate(self, req: EvaluateRequest) -> dict[str, Any]:
        ch = req.challenge
        key = challenge_key(ch)
        if key not in self.reports:
            if len(self.reports) >= self.max_rounds:
                raise BudgetExhausted(f"dry run: round budget spent ({self.max_rounds} rounds)")
            self.reports[key] = RoundRecord(
                round=len(self.reports) + 1, key=key, side=req.side, challenge=ch, self_check=req.self_check,
                qv=QVVerdict(passed=True, reason="dry run"), weak_scores=[1.0], weak_avg=1.0,
                failure_mode=FailureMode.TOO_EASY, reasons=["dry run: canned report (no solver ran)"],
            ).model_dump(mode="json")  # fmt: skip
        return self.reports[key]


async def dry_run(module: Any, msg: dict[str, Any]) -> dict[str, Any]:
    """Run ``module.run(agent)`` on a canned document against canned replies.

    Returns:
        ``{"t": "done", "ok": True, "calls", "rounds"}`` when the harness returned or ran out of
        its dry-run budget, else ``ok: False`` with the traceback in ``error``.
    """
    conn = _DryConnection(
        roles=list(msg.get("roles") or ["challenger", "main_agent", "self_check"]),
        max_rounds=int(msg.get("max_rounds", 2)),
        max_calls=int(msg.get("max_calls", 40)),
    )
    agent = Agent(
        doc=DocumentView("dry-run", "A dry-run document", DRY_RUN_DOCUMENT),
        domain=str(msg.get("domain", "research paper")),
        max_rounds=conn.max_rounds,
        budget_limits={"calls": conn.max_calls, "rounds": conn.max_rounds},
        doc_chars={r: 2000 for r in conn.roles},
        _conn=conn,  # type: ignore[arg-type]
    )
    try:
        await module.run(agent)
    except BudgetExhausted:
        pass  # the normal end of a harness that keeps going until a budget stops it
    except BaseException:  # noqa: BLE001 - every failure of harness code is reported
        return {"t": "done", "ok": False, "error": traceback.format_exc(limit=12), "calls": conn.calls,
                "rounds": len(conn.reports)}  # fmt: skip
    return {"t": "done", "ok": True, "calls": conn.calls, "rounds": len(conn.reports)}


def main() -> None:
    """Entry point inside the sandbox: ``sandbox_child.py HARNESS_DIR [--check | --dry-run]``.

    Sends ``{"t": "ready", "ok": true}`` once the harness is imported (or ``ok: false`` with
    the error, exit 3), then serves one document."""
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # the harness's prints must not corrupt the protocol channel
    path = Path(sys.argv[1])
    try:
        module = load_harness_module(path)
    except HarnessError as exc:
        out.write(json.dumps({"t": "ready", "ok": False, "error": str(exc)}) + "\n")
        out.flush()
        os._exit(3)
    out.write(json.dumps({"t": "ready", "ok": True}) + "\n")
    out.flush()
    if "--check" in sys.argv[2:]:
        os._exit(0)
    if "--dry-run" in sys.argv[2:]:
        msg = json.loads(sys.stdin.readline() or "{}")
        out.write(json.dumps(asyncio.run(dry_run(module, msg))) + "\n")
        out.flush()
        os._exit(0)
    asyncio.run(_serve(module, _Connection(out)))
    out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
