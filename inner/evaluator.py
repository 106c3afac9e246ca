"""The frozen evaluator: weak and strong solvers and the rubric judge.

It lives in ``inner/`` and never in a harness, so no mutation of a harness can weaken the weak
solver, strengthen the judge's leniency or loosen the gate (the reward hack reported for the
original Autodata system; DESIGN.md, "Evaluator integrity").

- A solver answers the challenge's context + question; closed-book solvers never see the
  document, open-book solvers get it first in the prompt (so attempts share a KV prefix).
- The judge grades one answer per rubric criterion (1 met, 0.5 partly, 0 not) and never sees
  the reference answer; the attempt's score is the weight-averaged criterion score in [0, 1].
- In verifiable mode there is no judge: the final answer is extracted, normalized and
  compared with the normalized reference (score 1 or 0), and the gate votes by majority.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import conlist, create_model

from inner.config import InnerConfig, LLMConfig
from inner.documents import Document
from inner.llm.client import LLMClient
from inner.records import Challenge, CriterionGrade, JudgeOutput, RubricItem, SolverAttempt
from inner.scoring import rubric_score
from inner.templates import INNER_PROMPTS, render

_FINAL = re.compile(r"final answer\s*(?:is)?\s*[:：]\s*(.+)", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")


def extract_final_answer(answer: str) -> str:
    """The final answer of a solver reply: the last ``Final answer: X`` line, else the last
    ``\\boxed{X}``, else the last non-empty line."""
    finals = _FINAL.findall(answer)
    if finals:
        return finals[-1].strip()
    boxed = _BOXED.findall(answer)
    if boxed:
        return boxed[-1].strip()
    lines = [ln.strip() for ln in answer.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def normalize_answer(text: str) -> str:
    """Normalized form for exact-match voting.

    Lower-case; unwrap ``\\boxed{}``, ``\\text{}``; drop ``$``, ``\\(``, ``\\)``, surrounding
    quotes, brackets and trailing punctuation; collapse whitespace; numbers are canonical
    (``1,000`` -> ``1000``, ``0.50`` -> ``0.5``, ``2.0`` -> ``2``).
    """
    t = text.strip()
    boxed = _BOXED.search(t)
    if boxed:
        t = boxed.group(1)
    t = _TEXT.sub(r"\1", t)
    t = t.replace("$", "").replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    t = t.lower().strip().strip("\"'`*").rstrip(".;,!").strip()
    while len(t) >= 2 and (t[0], t[-1]) in (("(", ")"), ("[", "]"), ("{", "}")):
        t = t[1:-1].strip()
    t = re.sub(r"\s+", " ", t)
    num = t.replace(",", "") if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", t) else t
    try:
        value = float(num)
    except ValueError:
        return t
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


@dataclass
class JudgeVerdict:
    """The judge's grading of one answer.

    Attributes:
        score: :func:`inner.scoring.rubric_score` in [0, 1]; ``None`` if the judge's output was
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
    """The frozen judge prompt (``inner/prompts/judge.md``): context, question, rubric criteria
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
) -> JudgeVerdict:
    """Grade ``answer`` against ``rubric`` with the frozen judge and score it.

    Shared by the inner evaluator and the training rewards (:mod:`train.rewards`), so an
    example is graded the same way when it is accepted and when a policy is trained on it.

    Args:
        client: the project's LLM client (role ``judge``).
        partial_credit: allow 0.5 verdicts (default binary: 0 when in doubt, the paper's judge).
        retries: further attempts (new sample index) when the output is unusable.

    Raises:
        LLMCallError: the request failed after the client's retries.
    """
    schema_model = judge_output_model(tuple(c.id for c in rubric), partial_credit)
    msgs = judge_messages(context=context, question=question, rubric=rubric, answer=answer)
    raws: list[str] = []
    error = None
    for attempt in range(retries + 1):
        res = await client.complete_json("judge", msgs, schema_model, sample_index=attempt)
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


class Evaluator:
    """Runs solvers and the judge for one challenge.

    Args:
        client: the shared LLM client.
        inner: attempts per side and open/closed book.
        llm: the roles' document budgets (``doc_chars``).
    """

    def __init__(self, client: LLMClient, *, inner: InnerConfig, llm: LLMConfig) -> None:
        self.client = client
        self.inner = inner
        self.llm = llm

    def solver_messages(self, side: str, doc: Document, challenge: Challenge) -> list[dict[str, str]]:
        """Prompt of the ``weak`` or ``strong`` solver (document only if that side is open-book)."""
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

    def judge_messages(self, challenge: Challenge, answer: str) -> list[dict[str, str]]:
        """Prompt of the judge: context, question, rubric criteria and the answer; never the
        reference answer."""
        rubric = "\n".join(f"- id {c.id}: {c.criterion}" for c in challenge.rubric)
        return render(
            INNER_PROMPTS / "judge.md",
            context=challenge.context,
            question=challenge.question,
            rubric=rubric,
            answer=answer,
        )

    async def attempt(
        self, side: str, doc: Document, challenge: Challenge, index: int, *, verifiable: bool
    ) -> SolverAttempt:
        """One solver answer, graded. ``index`` is the attempt's sample index.

        Raises:
            LLMCallError: a solver or judge request failed after retries.
        """
        comp = await self.client.complete(
            f"{side}_solver", self.solver_messages(side, doc, challenge), sample_index=index
        )
        answer = comp.text
        if verifiable:
            extracted = normalize_answer(extract_final_answer(answer))
            ok = extracted == normalize_answer(challenge.reference_answer)
            return SolverAttempt(index=index, answer=answer, extracted=extracted, score=1.0 if ok else 0.0)
        schema_model = judge_output_model(tuple(c.id for c in challenge.rubric))
        res = await self.client.complete_json("judge", self.judge_messages(challenge, answer), schema_model)
        if res.value is None:
            return SolverAttempt(
                index=index,
                answer=answer,
                judge_raw=res.raw,
                error=f"judge output unusable: {res.error}",
            )
        grades = res.value.grades
        return SolverAttempt(
            index=index,
            answer=answer,
            grades=grades,
            score=weighted_score(challenge, grades),
            judge_raw=res.raw,
        )

    async def run_side(
        self, side: str, doc: Document, challenge: Challenge, *, verifiable: bool
    ) -> list[SolverAttempt]:
        """All attempts of one side (``n_weak`` or ``n_strong``), concurrently."""
        n = self.inner.n_strong if side == "strong" else self.inner.n_weak
        return list(
            await asyncio.gather(*(self.attempt(side, doc, challenge, i, verifiable=verifiable) for i in range(n)))
        )
