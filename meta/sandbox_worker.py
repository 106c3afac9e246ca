"""The child side of the harness sandbox: ``python -m meta.sandbox_worker HARNESS_DIR [--check]``.

Loads the harness (in this process only) and serves its contract functions over JSON lines:
requests on stdin, replies on a private duplicate of the original stdout (the harness's own
prints go to stderr). Its LLM calls are sent to the parent, which runs them through the
project's LLM layer (cached, counted, role-restricted); see :mod:`meta.sandbox`.

Messages (one JSON object per line):

- parent -> child ``{"t": "call", "id", "fn": "propose"|"verify"|"feedback", "ctx", "arg"}``
- child -> parent ``{"t": "llm", "id", "cid", "role", "messages", "json_schema", "schema_name", "sample_index"}``
- parent -> child ``{"t": "llm_result", "cid", "text", "finish_reason"}`` or
  ``{"t": "llm_error", "cid", "kind": "transport"|"harness", "error"}``
- child -> parent ``{"t": "result", "id", "ok", "value" | "error"}``
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import traceback
from typing import Any

from inner.documents import Document
from inner.errors import HarnessError, LLMCallError
from inner.harness import HarnessContext, HarnessLLM, load_harness
from inner.llm.client import Completion, JSONResult
from inner.records import Challenge, QVVerdict, RoundRecord


class ProxyLLM(HarnessLLM):
    """The ``ctx.llm`` of a sandboxed harness: :class:`inner.harness.HarnessLLM` whose
    ``complete_raw`` forwards each call to the parent (which enforces the harness roles)."""

    def __init__(self, worker: Worker, call_id: int, doc_chars: dict[str, int]) -> None:
        self._w = worker
        self._id = call_id
        self._doc_chars = doc_chars

    async def complete_raw(
        self,
        role: str,
        messages: list[dict[str, str]],
        *,
        sample_index: int = 0,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "output",
    ) -> Completion:
        cid = next(self._w.cids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._w.llm_waiting[cid] = fut
        self._w.send(
            {
                "t": "llm", "id": self._id, "cid": cid, "role": role, "messages": messages,
                "json_schema": json_schema, "schema_name": schema_name, "sample_index": sample_index,
            }
        )  # fmt: skip
        msg = await fut
        if msg["t"] == "llm_error":
            if msg["kind"] == "transport":
                raise LLMCallError(msg["error"], role=role)
            raise HarnessError(msg["error"])
        return Completion(text=msg["text"], finish_reason=msg.get("finish_reason"))

    def doc_chars(self, role: str) -> int:
        if role not in self._doc_chars:
            raise HarnessError(f"a harness may only call roles {sorted(self._doc_chars)}, not {role!r}")
        return self._doc_chars[role]


def _encode(fn: str, result: Any) -> Any:
    if fn == "propose":
        if isinstance(result, Challenge):
            return {"challenge": result.model_dump(), "raw": [], "error": None}
        if isinstance(result, JSONResult):
            value = result.value.model_dump() if result.value is not None else None
            return {"challenge": value, "raw": result.raw, "error": result.error}
        raise TypeError(f"propose returned {type(result).__name__}; expected Challenge or JSONResult[Challenge]")
    if fn == "verify":
        if not isinstance(result, QVVerdict):
            raise TypeError(f"verify returned {type(result).__name__}; expected QVVerdict")
        return result.model_dump()
    if not isinstance(result, str):
        raise TypeError(f"feedback returned {type(result).__name__}; expected str")
    return result


class Worker:
    """Serves contract calls from the parent concurrently (one asyncio task per call) and
    routes LLM results back to the proxies waiting for them."""

    def __init__(self, harness: Any, out: Any) -> None:
        self.harness = harness
        self.out = out
        self.cids = itertools.count()
        self.llm_waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    def send(self, msg: dict[str, Any]) -> None:
        self.out.write(json.dumps(msg) + "\n")
        self.out.flush()

    async def call(self, msg: dict[str, Any]) -> None:
        fn, c = msg["fn"], msg["ctx"]
        ctx = HarnessContext(
            doc=Document(**c["doc"]),
            domain=c["domain"],
            round=c["round"],
            max_rounds=c["max_rounds"],
            llm=ProxyLLM(self, msg["id"], c["doc_chars"]),
        )
        try:
            if fn == "propose":
                result = await self.harness.propose(ctx, msg["arg"])
            elif fn == "verify":
                result = await self.harness.verify(ctx, Challenge.model_validate(msg["arg"]))
            else:
                result = await self.harness.feedback(ctx, [RoundRecord.model_validate(h) for h in msg["arg"]])
            self.send({"t": "result", "id": msg["id"], "ok": True, "value": _encode(fn, result)})
        except Exception:
            self.send(
                {
                    "t": "result",
                    "id": msg["id"],
                    "ok": False,
                    "error": traceback.format_exc(limit=10),
                }
            )

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 27)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        tasks = set()
        while line := await reader.readline():
            msg = json.loads(line)
            if msg["t"] == "call":
                task = asyncio.create_task(self.call(msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif msg["t"] in ("llm_result", "llm_error"):
                fut = self.llm_waiting.pop(msg["cid"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)


def main() -> None:
    """Entry point of the worker process (argv: harness directory, optional ``--check``).

    Exits 3 with ``{"t": "ready", "ok": false, "error"}`` when the harness does not load."""
    path = sys.argv[1]
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # the harness's prints must not corrupt the protocol channel
    try:
        harness = load_harness(path)
    except HarnessError as exc:
        out.write(json.dumps({"t": "ready", "ok": False, "error": str(exc)}) + "\n")
        out.flush()
        sys.exit(3)
    out.write(json.dumps({"t": "ready", "ok": True, "harness_id": harness.harness_id}) + "\n")
    out.flush()
    if "--check" in sys.argv[2:]:
        return
    asyncio.run(Worker(harness, out).serve())


if __name__ == "__main__":
    main()
