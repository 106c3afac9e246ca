"""The document loop: the harness drives the rounds, the parent owns budgets and records.

One document (:class:`DocumentSession`)::

    start the sealed sandbox on the harness directory (inner.sandbox.process), send it the document
    serve its requests until it returns, is accepted, crashes or runs out of a budget:
      llm(role, ...)         harness roles only; counted against calls/tokens; cached, logged
      evaluate(challenge)    the frozen evaluator (inner.evaluator.roles): one round per distinct
                             challenge; the first ACCEPTED round ends the document
      note(text), budget()   memory and budgets
    trajectories/<doc>.json rewritten after every round; dataset.jsonl appended on acceptance
    kill the sandbox (its whole process tree) and record how the document ended

Document statuses: ``accepted``, ``exhausted`` (the harness returned or a budget ran out),
``crashed`` (the harness failed: raised, exited, hung, broke a limit) and ``error``
(infrastructure: an LLM request failed after retries, or a judge grade stayed unusable; such
documents are redone by the next run, with the rounds already recorded reused).

Documents run concurrently (``inner.max_concurrent_documents`` sandboxes at once); the
endpoints' ``max_in_flight`` bounds the requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inner.config import HARNESS_ROLES, GenerateConfig
from inner.engine.documents import Document
from inner.engine.records import (
    Example,
    HarnessEvent,
    RoleUsageRecord,
    RoundRecord,
    RunWriter,
    Trajectory,
    example_id,
)
from inner.evaluator.roles import CHALLENGE_FAULT_STATUSES, Evaluator
from inner.evaluator.rounds import RoundAction, RoundVerdict, plan_round, settle_round
from inner.io import StorageError, environment_error
from inner.llm.cache import sample_index
from inner.llm.client import Completion, LLMClient
from inner.sandbox.forkserver import ForkedSandbox, ForkServer
from inner.sandbox.process import SandboxProcess
from inner.sdk.contract import Challenge, QVVerdict, challenge_key
from inner.sdk.errors import HarnessError, LLMCallError, LLMSchemaError
from inner.sdk.protocol import (
    NOTE_CHARS,
    BudgetRequest,
    EvaluateRequest,
    LLMRequest,
    NoteRequest,
    ProtocolError,
    SchemaFailureRequest,
    StructuredOkRequest,
    clean_label,
    clean_text,
    parse_request,
    sanitize,
    serve,
)

log = logging.getLogger(__name__)

#: longest text kept per event in the trajectory (a reply, a note, a refusal), characters
EVENT_TEXT_CHARS = NOTE_CHARS
#: requests a sandbox may have in flight at once (more wait; a flood cannot exhaust memory)
MAX_PENDING = 32
#: events kept per document beyond those of LLM calls and evaluations (notes, refusals); more
#: end the document, so a flood cannot grow the trajectory without bound
MAX_OTHER_EVENTS = 200
#: HTTP statuses that mean "this request is malformed" (bad messages, a prompt over the context
#: window): on a harness role that is the harness's failure, not an infrastructure error (on an
#: evaluator role, the challenge's: :data:`inner.evaluator.roles.CHALLENGE_FAULT_STATUSES`)
HARNESS_FAULT_STATUSES = CHALLENGE_FAULT_STATUSES


class LoopObserver:
    """Callbacks for progress display; the default does nothing."""

    def round_started(self, doc_id: str, round_no: int) -> None: ...

    def document_finished(self, traj: Trajectory) -> None: ...


@dataclass
class Engine:
    """Everything one generation run needs.

    Attributes:
        cfg: the run config.
        client: the LLM client (shared by every document).
        harness_dir: the harness directory (run sealed, one sandbox per document).
        harness_id: ``<name>@<content hash>``, recorded with every example and trajectory.
        writer: the run directory's record writer.
        observer: progress callbacks.
        max_rounds: rounds per document (``inner.max_rounds``; 1 for CoT Self-Instruct).
        replicate: the evaluation's replicate index (0 by default): the harness's own samples
            and the evaluator's derive from it (:func:`inner.llm.cache.sample_index`).
    """

    cfg: GenerateConfig
    client: LLMClient
    harness_dir: Path
    harness_id: str
    writer: RunWriter
    observer: LoopObserver = field(default_factory=LoopObserver)
    max_rounds: int = 0
    replicate: int = 0

    def __post_init__(self) -> None:
        self.evaluator = Evaluator(self.client, self.cfg, replicate=self.replicate)
        if not self.max_rounds:
            self.max_rounds = 1 if self.cfg.method == "cot_self_instruct" else self.cfg.inner.max_rounds
        self._fork_server: ForkServer | None = None

    def new_sandbox(self) -> SandboxProcess | ForkedSandbox:
        """A sandbox for one document (not started): forked by the run's fork server
        (``inner.sandbox_mode=fork``; :meth:`open_sandboxes` starts it) or fresh (``fresh``)."""
        inner, log_path = self.cfg.inner, self.writer.run_dir / "sandbox.log"
        limits = {"memory_mb": inner.harness_memory_mb, "cpu_s": inner.harness_cpu_s,
                  "max_procs": inner.harness_max_procs, "log_path": log_path}  # fmt: skip
        if inner.sandbox_mode == "fresh":
            return SandboxProcess(self.harness_dir, **limits)
        return ForkedSandbox(self.fork_server(), **limits)

    def fork_server(self) -> ForkServer:
        """The run's fork server (created here, started by :meth:`open_sandboxes` or the first fork)."""
        if self._fork_server is None:
            self._fork_server = ForkServer(
                self.harness_dir,
                memory_mb=self.cfg.inner.harness_memory_mb,
                log_path=self.writer.run_dir / "sandbox.log",
            )
        return self._fork_server

    async def open_sandboxes(self) -> None:
        """Start the run's fork server before the first document (``inner.sandbox_mode=fork``),
        so that no document's wall clock pays for it.

        Raises:
            SandboxError: bubblewrap is missing or unusable, or the fork server cannot seal a
                document here (the message names ``inner.sandbox_mode=fresh``).
        """
        if self.cfg.inner.sandbox_mode == "fork":
            await self.fork_server().start()

    async def close_sandboxes(self) -> None:
        """Stop the run's fork server, if one was started."""
        if self._fork_server is not None:
            await self._fork_server.aclose()
            self._fork_server = None


