"""The inner loop: Agentic Self-Instruct over a corpus (and the CoT Self-Instruct baseline).

One document::

    round r = 1..max_rounds
      harness.propose(doc, feedback)   -> Challenge (or INVALID_CHALLENGE with raw text kept)
      harness.verify(doc, challenge)   -> QV verdict (FAILED_QV skips the solvers)
      weak solver x n -> judge         -> weak scores; gate(weak) fails -> TOO_EASY / WEAK_ZERO
      strong solver x n -> judge       -> strong scores; gate -> ACCEPTED | FAILED_STRONG | TOO_EASY
      harness.feedback(history)        -> instructions for the next round
      trajectories/<doc>.json rewritten before the next round starts

Documents run concurrently (``inner.max_concurrent_documents``); the endpoints'
``max_in_flight`` bounds the requests. A harness exception is a HARNESS_ERROR round; an LLM
request that fails after retries marks the document ``error`` (redone on the next run);
neither stops the other documents.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from inner.config import GenerateConfig
from inner.documents import Document
from inner.errors import LLMCallError
from inner.evaluator import Evaluator, normalize_answer
from inner.gate import check_majority, check_majority_weak, check_rubric, check_weak
from inner.harness import Harness, HarnessContext, HarnessLLM
from inner.llm.client import JSONResult, LLMClient, UsageMeter, track_usage
from inner.records import (
    Challenge,
    Example,
    FailureMode,
    QVVerdict,
    RoleUsageRecord,
    RoundRecord,
    RunWriter,
    Trajectory,
    example_id,
)

log = logging.getLogger(__name__)

ProposeFn = Callable[[HarnessContext, "str | None"], Awaitable[Any]]


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
        harness: the loaded harness.
        writer: the run directory's record writer.
        observer: progress callbacks.
    """

    cfg: GenerateConfig
    client: LLMClient
    harness: Harness
    writer: RunWriter
    observer: LoopObserver = field(default_factory=LoopObserver)

    def __post_init__(self) -> None:
        self.evaluator = Evaluator(self.client, inner=self.cfg.inner, llm=self.cfg.llm)


def _harness_error(stage: str) -> str:
    return f"{stage}: " + traceback.format_exc(limit=8)


def _as_proposal(result: Any) -> tuple[Challenge | None, list[str], str | None]:
    if isinstance(result, Challenge):
        return result, [], None
    if isinstance(result, JSONResult):
        return result.value, result.raw, result.error
    raise TypeError(f"propose returned {type(result).__name__}; expected Challenge or JSONResult[Challenge]")


async def _evaluate(eng: Engine, doc: Document, rec: RoundRecord) -> None:
    """Run the frozen evaluator and the gate on ``rec.challenge``; fills ``rec`` in place."""
    ch = rec.challenge
    assert ch is not None and rec.qv is not None
    task = eng.cfg.task
    rec.verifiable = task.verifiable == "always" or (task.verifiable == "auto" and ch.answer_is_exact)
    if not rec.qv.passed and eng.cfg.inner.skip_solvers_on_qv_fail:
        rec.failure_mode, rec.reasons = FailureMode.FAILED_QV, [rec.qv.reason or "rejected"]
        return
    ev = eng.evaluator
    rec.weak = await ev.run_side("weak", doc, ch, verifiable=rec.verifiable)
    rec.weak_scores = [a.score for a in rec.weak if a.score is not None]
    if not rec.weak_scores:
        rec.failure_mode, rec.reasons = (
            FailureMode.JUDGE_ERROR,
            ["no usable judge grade for the weak solver"],
        )
        return
    rec.weak_avg = fmean(rec.weak_scores)
    ref = normalize_answer(ch.reference_answer)
    weak_fail = (
        check_majority_weak([a.extracted for a in rec.weak], ref)
        if rec.verifiable
        else check_weak(rec.weak_scores, eng.cfg.gate)
    )
    if weak_fail is not None:  # weak-first short-circuit: the strong solver is skipped
        rec.failure_mode, rec.reasons = weak_fail.mode, weak_fail.reasons
        return
    rec.strong = await ev.run_side("strong", doc, ch, verifiable=rec.verifiable)
    rec.strong_scores = [a.score for a in rec.strong if a.score is not None]
    if not rec.strong_scores:
        rec.failure_mode, rec.reasons = (
            FailureMode.JUDGE_ERROR,
            ["no usable judge grade for the strong solver"],
        )
        return
    rec.strong_avg = fmean(rec.strong_scores)
    rec.gap = rec.strong_avg - rec.weak_avg
    if rec.verifiable:
        decision = check_majority(
            [a.extracted for a in rec.weak],
            [a.extracted for a in rec.strong],
            ref,
            qv_passed=rec.qv.passed,
        )
    else:
        decision = check_rubric(rec.weak_scores, rec.strong_scores, qv_passed=rec.qv.passed, cfg=eng.cfg.gate)
    rec.failure_mode, rec.reasons = decision.mode, decision.reasons


