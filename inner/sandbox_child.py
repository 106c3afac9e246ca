"""The child side of the sealed harness sandbox (runs *inside* bubblewrap, never in the parent).

Started by :mod:`inner.sandbox` as ``python -I /sdk/inner/sandbox_child.py /harness [--check]``
with only the harness SDK (:mod:`inner.contract`, :mod:`inner.templates`, :mod:`inner.errors`
and this file) and the harness directory visible. It imports the harness, builds the
:class:`Agent` and runs ``await harness.run(agent)`` on the one document the parent sends.

Every capability of the agent is a request to the parent over JSON lines (requests on a
private duplicate of stdout; the harness's own prints go to stderr)::

    parent -> child  {"t": "run", "doc": {...}, "domain", "max_rounds", "budget": {...}}
    child  -> parent {"t": "req", "id", "op": "llm" | "evaluate" | "note" | "budget", ...}
    parent -> child  {"t": "resp", "id", "ok": true, "value": ...}
                     {"t": "resp", "id", "ok": false, "kind", "error"}
    child  -> parent {"t": "done", "ok": true} | {"t": "done", "ok": false, "error": "<traceback>"}

The parent enforces roles and budgets and writes every record; nothing the child says is
trusted beyond being a request.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

if __name__ == "__main__":  # inside the sandbox: the SDK directory is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel

from inner.contract import (
    Challenge,
    Completion,
    JSONResult,
    QVVerdict,
    RoundRecord,
    json_with_repair,
)
from inner.errors import BudgetExhausted, HarnessError, LLMCallError

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
    tool, memory and budgets. Documented in :mod:`inner.harness` (the contract)."""

    doc: DocumentView
    domain: str
    max_rounds: int
    budget_limits: dict[str, float]
    doc_chars: dict[str, int]
    _conn: _Connection
    #: the evaluator's reports of this document so far (memory), oldest first
    rounds: list[RoundRecord] = field(default_factory=list)

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
        v = await self._conn.request(
            "llm", role=role, messages=messages, json_schema=json_schema, schema_name=schema_name,
            tools=tools, sample=sample,
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
        (:func:`inner.contract.json_with_repair`)."""

        async def send(convo: list[dict[str, Any]], schema: dict[str, Any]) -> Completion:
            return await self.llm(role, convo, json_schema=schema, schema_name=model.__name__, sample=sample)

        return await json_with_repair(send, messages, model)

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
        raise HarnessError("harness.py must define `async def run(agent)` (the harness contract, inner/harness.py)")
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


def main() -> None:
    """Entry point inside the sandbox: ``sandbox_child.py HARNESS_DIR [--check]``.

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
    asyncio.run(_serve(module, _Connection(out)))
    out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
