"""Baseline harness: the published Autodata workflow for Agentic Self-Instruct.

- ``propose``: the challenger writes {context, question, reference_answer, rubric
  [{id, criterion, weight 1..7}], question_type, answer_is_exact} from the document; the
  context describes the problem setting, never the solution; the question is atomic and
  specific to the paper (``prompts/challenger.md``).
- ``verify``: the quality verifier rejects context leaks, generic questions, multi-part
  questions and rubrics that do not cover the reference answer, with a reason
  (``prompts/quality_verifier.md``).
- ``feedback``: all earlier failures grouped by mode (TOO EASY with the weak average, FAILED ON
  STRONG with weak/strong averages and gap, FAILED QUALITY CHECK with the QV reason), a short
  diagnosis by the main agent (``prompts/main_agent.md``), and the instruction to write an
  entirely new question from a different angle.

The contract is documented in :mod:`inner.harness`. The meta loop mutates copies of this
directory; keep everything a mutation may need to change inside it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from inner.harness import HarnessContext
from inner.llm.client import JSONResult
from inner.records import Challenge, FailureMode, QVVerdict, RoundRecord
from inner.templates import render

PROMPTS = Path(__file__).parent / "prompts"

# Ask the main agent for a diagnosis on top of the grouped failure summary.
USE_MAIN_AGENT = True


class QVChecks(BaseModel):
    """The quality verifier's four checks and its reason."""

    context_leak: bool
    generic: bool
    multi_part: bool
    rubric_covers_answer: bool
    reason: str = ""


async def propose(ctx: HarnessContext, feedback: str | None) -> JSONResult[Challenge]:
    """Challenger: one challenge from the document (and the feedback, after round 1)."""
    block = f"## Feedback on your earlier attempts\n{feedback}\n" if feedback else "Write the example now."
    messages = render(
        PROMPTS / "challenger.md",
        domain=ctx.domain,
        document=ctx.document("challenger"),
        feedback_block=block,
    )
    return await ctx.llm.complete_json("challenger", messages, Challenge)


def rubric_text(challenge: Challenge) -> str:
    return "\n".join(f"- {c.id} (weight {c.weight}): {c.criterion}" for c in challenge.rubric)


async def verify(ctx: HarnessContext, challenge: Challenge) -> QVVerdict:
    """Quality verifier: four boolean checks, passed only if none fails; the reason names
    the failed checks."""
    messages = render(
        PROMPTS / "quality_verifier.md",
        domain=ctx.domain,
        document=ctx.document("quality_verifier"),
        context=challenge.context,
        question=challenge.question,
        reference_answer=challenge.reference_answer,
        rubric=rubric_text(challenge),
    )
    res = await ctx.llm.complete_json("quality_verifier", messages, QVChecks)
    if res.value is None:
        return QVVerdict(passed=False, reason=f"quality verifier output unusable: {res.error}")
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


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def summarize_failures(history: list[RoundRecord]) -> str:
    """Earlier failures grouped by mode, one line per round, with the numbers that matter."""
    groups: dict[str, list[str]] = {}
    for r in history:
        q = r.challenge.question if r.challenge else "(no valid question)"
        mode = r.failure_mode
        if mode in (FailureMode.TOO_EASY, FailureMode.WEAK_ZERO):
            key = (
                "TOO EASY"
                if mode is FailureMode.TOO_EASY
                else "WEAK SOLVER SCORED ZERO (question unclear or unanswerable)"
            )
            line = f'round {r.round}: "{q}" (weak avg {_fmt(r.weak_avg)}'
            line += f", strong avg {_fmt(r.strong_avg)})" if r.strong_avg is not None else ")"
        elif mode is FailureMode.FAILED_STRONG:
            key = "FAILED ON STRONG"
            line = f'round {r.round}: "{q}" (weak avg {_fmt(r.weak_avg)}, strong avg {_fmt(r.strong_avg)}, gap {_fmt(r.gap)})'
        elif mode is FailureMode.FAILED_QV:
            key = "FAILED QUALITY CHECK"
            line = f'round {r.round}: "{q}" (reason: {r.qv.reason if r.qv else "n/a"})'
        else:
            key = "INVALID OUTPUT"
            line = f"round {r.round}: {r.challenger_error or r.harness_error or mode.value}"
        groups.setdefault(key, []).append(line)
    return "\n".join(f"{key}:\n" + "\n".join(f"  - {ln}" for ln in lines) for key, lines in groups.items())


async def feedback(ctx: HarnessContext, history: list[RoundRecord]) -> str:
    """Grouped failure summary + main-agent advice + the instruction to try a new angle."""
    summary = summarize_failures(history)
    parts = [f"Your earlier examples for this document were rejected.\n{summary}"]
    if USE_MAIN_AGENT:
        messages = render(PROMPTS / "main_agent.md", domain=ctx.domain, title=ctx.doc.title, failures=summary)
        advice = (await ctx.llm.complete("main_agent", messages)).strip()
        if advice:
            parts.append(f"Advice: {advice}")
    parts.append(
        "Write an entirely new question from a different angle: do not rephrase the questions above. "
        "Too easy means the weak solver answered without the document, so target a document-specific insight; "
        "failed on strong means even the solver with the document could not answer it, so make it clearer and "
        "fully answerable from the document."
    )
    return "\n\n".join(parts)
