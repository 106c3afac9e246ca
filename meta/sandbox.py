"""The harness sandbox: a candidate harness runs in a child process, never beside the evaluator.

:class:`SandboxedHarness` has the harness interface the inner loop expects (``propose``,
``verify``, ``feedback``, ``harness_id``) and forwards each call to a worker process
(:mod:`meta.sandbox_worker`). The worker's LLM calls come back to this process and go through
the round's :class:`~inner.harness.HarnessLLM` (cached, counted per round, harness roles
only). The solvers, the judge and the gate stay in this process, so no harness code can
change them (DESIGN.md, "Evaluator integrity").

Containment:

- wall-clock limit per call (``timeout_s``), counting only the harness's own time (time
  spent waiting for its LLM calls is excluded, so a busy endpoint is not a hang);
- address-space limit (``memory_mb``, ``RLIMIT_AS``) and ``PR_SET_PDEATHSIG``;
- a raise, a hang, ``sys.exit`` or ``os._exit`` in the harness becomes a
  :class:`~inner.errors.HarnessError` for the calls in flight, which the inner loop records as
  HARNESS_ERROR rounds; the next call starts a fresh worker.

Not contained: file-system writes by harness code at run time (the worker runs as the same
user); edits outside the harness directory are rejected earlier, by :mod:`meta.edit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inner.errors import HarnessError, LLMCallError
from inner.harness import HARNESS_ROLES, HarnessContext, harness_id
from inner.llm.client import JSONResult
from inner.paths import PROJECT_ROOT
from inner.records import Challenge, QVVerdict, RoundRecord

log = logging.getLogger(__name__)


def _limits(memory_mb: int) -> Any:
    def apply() -> None:  # runs in the child between fork and exec
        import ctypes
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        with contextlib.suppress(OSError):  # not glibc: the worker is still killed by aclose
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return apply


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


async def validate_harness(path: Path, *, timeout_s: float = 60.0, memory_mb: int = 2048) -> str | None:
    """Check in a child process that ``path`` imports and honours the harness contract.

    Returns:
        ``None`` if valid, else the reason (import error, missing function, timeout, crash).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meta.sandbox_worker", str(path), "--check",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=_limits(memory_mb), env=_env(), cwd=str(path),
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"importing the harness did not finish within {timeout_s:.0f} s"
    first = out.decode(errors="replace").splitlines()[:1]
    if first:
        try:
            ready = json.loads(first[0])
        except ValueError:
            ready = {}
        if ready.get("ok") and proc.returncode == 0:
            return None
        if ready.get("error"):
            return ready["error"]
    tail = err.decode(errors="replace").strip().splitlines()[-5:]
    return f"harness check exited with code {proc.returncode}: " + " | ".join(tail)


