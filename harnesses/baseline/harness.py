"""Baseline harness: the Autodata workflow for Agentic Self-Instruct, as a main agent.

``run(agent)`` works on one document, round after round:

1. the challenger writes {context, question, reference_answer, rubric [{id, criterion,
   weight 1..7}], question_type} from the document (``prompts/challenger.md``): the context
   describes the problem setting, never the solution; the question is atomic and specific to
   the document;
2. ``agent.evaluate(challenge)``: the frozen evaluator (quality check, weak then strong
   solver, judge, gate) reports back; an accepted report ends the document;
3. otherwise the feedback for the next round: every earlier failure grouped by mode (TOO EASY
   with the weak average, FAILED ON STRONG with weak/strong averages and gap, FAILED QUALITY
   CHECK with the quality check's reason), a short diagnosis by the main agent
   (``prompts/main_agent.md``), and the instruction to write an entirely new question from a
   different angle.

The contract is documented in :mod:`inner.harness`. The meta loop mutates copies of this
directory; keep everything a mutation may need to change inside it.
"""

from __future__ import annotations

from pathlib import Path

from inner.contract import Challenge, FailureMode, RoundRecord, render

PROMPTS = Path(__file__).parent / "prompts"

# Ask the main agent for a diagnosis on top of the grouped failure summary.
USE_MAIN_AGENT = True
# Challenger replies that cannot be used (after one repair) before the document is given up.
MAX_UNUSABLE = 2


async def run(agent) -> None:
    """Propose, evaluate, give grouped feedback, try a new angle, until accepted or out of rounds."""
    feedback: str | None = None
    unusable = 0
    while len(agent.rounds) < agent.max_rounds:
        block = f"## Feedback on your earlier attempts\n{feedback}\n" if feedback else "Write the example now."
        messages = render(
            PROMPTS / "challenger.md",
            domain=agent.domain,
            document=agent.document("challenger"),
            feedback_block=block,
        )
        res = await agent.llm_json("challenger", messages, Challenge)
        if res.value is None:
            unusable += 1
            await agent.note(f"challenger output unusable after one repair: {res.error}")
            if unusable >= MAX_UNUSABLE:
                return
            feedback = (feedback or "") + f"\nYour last reply could not be used: {res.error}. Reply with valid JSON."
            continue
        report = await agent.evaluate(res.value)
        if report.accepted:
            return
        feedback = await make_feedback(agent, agent.rounds)


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
            key = "INVALID"
            line = f"round {r.round}: " + ("; ".join(r.reasons) or mode.value)
        groups.setdefault(key, []).append(line)
    return "\n".join(f"{key}:\n" + "\n".join(f"  - {ln}" for ln in lines) for key, lines in groups.items())


async def make_feedback(agent, history: list[RoundRecord]) -> str:
    """Grouped failure summary + main-agent advice + the instruction to try a new angle."""
    summary = summarize_failures(history)
    parts = [f"Your earlier examples for this document were rejected.\n{summary}"]
    if USE_MAIN_AGENT:
        messages = render(PROMPTS / "main_agent.md", domain=agent.domain, title=agent.doc.title, failures=summary)
        advice = (await agent.llm("main_agent", messages)).text.strip()
        if advice:
            parts.append(f"Advice: {advice}")
    parts.append(
        "Write an entirely new question from a different angle: do not rephrase the questions above. "
        "Too easy means the weak solver answered without the document, so target a document-specific insight; "
        "failed on strong means even the solver with the document could not answer it, so make it clearer and "
        "fully answerable from the document."
    )
    return "\n\n".join(parts)