class _End(Exception):
    """Raised inside a request handler to end the document (status, reason)."""

    def __init__(self, status: str, reason: str, *, error: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.error = status, reason, error


class DocumentSession:
    """One document: the sandboxed harness and the parent's side of its requests.

    Args:
        eng: the engine.
        doc: the document.
        traj: its trajectory (new, or an unfinished one from an earlier run: its rounds are
            reused when the harness evaluates the same challenges again).
    """

    def __init__(self, eng: Engine, doc: Document, traj: Trajectory) -> None:
        self.eng, self.doc, self.traj = eng, doc, traj
        self.cfg = eng.cfg.inner
        self.calls = 0
        self.tokens = 0
        self.t0 = time.monotonic()
        #: seconds the parent worked for the harness (inside ``evaluate``, or with at least one
        #: of its LLM calls in flight: queued in or decoded by the server), and since when it
        #: has been (``None``: not now); ``_parent_busy`` counts what is in flight
        self.parent_s = 0.0
        self.parent_since: float | None = None
        self._parent_busy = 0
        self.ended: asyncio.Future[_End] = asyncio.get_running_loop().create_future()
        self._samples: Counter[str] = Counter()
        self._eval_lock = asyncio.Lock()
        self._pending = asyncio.Semaphore(MAX_PENDING)
        self._usage: dict[str, RoleUsageRecord] = {}
        self._other_events = 0
        #: the latest trajectory write (:meth:`write`), finished or not
        self._writing: asyncio.Future[None] | None = None
        #: cache entries of the harness's llm_json requests in flight, by request group: written
        #: when the request ends usable (``structured_ok``), dropped on a schema failure or when
        #: the document ends
        self._structured: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        #: the parent's disk or open-file limit failed a request (:func:`inner.io.environment_error`):
        #: the document ends in ``error`` and the run stops with this, once it is recorded
        self._fatal: StorageError | None = None

    # -- budgets ------------------------------------------------------------------------------
    def harness_seconds(self) -> float:
        """Wall-clock seconds of the harness so far, time the parent works for it excluded:
        inside ``evaluate`` and while any of its LLM calls is in flight (a loaded server's queue
        is the machine's, not the harness's; the calls are bounded by ``inner.harness_max_calls``
        and each by its endpoint's ``timeout_s``)."""
        now = time.monotonic()
        busy = now - self.parent_since if self.parent_since is not None else 0.0
        return now - self.t0 - self.parent_s - busy

    @contextlib.contextmanager
    def parent_working(self) -> Iterator[None]:
        """Stop the harness's clock (:meth:`harness_seconds`) while the block runs; overlapping
        blocks (concurrent LLM calls, an evaluate beside them) count once."""
        if self._parent_busy == 0:
            self.parent_since = time.monotonic()
        self._parent_busy += 1
        try:
            yield
        finally:
            self._parent_busy -= 1
            if self._parent_busy == 0 and self.parent_since is not None:
                self.parent_s += time.monotonic() - self.parent_since
                self.parent_since = None

    def budget_left(self) -> dict[str, float]:
        """What the harness has left: ``rounds``, ``calls``, ``tokens``, ``seconds``."""
        return {
            "rounds": self.eng.max_rounds - len(self.traj.rounds),
            "calls": self.cfg.harness_max_calls - self.calls,
            "tokens": self.cfg.harness_max_tokens - self.tokens,
            "seconds": round(self.cfg.harness_wall_s - self.harness_seconds(), 1),
        }

    def end(self, status: str, reason: str, *, error: str | None = None) -> None:
        """End the document (the first call wins)."""
        if not self.ended.done():
            self.ended.set_result(_End(status, reason, error=error))

    def event(self, kind: str, *, text: str = "", role: str | None = None, **kw: Any) -> None:
        """Record one harness event, its text valid UTF-8 and cut to :data:`EVENT_TEXT_CHARS`
        (its role to a label); notes and refusals beyond :data:`MAX_OTHER_EVENTS` end the
        document instead."""
        if kind in ("note", "refused", "schema_failure"):
            self._other_events += 1
            if self._other_events > MAX_OTHER_EVENTS:
                self.end("exhausted", f"event budget spent ({MAX_OTHER_EVENTS} notes and refused requests)")
                return
        self.traj.events.append(
            HarnessEvent(
                kind=kind,
                t=round(time.monotonic() - self.t0, 3),
                text=clean_text(text[:EVENT_TEXT_CHARS]),
                role=None if role is None else clean_label(role, ""),
                **kw,
            )
        )

    async def write(self) -> None:
        """Rewrite the trajectory on disk (the file work in a worker thread,
        :meth:`~inner.engine.records.RecordWriter.write_trajectory_off_loop`); on disk when this
        returns. A write whose caller is cancelled still finishes: :meth:`run` waits for it
        before the final write, so an older trajectory never replaces the final one.

        Raises:
            _End: it could not be written (the document ends ``crashed`` with the reason).
        """
        self._writing = asyncio.ensure_future(self.eng.writer.write_trajectory_off_loop(self.traj))
        try:
            await asyncio.shield(self._writing)
        except Exception as exc:  # a cancellation (BaseException) passes through
            raise _End("crashed", records_failed(exc)) from exc

    # -- the run ------------------------------------------------------------------------------
    async def run(self) -> Trajectory:
        """Run the harness on the document; returns the finished trajectory (also on disk).

        Raises:
            SandboxError: bubblewrap is missing or unusable (a setup problem, not the harness's).
        """
        eng, traj = self.eng, self.traj
        sb = eng.new_sandbox()
        handlers: set[asyncio.Task[None]] = set()
        reader: asyncio.Task[None] | None = None
        try:
            try:
                ready = await asyncio.wait_for(sb.start(), self.cfg.harness_wall_s)
            except TimeoutError:
                ready = {"ok": False, "error": f"importing the harness took over {self.cfg.harness_wall_s:g} s"}
            except HarnessError as exc:
                ready = {"ok": False, "error": str(exc)}
            if not ready.get("ok"):
                self.end("crashed", "the harness failed to load", error=str(ready.get("error")))
            else:
                await sb.send(
                    {
                        "t": "run",
                        "doc": {"doc_id": self.doc.doc_id, "title": self.doc.title,
                                "text": self.doc.excerpt(self.cfg.harness_doc_chars)},
                        "domain": eng.cfg.task.domain,
                        "max_rounds": eng.max_rounds,
                        "budget": self.budget_left(),
                        "doc_chars": {r: eng.cfg.llm.role(r).doc_chars for r in HARNESS_ROLES},
                    }
                )  # fmt: skip
                reader = asyncio.create_task(self._read(sb, handlers))
                while not self.ended.done():
                    await asyncio.wait({self.ended}, timeout=0.25)
                    if not self.ended.done() and self.harness_seconds() > self.cfg.harness_wall_s:
                        self.end(
                            "crashed",
                            f"the harness exceeded its wall-clock limit of {self.cfg.harness_wall_s:g} s "
                            "(inner.harness_wall_s)",
                        )
        finally:
            if reader is not None:
                reader.cancel()
            for task in list(handlers):
                task.cancel()
            await asyncio.gather(*handlers, *([reader] if reader else []), return_exceptions=True)
            await sb.kill()
        outcome = self.ended.result()
        traj.status, traj.end_reason = outcome.status, outcome.reason
        if outcome.status == "crashed":
            traj.harness_error = outcome.error or outcome.reason
        if outcome.status == "error":
            traj.error = outcome.error or outcome.reason
        traj.harness_usage = self._usage
        traj.wall_s = round(traj.wall_s + time.monotonic() - self.t0, 3)
        if self._writing is not None:  # a round's write still in its thread: it lands first
            await asyncio.wait({self._writing})
        # the document is over: nothing else touches traj, so the whole write (its fallbacks
        # included) runs in a worker thread while the loop serves other documents
        await asyncio.to_thread(write_contained, eng, traj)
        if self._fatal is not None:
            raise self._fatal
        return traj

    async def _read(self, sb: SandboxProcess | ForkedSandbox, handlers: set[asyncio.Task[None]]) -> None:
        """Read the sandbox's lines until it is done. A line that cannot be read (malformed,
        too deep, too long) ends the document ``crashed`` with the reason at once, and so does
        any failure of the reader itself: it never dies silently."""
        try:
            while (msg := await sb.readline()) is not None:
                if msg.get("t") == "req":
                    await self._pending.acquire()
                    task = asyncio.create_task(self._handle(sb, msg))
                    handlers.add(task)
                    task.add_done_callback(handlers.discard)
                elif msg.get("t") == "done":
                    if msg.get("ok"):
                        self.end("exhausted", "the harness returned without an accepted example")
                    else:
                        self.end("crashed", "the harness raised", error=str(msg.get("error"))[-8000:])
                    return
        except HarnessError as exc:
            self.end("crashed", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - whatever the line did, the document ends with the reason
            self.end("crashed", f"the harness's protocol line could not be read: {type(exc).__name__}: {exc}"[:2000])
            return
        await sb.wait()
        self.end("crashed", f"the harness process {sb.exit_description()} (crash, sys.exit or os._exit)")

    async def _handle(self, sb: SandboxProcess | ForkedSandbox, msg: dict[str, Any]) -> None:
        """Validate one request (:func:`inner.sdk.protocol.parse_request`, once), serve it
        (:func:`inner.sdk.protocol.serve`) and answer it. A request that does not validate is
        refused, answered and recorded; it never ends the document."""
        rid, req = msg.get("id"), None
        try:
            req = parse_request(msg)
            value = await serve(self, req)
            await sb.send({"t": "resp", "id": rid, "ok": True, "value": value})
        except _End as end:
            await sb.send({"t": "resp", "id": rid, "ok": False, "kind": "budget", "error": end.reason})
            self.end(end.status, end.reason, error=end.error)
        except LLMCallError as exc:
            if isinstance(req, LLMRequest) and getattr(exc, "status", None) in HARNESS_FAULT_STATUSES:
                # the harness's own request was malformed (e.g. a prompt over the context window):
                # its failure, answered as a refusal, never laundered into an infrastructure error
                self.event("refused", role=req.role, text=f"the endpoint rejected the request: {exc}")
                await sb.send({"t": "resp", "id": rid, "ok": False, "kind": "refused", "error": str(exc)})
                return
            await sb.send({"t": "resp", "id": rid, "ok": False, "kind": "transport", "error": str(exc)})
            self.end("error", f"an LLM request failed after retries: {exc}", error=f"{type(exc).__name__}: {exc}")
        except (HarnessError, ProtocolError) as exc:
            self.event("refused", text=str(exc))
            await sb.send({"t": "resp", "id": rid, "ok": False, "kind": "refused", "error": str(exc)})
        except Exception as exc:  # a bad request shape: the harness's mistake, answered, not fatal
            if (fatal := environment_error(exc)) is not None:  # ... unless the parent's disk or fds failed
                self._fatal = self._fatal or fatal
                await sb.send({"t": "resp", "id": rid, "ok": False, "kind": "transport", "error": str(fatal)})
                self.end("error", str(fatal), error=str(fatal))
                return
            self.event("refused", text=f"{type(exc).__name__}: {exc}")
            await sb.send(
                {"t": "resp", "id": rid, "ok": False, "kind": "refused", "error": f"{type(exc).__name__}: {exc}"}
            )
        finally:
            self._pending.release()

    # -- requests (the host interface, inner.sdk.protocol.Host) --------------------------------
    async def on_note(self, req: NoteRequest) -> None:
        self.event("note", text=req.text)

    async def on_budget(self, req: BudgetRequest) -> dict[str, float]:
        return self.budget_left()

    async def on_structured_ok(self, req: StructuredOkRequest) -> None:
        """An llm_json request ended usable: cache its replies."""
        self.eng.client.commit(self._structured.pop(req.group, []))

    async def on_schema_failure(self, req: SchemaFailureRequest) -> None:
        """The harness's ``llm_json`` got no usable reply after its repair: one typed
        ``LLMSchemaError`` of the role in the accounting, as the parent's own
        ``complete_json`` records it, and an event of kind ``schema_failure``; its replies are
        never cached. Counted against :data:`MAX_OTHER_EVENTS` (a harness cannot flood the
        records with reports)."""
        self._structured.pop(req.group, None)
        role = req.role
        if role not in HARNESS_ROLES:
            raise HarnessError(f"a harness may only report on the roles {HARNESS_ROLES}, not {role!r}")
        detail, name = req.error, req.schema_name
        self.event("schema_failure", role=role, text=f"{name}: {detail}")
        if self.ended.done():  # over the event budget: the document has ended
            return
        self._usage.setdefault(role, RoleUsageRecord()).failures += 1
        self.eng.client.record_failure(
            LLMSchemaError(
                f"{role} reply does not match {name} after one repair: {detail}",
                role=role,
                endpoint=self.eng.cfg.llm.role(role).endpoint,
                cause=detail,
            )  # fmt: skip
        )

    async def on_llm(self, req: LLMRequest) -> dict[str, Any]:
        role = req.role
        if role not in HARNESS_ROLES:
            raise HarnessError(f"a harness may only call the roles {HARNESS_ROLES}, not {role!r}")
        messages = req.messages
        if self.calls >= self.cfg.harness_max_calls:
            raise _End(
                "exhausted", f"LLM call budget spent ({self.cfg.harness_max_calls} calls, inner.harness_max_calls)"
            )
        if self.tokens >= self.cfg.harness_max_tokens:
            raise _End("exhausted", f"token budget spent ({self.tokens} tokens, inner.harness_max_tokens)")
        self.calls += 1
        schema, tools = req.json_schema, req.tools
        sample = req.sample
        if sample is None:  # a fresh sample per identical call, deterministic on replay
            fp = hashlib.sha256(json.dumps([role, messages, schema, tools], sort_keys=True).encode()).hexdigest()
            sample = self._samples[fp]
            self._samples[fp] += 1
        try:
            pending = self._structured.setdefault(req.group, []) if req.group is not None else None
            index = sample_index(replicate=self.eng.replicate, stream="harness", index=int(sample))
            with self.parent_working():
                comp: Completion = await self.eng.client.complete(
                    role, messages, sample_index=index, json_schema=schema,
                    schema_name=req.schema_name, pending=pending,
                    **({"tools": tools} if tools else {}),
                )  # fmt: skip
        except asyncio.CancelledError:  # the document ended with this call in flight: keep a trace
            self._usage.setdefault(role, RoleUsageRecord()).calls += 1
            self.traj.events.append(
                HarnessEvent(kind="llm", role=role, text="(cancelled: the document ended while this call was in flight)",
                             t=round(time.monotonic() - self.t0, 3))
            )  # fmt: skip
            raise
        self.tokens += comp.prompt_tokens + comp.completion_tokens
        u = self._usage.setdefault(role, RoleUsageRecord())
        u.cached_calls += comp.cached
        u.calls += not comp.cached
        u.prompt_tokens += comp.prompt_tokens
        u.completion_tokens += comp.completion_tokens
        self.event(
            "llm", role=role, text=comp.text[:EVENT_TEXT_CHARS], prompt_tokens=comp.prompt_tokens,
            completion_tokens=comp.completion_tokens, cached=comp.cached,
        )  # fmt: skip
        return {
            "text": comp.text, "finish_reason": comp.finish_reason, "prompt_tokens": comp.prompt_tokens,
            "completion_tokens": comp.completion_tokens, "cached": comp.cached,
            "tool_calls": getattr(comp, "tool_calls", None),
        }  # fmt: skip

    async def on_evaluate(self, req: EvaluateRequest) -> dict[str, Any]:
        challenge, side, self_check = req.challenge, req.side, req.self_check
        async with self._eval_lock:
            with self.parent_working():
                rec = await self._evaluate_locked(challenge, side, self_check)
        return rec.model_dump(mode="json")

    async def _evaluate_locked(self, challenge: Challenge, side: str, self_check: QVVerdict | None) -> RoundRecord:
        """Carry out the round rules (:mod:`inner.evaluator.rounds`) for one evaluate request."""
        eng, traj = self.eng, self.traj
        plan = plan_round(traj.rounds, challenge_key(challenge), side, eng.max_rounds)
        if plan.action is RoundAction.OUT_OF_ROUNDS:
            raise _End("exhausted", f"round budget spent ({eng.max_rounds} rounds, inner.max_rounds)")
        recorded = traj.rounds[plan.index] if plan.index is not None else None
        if plan.action is RoundAction.REPLAY:
            assert recorded is not None
            self.event("evaluate", role=side, round=plan.round_no, text="recorded report returned")
            return recorded
        eng.observer.round_started(self.doc.doc_id, plan.round_no)
        rec = await eng.evaluator.evaluate(
            self.doc, challenge, round_no=plan.round_no, side=side, prior=plan.prior,
            judge_offset=1000 * traj.judge_errors,
        )  # fmt: skip
        rec.self_check = self_check if self_check is not None else (recorded.self_check if recorded else None)
        if plan.index is None:
            traj.rounds.append(rec)
        else:
            traj.rounds[plan.index] = rec
        self.event("evaluate", role=side, round=plan.round_no, text=rec.failure_mode.value)
        verdict, traj.judge_errors = settle_round(rec, traj.judge_errors)
        if verdict is RoundVerdict.REDO_DOCUMENT:  # infrastructure the first time: the document is redone
            await self.write()
            raise _End("error", "a judge grade stayed unusable after a retry (redone on the next run)")
        if verdict is RoundVerdict.ACCEPTED:
            # the round first: a run killed in between finishes the example on resume
            await self.write()
            try:
                eng.writer.append_example(make_example(eng, self.doc, rec))
            except Exception as exc:
                raise _End("crashed", records_failed(exc)) from exc
            self.end("accepted", f"round {plan.round_no} passed the gate")
            return rec
        # With every round used the harness may still note what it learnt; a new challenge
        # then ends the document (round budget), and its call, token and time budgets bound it.
        await self.write()
        return rec


def records_failed(exc: BaseException) -> str:
    """The end reason of a document whose records could not be written."""
    return f"the document's records could not be written: {type(exc).__name__}: {exc}"[:2000]


def write_contained(eng: Engine, traj: Trajectory) -> None:
    """Write the finished ``traj``; a failure stays with this document: it ends ``crashed`` with
    the reason, written with every string made valid UTF-8, or, if that fails too, without its
    rounds and events. The run goes on (and writes ``stats.json``) whatever one document held.

    Raises:
        StorageError: the parent's disk or open-file limit failed (:func:`inner.io.environment_error`):
            that is the run's failure, not the document's, and stops the run with one message.
    """
    try:
        eng.writer.write_trajectory(traj)
        return
    except Exception as exc:  # noqa: BLE001 - contained per document
        if (fatal := environment_error(exc)) is not None:
            raise fatal from exc
        reason = records_failed(exc)
        log.error("%s: %s", traj.doc_id, reason)
    traj.status, traj.end_reason, traj.harness_error = "crashed", reason, reason
    try:
        clean = Trajectory.model_validate(sanitize(traj.model_dump(), max_depth=1 << 30))
        eng.writer.write_trajectory(clean)
        return
    except Exception:  # noqa: BLE001
        log.exception("%s: the sanitized trajectory could not be written either", traj.doc_id)
    try:
        eng.writer.write_trajectory(traj.model_copy(update={"rounds": [], "events": []}))
    except Exception:  # noqa: BLE001 - the document stays unfinished on disk: redone by the next run
        log.exception("%s: the trajectory could not be written", traj.doc_id)


def make_example(eng: Engine, doc: Document, rec: RoundRecord) -> Example:
    """The dataset line of an accepted round."""
    ch = rec.challenge
    assert ch is not None and rec.weak_avg is not None and rec.strong_avg is not None and rec.gap is not None
    return Example(
        example_id=example_id(doc.doc_id, ch.question),
        doc_id=doc.doc_id,
        task=eng.cfg.task.name,
        method=eng.cfg.method,
        harness_id=eng.harness_id,
        round=rec.round,
        context=ch.context,
        question=ch.question,
        reference_answer=ch.reference_answer,
        rubric=ch.rubric,
        question_type=ch.question_type,
        verifiable=rec.verifiable,
        weak_scores=rec.weak_scores,
        strong_scores=rec.strong_scores,
        weak_avg=round(rec.weak_avg, 4),
        strong_avg=round(rec.strong_avg, 4),
        gap=round(rec.gap, 4),
    )


async def run_document(eng: Engine, doc: Document, prev: Trajectory | None = None) -> Trajectory:
    """One document in its sandbox; records are on disk before this returns.

    Never raises for harness or LLM failures (they end up in the trajectory's status).

    Raises:
        SandboxError: the sandbox cannot be set up at all (bubblewrap missing).
    """
    if prev is not None:  # an unfinished document of an earlier run: keep its rounds
        traj = prev.model_copy(update={"status": "running", "events": [], "error": None, "harness_error": None,
                                       "end_reason": "", "harness_id": eng.harness_id})  # fmt: skip
        accepted = next((r for r in traj.rounds if r.accepted), None)
        if accepted is not None:  # killed after the accepted round was recorded: finish it
            eng.writer.append_example(make_example(eng, doc, accepted))  # a no-op if already there
            traj.status, traj.end_reason = "accepted", f"round {accepted.round} passed the gate"
            eng.writer.write_trajectory(traj)
            eng.observer.document_finished(traj)
            return traj
    else:
        traj = Trajectory(
            doc_id=doc.doc_id, doc_path=doc.path, title=doc.title, method=eng.cfg.method, harness_id=eng.harness_id
        )
    await eng.writer.write_trajectory_off_loop(traj)
    traj = await DocumentSession(eng, doc, traj).run()
    eng.observer.document_finished(traj)
    return traj


async def run_documents(
    eng: Engine, docs: Iterable[Document], on_finished: Callable[[Document, Trajectory], None] | None = None
) -> None:
    """Run every document not already finished in the run directory, concurrently.

    ``inner.max_concurrent_documents`` workers take the documents in order from one shared
    iterator. Each document's final trajectory is on disk (``trajectories/<doc>.json``) and is
    handed to ``on_finished`` (once per document: loaded from disk for those finished earlier);
    nothing of it is held here, so memory does not grow with finished documents (issue 10;
    ``experiments/bench/memory.py``).

    Args:
        docs: the documents (any iterable; consumed once).
        on_finished: ``f(document, trajectory)``, called as each document ends, in completion
            order (e.g. a :class:`~inner.engine.stats.StatsAccumulator`'s ``add``).

    Raises:
        SandboxError: the sandbox cannot be set up at all (the other workers are cancelled).
    """
    pending = iter(docs)

    async def worker() -> None:
        for d in pending:  # one shared iterator: each document goes to exactly one worker
            prev = eng.writer.load_trajectory(d.doc_id)
            traj = prev if prev is not None and prev.finished else await run_document(eng, d, prev)
            if on_finished is not None:
                on_finished(d, traj)

    tasks: list[asyncio.Task[None]] = []
    try:
        await eng.open_sandboxes()
        tasks = [asyncio.create_task(worker()) for _ in range(max(1, eng.cfg.inner.max_concurrent_documents))]
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        await eng.close_sandboxes()