@dataclass
class _Pending:
    future: asyncio.Future[dict[str, Any]]
    llm: Any
    context: contextvars.Context
    active_llm: int = 0
    paused_s: float = 0.0
    pause_start: float = 0.0
    transport_error: LLMCallError | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class SandboxedHarness:
    """A harness directory run in a worker process.

    Args:
        path: the harness directory.
        timeout_s: wall-clock limit of one contract call, seconds (LLM waiting excluded).
        memory_mb: address-space limit of the worker, MiB.
        log_path: file that receives the worker's stderr (the harness's prints, tracebacks).
    """

    def __init__(
        self,
        path: Path,
        *,
        timeout_s: float = 300.0,
        memory_mb: int = 2048,
        log_path: Path | None = None,
    ):
        self.path = Path(path)
        self.harness_id = harness_id(self.path)
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.log_path = log_path
        self.crashes = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count()
        self._start_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()

    # -- process ------------------------------------------------------------------------------
    async def _ensure_started(self) -> asyncio.subprocess.Process:
        async with self._start_lock:
            if self._proc is not None and self._proc.returncode is None:
                return self._proc
            stderr = self.log_path.open("ab") if self.log_path else asyncio.subprocess.DEVNULL
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "meta.sandbox_worker", str(self.path),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
                    preexec_fn=_limits(self.memory_mb), env=_env(), cwd=str(self.path), limit=1 << 27,
                )  # fmt: skip
            finally:
                if self.log_path:
                    stderr.close()  # type: ignore[union-attr]
            assert proc.stdout is not None
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 120)
                ready = json.loads(line) if line else {"ok": False, "error": f"exited with code {await proc.wait()}"}
            except (TimeoutError, ValueError) as exc:
                proc.kill()
                raise HarnessError(f"harness worker for {self.path} did not start: {exc!r}") from exc
            if not ready.get("ok"):
                raise HarnessError(f"harness {self.path} failed to load in the sandbox: {ready.get('error')}")
            self._proc = proc
            self._reader = asyncio.create_task(self._read(proc))
            return proc

    async def _send(self, proc: asyncio.subprocess.Process, msg: dict[str, Any]) -> None:
        assert proc.stdin is not None
        async with self._write_lock:
            try:
                proc.stdin.write((json.dumps(msg) + "\n").encode())
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the reader notices the exit and fails the pending calls

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            msg = json.loads(line)
            entry = self._pending.get(msg.get("id"))
            if entry is None:
                continue
            if msg["t"] == "result" and not entry.future.done():
                entry.future.set_result(msg)
            elif msg["t"] == "llm":
                task = asyncio.get_running_loop().create_task(self._serve_llm(proc, entry, msg), context=entry.context)
                entry.tasks.add(task)
                task.add_done_callback(entry.tasks.discard)
        code = await proc.wait()
        self.crashes += 1
        for entry in self._pending.values():
            if not entry.future.done():
                entry.future.set_exception(
                    HarnessError(
                        f"harness process exited with code {code} during the call (crash, sys.exit or os._exit)"
                    )
                )

    async def _serve_llm(self, proc: asyncio.subprocess.Process, entry: _Pending, msg: dict[str, Any]) -> None:
        if entry.active_llm == 0:
            entry.pause_start = time.monotonic()
        entry.active_llm += 1
        try:
            comp = await entry.llm.complete_raw(
                msg["role"], msg["messages"], sample_index=msg.get("sample_index", 0),
                json_schema=msg.get("json_schema"), schema_name=msg.get("schema_name", "output"),
            )  # fmt: skip
            reply = {
                "t": "llm_result",
                "cid": msg["cid"],
                "text": comp.text,
                "finish_reason": comp.finish_reason,
            }
        except LLMCallError as exc:
            entry.transport_error = exc
            reply = {"t": "llm_error", "cid": msg["cid"], "kind": "transport", "error": str(exc)}
        except HarnessError as exc:
            reply = {"t": "llm_error", "cid": msg["cid"], "kind": "harness", "error": str(exc)}
        finally:
            entry.active_llm -= 1
            if entry.active_llm == 0:
                entry.paused_s += time.monotonic() - entry.pause_start
        await self._send(proc, reply)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    async def aclose(self) -> None:
        """Stop the worker."""
        self._kill()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 10)
            except (TimeoutError, asyncio.CancelledError):
                self._reader.cancel()
        self._proc = None

    # -- calls --------------------------------------------------------------------------------
    async def _call(self, fn: str, ctx: HarnessContext, arg: Any) -> Any:
        proc = await self._ensure_started()
        cid = next(self._ids)
        entry = _Pending(asyncio.get_running_loop().create_future(), ctx.llm, contextvars.copy_context())
        self._pending[cid] = entry
        payload = {
            "doc": asdict(ctx.doc),
            "domain": ctx.domain,
            "round": ctx.round,
            "max_rounds": ctx.max_rounds,
            "doc_chars": {r: ctx.llm.doc_chars(r) for r in HARNESS_ROLES},
        }
        t0 = time.monotonic()
        try:
            await self._send(proc, {"t": "call", "id": cid, "fn": fn, "ctx": payload, "arg": arg})
            while True:
                done, _ = await asyncio.wait({entry.future}, timeout=0.5)
                if done:
                    break
                paused = entry.paused_s + (time.monotonic() - entry.pause_start if entry.active_llm else 0.0)
                if time.monotonic() - t0 - paused > self.timeout_s:
                    self._kill()
                    raise HarnessError(
                        f"harness {fn} exceeded its wall-clock limit of {self.timeout_s:.0f} s; worker killed"
                    )
            msg = entry.future.result()
        finally:
            self._pending.pop(cid, None)
            for task in list(entry.tasks):
                task.cancel()
        if entry.transport_error is not None:
            raise entry.transport_error
        if not msg["ok"]:
            raise HarnessError(f"harness {fn} raised in the sandbox:\n{msg['error']}")
        return msg["value"]

    async def propose(self, ctx: HarnessContext, feedback: str | None) -> JSONResult[Challenge]:
        v = await self._call("propose", ctx, feedback)
        value = Challenge.model_validate(v["challenge"]) if v["challenge"] is not None else None
        return JSONResult(value, v["raw"], v["error"])

    async def verify(self, ctx: HarnessContext, challenge: Challenge) -> QVVerdict:
        return QVVerdict.model_validate(await self._call("verify", ctx, challenge.model_dump()))

    async def feedback(self, ctx: HarnessContext, history: list[RoundRecord]) -> str:
        return str(await self._call("feedback", ctx, [h.model_dump(mode="json") for h in history]))