async def _round_body(
    eng: Engine, ctx: HarnessContext, propose: ProposeFn, feedback: str | None, round_no: int
) -> RoundRecord:
    try:
        challenge, raw, error = _as_proposal(await propose(ctx, feedback))
    except Exception as exc:
        if _is_transport(exc):
            raise
        return RoundRecord(
            round=round_no,
            failure_mode=FailureMode.HARNESS_ERROR,
            harness_error=_harness_error("propose"),
        )
    rec = RoundRecord(
        round=round_no, challenge=challenge, challenger_raw=raw, challenger_error=error,
        failure_mode=FailureMode.INVALID_CHALLENGE,
    )  # fmt: skip
    if challenge is None:
        rec.reasons = [error or "challenger output unusable"]
        return rec
    try:
        qv = await eng.harness.verify(ctx, challenge)
        if not isinstance(qv, QVVerdict):
            raise TypeError(f"verify returned {type(qv).__name__}; expected QVVerdict")
    except Exception as exc:
        if _is_transport(exc):
            raise
        rec.failure_mode, rec.harness_error = FailureMode.HARNESS_ERROR, _harness_error("verify")
        return rec
    rec.qv = qv
    await _evaluate(eng, ctx.doc, rec)
    return rec


def _is_transport(exc: BaseException) -> bool:
    """An LLM request that failed after retries (or a cancellation): the document is marked
    ``error`` and redone on the next run, rather than recorded as a harness failure."""
    return isinstance(exc, LLMCallError | asyncio.CancelledError)


async def play_round(
    eng: Engine,
    ctx: HarnessContext,
    *,
    propose: ProposeFn,
    feedback: str | None,
    history: list[RoundRecord],
    want_feedback: bool,
) -> RoundRecord:
    """One round on ``ctx.doc``, with its own usage accounting.

    Args:
        propose: the harness's ``propose`` (or the CoT baseline's).
        feedback: the previous round's feedback (``None`` in round 1).
        history: earlier rounds of this document (this round is appended for ``feedback``).
        want_feedback: ask the harness for feedback afterwards (not after the last round, not
            after acceptance).

    Raises:
        LLMCallError: a request failed after retries (the caller marks the document ``error``).
    """
    meter = UsageMeter()
    t0 = time.perf_counter()
    with track_usage(meter):
        rec = await _round_body(eng, ctx, propose, feedback, ctx.round)
        if want_feedback and rec.failure_mode is not FailureMode.ACCEPTED:
            try:
                rec.feedback = await eng.harness.feedback(ctx, [*history, rec])
            except Exception as exc:
                if _is_transport(exc):
                    raise
                rec.harness_error = (rec.harness_error or "") + _harness_error("feedback")
    rec.usage = {role: RoleUsageRecord(**vars(u)) for role, u in meter.roles.items()}
    rec.wall_s = round(time.perf_counter() - t0, 3)
    return rec


def make_example(eng: Engine, doc: Document, rec: RoundRecord) -> Example:
    """The dataset line of an accepted round."""
    ch = rec.challenge
    assert ch is not None and rec.weak_avg is not None and rec.strong_avg is not None and rec.gap is not None
    return Example(
        example_id=example_id(doc.doc_id, ch.question),
        doc_id=doc.doc_id,
        task=eng.cfg.task.name,
        method=eng.cfg.method,
        harness_id=eng.harness.harness_id,
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


async def run_document(eng: Engine, doc: Document) -> Trajectory:
    """All rounds of one document; records are on disk before this returns (and after each
    round). Never raises for LLM or harness failures: they end up in the trajectory."""
    from inner.baselines import cot_propose

    cfg = eng.cfg
    cot = cfg.method == "cot_self_instruct"
    propose: ProposeFn = cot_propose if cot else eng.harness.propose
    max_rounds = 1 if cot else cfg.inner.max_rounds
    traj = Trajectory(
        doc_id=doc.doc_id,
        doc_path=doc.path,
        title=doc.title,
        method=cfg.method,
        harness_id=eng.harness.harness_id,
    )
    feedback: str | None = None
    try:
        for r in range(1, max_rounds + 1):
            eng.observer.round_started(doc.doc_id, r)
            ctx = HarnessContext(
                doc=doc,
                domain=cfg.task.domain,
                round=r,
                max_rounds=max_rounds,
                llm=HarnessLLM(eng.client),
            )
            rec = await play_round(
                eng,
                ctx,
                propose=propose,
                feedback=feedback,
                history=traj.rounds,
                want_feedback=r < max_rounds,
            )
            traj.rounds.append(rec)
            if rec.failure_mode is FailureMode.ACCEPTED:
                eng.writer.append_example(make_example(eng, doc, rec))
                traj.status = "accepted"
                break
            feedback = rec.feedback
            eng.writer.write_trajectory(traj)
        else:
            traj.status = "exhausted"
    except Exception as exc:  # LLMCallError after retries, or a bug: keep the rounds done so far
        log.error("document %s failed: %s", doc.doc_id, exc)
        traj.status, traj.error = "error", f"{type(exc).__name__}: {exc}"
    eng.writer.write_trajectory(traj)
    eng.observer.document_finished(traj)
    return traj


async def run_documents(eng: Engine, docs: list[Document]) -> list[Trajectory]:
    """Run every document not already finished in the run directory, concurrently.

    Returns:
        The trajectories of all ``docs`` (loaded from disk for those finished earlier).
    """
    results: dict[str, Trajectory] = {}
    todo = []
    for d in docs:
        prev = eng.writer.load_trajectory(d.doc_id)
        if prev is not None and prev.finished:
            results[d.doc_id] = prev
        else:
            todo.append(d)
    sem = asyncio.Semaphore(eng.cfg.inner.max_concurrent_documents)

    async def one(d: Document) -> None:
        async with sem:
            results[d.doc_id] = await run_document(eng, d)

    await asyncio.gather(*(one(d) for d in todo))
    return [results[d.doc_id] for d in docs]
