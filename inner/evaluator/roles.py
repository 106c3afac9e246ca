"""The frozen evaluator: quality check, rubric policy, weak and strong solvers, judge, gate.

It lives in ``inner/`` and runs in the parent process, never in a harness's sandbox, so no
mutation of a harness can weaken the weak solver, make the judge lenient, pass its own quality
check or loosen the gate (the reward hack reported for the original Autodata system; see
``ARCHITECTURE.md``, "Evaluator integrity").

- The quality check (``inner/evaluator/prompts/quality_verifier.md``, role ``quality_verifier``) rejects
  context leaks, generic and multi-part questions, and rubrics that do not cover the answer.
- A solver answers the challenge's context + question; closed-book solvers never see the
  document, open-book solvers get it first in the prompt (so attempts share a KV prefix).
  Solvers never see the reference answer or the rubric.
- The judge gives each criterion a binary verdict (0 when in doubt; partial credit by config)
  and never sees the reference answer; the score is :func:`inner.evaluator.scoring.rubric_score`.
- Verifiable rounds (the task's rule, :meth:`Evaluator.is_verifiable`) have no judge: each
  final answer is checked for equivalence with the reference (math-verify, else normalized
  match) and the gate counts matches (:func:`inner.evaluator.gate.check_verifiable`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Literal

from pydantic import BaseModel, conlist, create_model

from inner.config import GenerateConfig
from inner.engine.documents import Document
from inner.engine.records import (
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
from inner.evaluator import INNER_PROMPTS
from inner.evaluator.answers import answers_equivalent, extract_final_answer, is_exact_reference, normalize_answer
from inner.evaluator.gate import check_rubric, check_verifiable, check_verifiable_weak, check_weak
from inner.evaluator.scoring import check_challenge_limits, check_rubric_policy, rubric_score
from inner.llm.cache import sample_index
from inner.llm.client import LLMClient, UsageMeter, track_usage
from inner.sdk.contract import challenge_key
from inner.sdk.errors import LLMCallError
from inner.sdk.templates import render

#: HTTP statuses that mean "this request is malformed" (a prompt over the context window, a body
#: too large, an unprocessable entity). Every evaluator prompt is the frozen template, the bounded
#: document excerpt and the challenge, so on an evaluator role such a status is caused by the
#: challenge: a failed round (INVALID_CHALLENGE), never an infrastructure error (which would leave
#: a failed document out of the pass rate). The same statuses on a harness role are its refusal
#: (:mod:`inner.engine.loop`).
CHALLENGE_FAULT_STATUSES = (400, 413, 422)


@dataclass
class JudgeVerdict:
    """The judge's grading of one answer.

    Attributes:
        score: :func:`inner.evaluator.scoring.rubric_score` in [0, 1]; ``None`` if the judge's output was
            unusable (after one repair and one retry).
        grades: one verdict per criterion (pitfalls: 1 = the answer commits it).
        raw: the judge's raw replies.
        error: why the output was unusable.
    """

    score: float | None
    grades: list[CriterionGrade]
    raw: list[str]
    error: str | None = None


def judge_messages(*, context: str, question: str, rubric: Sequence[RubricItem], answer: str) -> list[dict[str, str]]:
    """The frozen judge prompt (``inner/evaluator/prompts/judge.md``): context, question, rubric criteria
    (pitfalls marked) and the answer; never the reference answer."""
    lines = []
    for c in rubric:
        kind = "PITFALL (1 = the answer makes this mistake)" if c.weight < 0 else "requirement"
        lines.append(f"- id {c.id} [{kind}]: {c.criterion}")
    return render(
        INNER_PROMPTS / "judge.md",
        context=context,
        question=question,
        rubric="\n".join(lines),
        answer=answer,
    )


async def judge_answer(
    client: LLMClient,
    *,
    context: str,
    question: str,
    rubric: Sequence[RubricItem],
    answer: str,
    partial_credit: bool = False,
    retries: int = 1,
    sample_offset: int = 0,
) -> JudgeVerdict:
    """Grade ``answer`` against ``rubric`` with the frozen judge and score it.

    Shared by the inner evaluator and the training rewards (:mod:`train.rewards`), so an
    example is graded the same way when it is accepted and when a policy is trained on it.

    Args:
        client: the project's LLM client (role ``judge``).
        partial_credit: allow 0.5 verdicts (default binary: 0 when in doubt, the paper's judge).
        retries: further attempts (new sample index) when the output is unusable.
        sample_offset: first sample index of the judge's calls (a redone round draws new
            samples, deterministically, so a resumed run replays them from the cache).

    Raises:
        LLMCallError: the request failed after the client's retries.
    """
    schema_model = judge_output_model(tuple(c.id for c in rubric), partial_credit)
    msgs = judge_messages(context=context, question=question, rubric=rubric, answer=answer)
    raws: list[str] = []
    error = None
    for attempt in range(retries + 1):
        res = await client.complete_json("judge", msgs, schema_model, sample_index=sample_offset + attempt)
        raws.extend(res.raw)
        if res.value is not None:
            verdicts = {g.id: _binary(g.score, partial_credit) for g in res.value.grades}
            grades = [CriterionGrade(id=k, score=v) for k, v in verdicts.items()]
            return JudgeVerdict(rubric_score(rubric, verdicts), grades, raws)
        error = res.error
    return JudgeVerdict(None, [], raws, f"judge output unusable: {error}")


def _binary(score: float, partial_credit: bool) -> float:
    """Binary verdicts: anything short of 1 is 0 (0 when in doubt); with partial credit,
    verdicts snap to 0, 0.5 or 1."""
    if partial_credit:
        return round(score * 2) / 2
    return 1.0 if score >= 1.0 - 1e-9 else 0.0


@functools.lru_cache(maxsize=256)
def judge_output_model(ids: tuple[str, ...], partial_credit: bool = False) -> type[JudgeOutput]:
    """A :class:`JudgeOutput` whose schema demands exactly one grade per rubric id (ids as an
    enum, ``minItems = maxItems = len(ids)``) and verdicts in {0, 1} (or {0, 0.5, 1} with
    partial credit), so a grammar-constrained judge cannot skip a criterion; cached."""
    values = (0, 0.5, 1) if partial_credit else (0, 1)
    grade = create_model(
        "Grade",
        __base__=CriterionGrade,
        id=(Literal[ids], ...),  # type: ignore[valid-type]
        score=(Literal[values], ...),  # type: ignore[valid-type]
    )
    return create_model(
        "JudgeOutput",
        __base__=JudgeOutput,
        grades=(conlist(grade, min_length=len(ids), max_length=len(ids)), ...),
    )


class QVChecks(BaseModel):
    """The frozen quality check's four checks (the paper's quality verifier) and its reason."""

    context_leak: bool
    generic: bool
    multi_part: bool
    rubric_covers_answer: bool
    reason: str = ""


class Evaluator:
    """The frozen evaluator of one challenge: quality check, rubric policy, weak and strong
    solvers, judge, gate. Runs in the parent process only.

    Order (weak first, strong only if the weak side passes; arXiv 2606.25996)::

        challenge limits   -> INVALID_CHALLENGE (no LLM call)
        rubric policy      -> INVALID_CHALLENGE (no LLM call)
        quality check      -> FAILED_QV (solvers skipped unless inner.skip_solvers_on_qv_fail=false)
        weak x n -> judge  -> TOO_EASY | WEAK_ZERO, or WEAK_PASSED when side="weak"
        strong x n -> judge -> ACCEPTED | FAILED_STRONG | TOO_EASY | FAILED_QV

    Args:
        client: the shared LLM client.
        cfg: the run config (inner, llm roles, gate, rubric policy, task).
        replicate: the evaluation's replicate index; every sample index (quality check, solver
            attempts, judge) derives from it (:func:`inner.llm.cache.sample_index`), so replicate
            ``r > 0`` draws fresh samples and replicate 0 is the evaluation as it always was.
    """

    def __init__(self, client: LLMClient, cfg: GenerateConfig, *, replicate: int = 0) -> None:
        self.client = client
        self.cfg = cfg
        self.replicate = replicate
        self.inner = cfg.inner
        self.llm = cfg.llm

    # -- prompts ------------------------------------------------------------------------------
    def solver_messages(self, side: str, doc: Document, challenge: Challenge) -> list[dict[str, str]]:
        """Prompt of the ``weak`` or ``strong`` solver (the document only if that side is
        open-book, and first, so attempts share a cached prompt prefix)."""
        open_book = self.inner.strong_open_book if side == "strong" else self.inner.weak_open_book
        block = ""
        if open_book:
            budget = self.llm.role(f"{side}_solver").doc_chars
            block = f"## Source document\n{doc.excerpt(budget)}\n\n"
        return render(
            INNER_PROMPTS / "solver.md",
            document_block=block,
            context=challenge.context,
            question=challenge.question,
        )

    def quality_messages(self, doc: Document, challenge: Challenge) -> list[dict[str, str]]:
        """Prompt of the frozen quality check (``inner/evaluator/prompts/quality_verifier.md``)."""
        rubric = "\n".join(
            f"- {c.id} (weight {c.weight}{', pitfall' if c.weight < 0 else ''}): {c.criterion}"
            for c in challenge.rubric
        )
        return render(
            INNER_PROMPTS / "quality_verifier.md",
            domain=self.cfg.task.domain,
            document=doc.excerpt(self.llm.role("quality_verifier").doc_chars),
            context=challenge.context,
            question=challenge.question,
            reference_answer=challenge.reference_answer,
            rubric=rubric,
        )

    # -- steps --------------------------------------------------------------------------------
    async def quality_check(self, doc: Document, challenge: Challenge) -> QVVerdict:
        """The frozen quality check: passed only if no check fails; an unusable reply
        (after one repair) is a rejection with the reason.

        Raises:
            LLMCallError: the request failed after retries.
        """
        res = await self.client.complete_json(
            "quality_verifier", self.quality_messages(doc, challenge), QVChecks,
            sample_index=sample_index(replicate=self.replicate, stream="quality"),
        )  # fmt: skip
        if res.value is None:
            return QVVerdict(passed=False, reason=f"quality check output unusable: {res.error}")
        v = res.value
        problems = [
            name
            for name, bad in (
                ("the context leaks the answer", v.context_leak),
                ("the question is generic (answerable without the document)", v.generic),
                ("the question has several parts", v.multi_part),
                ("the rubric does not cover the reference answer", not v.rubric_covers_answer),
            )
            if bad
        ]
        if not problems:
            return QVVerdict(passed=True, reason=v.reason)
        return QVVerdict(passed=False, reason="; ".join(problems) + (f". {v.reason}" if v.reason else ""))

    def is_verifiable(self, challenge: Challenge) -> bool:
        """The task's rule: ``never``, ``always``, or ``auto`` = the frozen
        :func:`inner.evaluator.answers.is_exact_reference` on the reference answer."""
        mode = self.cfg.task.verifiable
        return mode == "always" or (mode == "auto" and is_exact_reference(challenge.reference_answer))

    async def attempt(
        self, side: str, doc: Document, challenge: Challenge, index: int, *, verifiable: bool, judge_offset: int = 0
    ) -> SolverAttempt:
        """One solver answer, graded. ``index`` is the attempt's sample index (its own seed).

        Rubric rounds: the judge grades every criterion; an unusable grade is retried once
        (``judge_offset`` shifts the judge's sample indices when a round is redone).

        Raises:
            LLMCallError: a solver or judge request failed after retries.
        """
        # each side has its own seeds: with one model in one mode, strong attempt i must not
        # replay weak attempt i on a seed-deterministic server
        comp = await self.client.complete(
            f"{side}_solver", self.solver_messages(side, doc, challenge),
            sample_index=sample_index(replicate=self.replicate, stream=side, index=index),
        )  # fmt: skip
        answer = comp.text
        if verifiable:
            final = extract_final_answer(answer)
            ok = answers_equivalent(final, challenge.reference_answer)
            return SolverAttempt(
                index=index, answer=answer, extracted=normalize_answer(final), score=1.0 if ok else 0.0
            )
        verdict = await judge_answer(
            self.client,
            context=challenge.context,
            question=challenge.question,
            rubric=challenge.rubric,
            answer=answer,
            partial_credit=self.cfg.rubric.partial_credit,
            sample_offset=sample_index(replicate=self.replicate, stream="judge", index=judge_offset + 2 * index),
        )
        return SolverAttempt(
            index=index, answer=answer, grades=verdict.grades, score=verdict.score, judge_raw=verdict.raw,
            error=verdict.error,
        )  # fmt: skip

    async def run_side(
        self, side: str, doc: Document, challenge: Challenge, *, verifiable: bool, judge_offset: int = 0
    ) -> list[SolverAttempt]:
        """All attempts of one side (``n_weak``/``n_strong``, or ``n_verifiable``), concurrently.

        Raises:
            LLMCallError: an attempt's call failed; its sibling attempts are cancelled first (no
                call of a failed round is left running).
        """
        if verifiable:
            n = self.inner.n_verifiable
        else:
            n = self.inner.n_strong if side == "strong" else self.inner.n_weak
        tasks = [
            asyncio.create_task(self.attempt(side, doc, challenge, i, verifiable=verifiable, judge_offset=judge_offset))
            for i in range(n)
        ]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # one attempt failed (or the round was cancelled): stop its siblings' calls too
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- one round ----------------------------------------------------------------------------
    async def evaluate(
        self,
        doc: Document,
        challenge: Challenge,
        *,
        round_no: int,
        side: str = "both",
        prior: RoundRecord | None = None,
        judge_offset: int = 0,
    ) -> RoundRecord:
        """Evaluate ``challenge`` on ``doc`` and decide with the gate.

        Args:
            round_no: the round number to record.
            side: ``weak`` (stop after the weak side; WEAK_PASSED if it passes) or ``both``.
            prior: this challenge's earlier ``side="weak"`` round that passed; its quality
                check and weak attempts are reused and only the strong side runs.
            judge_offset: shifts judge sample indices (a round redone after JUDGE_ERROR).

        Returns:
            The round record (failure_mode set; JUDGE_ERROR when an attempt stayed ungraded).

        Raises:
            LLMCallError: a request failed after retries (infrastructure, not the harness); a
                4xx of :data:`CHALLENGE_FAULT_STATUSES` is the challenge's INVALID_CHALLENGE instead.
        """
        t0 = time.perf_counter()
        if prior is not None:
            rec = prior.model_copy(deep=True)
            rec.side = side
        else:
            rec = RoundRecord(round=round_no, key=challenge_key(challenge), side=side, challenge=challenge,
                              failure_mode=FailureMode.INVALID_CHALLENGE)  # fmt: skip
        meter = UsageMeter()
        with track_usage(meter):
            try:
                await self._decide(doc, challenge, rec, side=side, reuse=prior is not None, judge_offset=judge_offset)
            except LLMCallError as exc:
                if exc.status not in CHALLENGE_FAULT_STATUSES:
                    raise
                rec.failure_mode = FailureMode.INVALID_CHALLENGE
                rec.reasons = [
                    f"the endpoint rejected the {exc.role} request for this challenge (HTTP {exc.status}): "
                    f"the challenge is malformed or too large for the evaluator; a failed round ({exc.cause})"
                ]
        usage = {role: RoleUsageRecord(**vars(u)) for role, u in meter.roles.items()}
        for role, u in usage.items():
            old = rec.usage.get(role)
            rec.usage[role] = (
                u
                if old is None
                else RoleUsageRecord(**{k: getattr(old, k) + getattr(u, k) for k in type(u).model_fields})
            )
        rec.wall_s = round(rec.wall_s + time.perf_counter() - t0, 3)
        return rec

    async def _decide(
        self, doc: Document, ch: Challenge, rec: RoundRecord, *, side: str, reuse: bool, judge_offset: int
    ) -> None:
        gate = self.cfg.gate
        if not reuse:
            problem = check_challenge_limits(ch) or check_rubric_policy(ch.rubric, self.cfg.rubric)
            if problem is not None:
                rec.failure_mode, rec.reasons = FailureMode.INVALID_CHALLENGE, [problem]
                return
            rec.qv = await self.quality_check(doc, ch)
            if not rec.qv.passed and self.inner.skip_solvers_on_qv_fail:
                rec.failure_mode, rec.reasons = FailureMode.FAILED_QV, [rec.qv.reason or "rejected"]
                return
            rec.verifiable = self.is_verifiable(ch)
            rec.weak = await self.run_side("weak", doc, ch, verifiable=rec.verifiable, judge_offset=judge_offset)
            if any(a.score is None for a in rec.weak):
                rec.failure_mode, rec.reasons = FailureMode.JUDGE_ERROR, ["a weak attempt has no usable judge grade"]
                return
            rec.weak_scores = [a.score for a in rec.weak if a.score is not None]
            rec.weak_avg = round(fmean(rec.weak_scores), 4)
            weak_fail = (
                check_verifiable_weak([s == 1.0 for s in rec.weak_scores], gate)
                if rec.verifiable
                else check_weak(rec.weak_scores, gate)
            )
            if weak_fail is not None:  # weak-first short-circuit: the strong solver is skipped
                rec.failure_mode, rec.reasons = weak_fail.mode, weak_fail.reasons
                return
        assert rec.qv is not None
        if side == "weak":
            rec.failure_mode, rec.reasons = FailureMode.WEAK_PASSED, ["the weak side passes the gate"]
            return
        rec.strong = await self.run_side("strong", doc, ch, verifiable=rec.verifiable, judge_offset=judge_offset)
        if any(a.score is None for a in rec.strong):
            rec.failure_mode, rec.reasons = FailureMode.JUDGE_ERROR, ["a strong attempt has no usable judge grade"]
            return
        rec.strong_scores = [a.score for a in rec.strong if a.score is not None]
        rec.strong_avg = round(fmean(rec.strong_scores), 4)
        rec.gap = round(rec.strong_avg - (rec.weak_avg or 0.0), 4)
        if rec.verifiable:
            decision = check_verifiable(
                [s == 1.0 for s in rec.weak_scores],
                [s == 1.0 for s in rec.strong_scores],
                qv_passed=rec.qv.passed,
                cfg=gate,
            )
        else:
            decision = check_rubric(rec.weak_scores, rec.strong_scores, qv_passed=rec.qv.passed, cfg=gate)
        rec.failure_mode, rec.reasons = decision.mode, decision.reasons
