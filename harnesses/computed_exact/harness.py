"""computed_exact: verifiable questions whose answer is computed from the passage, not copied.

For capability separation by the model rather than by the book (``+experiment=ladder_open_book``,
GitHub issue 17): both solvers read the same passage, so a term the passage states separates
nothing; only an answer that must be worked out (a definition or formula applied to a concrete
case, two facts combined) can separate a small solver from a larger one.

1. the challenger writes {context, question, answer} from the excerpt it sees
   (``prompts/challenger.md``): the answer one number or short expression;
2. the harness keeps it only if the answer is short and does not occur in the excerpt (a copied
   answer would not need the model's reasoning), else asks again (``TRIES_PER_ROUND``);
3. ``agent.evaluate``: the frozen quality check, 4 weak and 4 strong attempts, equivalence by
   ``math-verify`` (the task's verifiable mode), the paper's gate; the next round's prompt says
   how the earlier questions failed (too easy: harder, more steps; failed on the strong
   solver: state the case more completely).

Nothing here grades anything: the gate, the quality check, the solvers and the equivalence are
the frozen evaluator's.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from inner.contract import Challenge, FailureMode, RubricItem, render

PROMPTS = Path(__file__).parent / "prompts"

#: challenger replies tried per round before the document is given up
TRIES_PER_ROUND = 3
#: longest answer kept, characters
ANSWER_CHARS = 30
SUFFIX = 'Reason briefly, then end with one line: "Final answer: <the number or expression>".'


class Proposal(BaseModel):
    context: str
    question: str
    answer: str


def usable(p: Proposal | None, excerpt: str) -> str | None:
    """Why ``p`` cannot be asked (``None`` when it can): empty fields, a long answer, or an
    answer the excerpt states (copied, not computed)."""
    if p is None or not (p.context.strip() and p.question.strip() and p.answer.strip()):
        return "empty or unusable reply"
    answer = p.answer.strip()
    if len(answer) > ANSWER_CHARS:
        return f"the answer is longer than {ANSWER_CHARS} characters"
    if answer.lower() in excerpt.lower():
        return "the answer is written in the passage (it must be computed)"
    if answer.lower() in (p.context + " " + p.question).lower():
        return "the question gives the answer away"
    return None


def challenge(p: Proposal) -> Challenge:
    """The challenge for a usable proposal, with a two-criterion rubric (no judge reads it in
    verifiable rounds; the rubric policy still applies)."""
    answer = p.answer.strip()
    return Challenge(
        context=p.context.strip(),
        question=f"{p.question.strip()} {SUFFIX}",
        reference_answer=answer,
        rubric=[
            RubricItem(id="c1", criterion=f"The final answer equals {answer}, worked out from the article.", weight=7),
            RubricItem(id="c2", criterion="The reasoning applies the article's statement to the given case.", weight=2),
        ],
        question_type="computed",
    )


def feedback(rounds) -> str:
    lines = []
    for r in rounds:
        q = r.challenge.question if r.challenge else "?"
        if r.failure_mode is FailureMode.TOO_EASY:
            lines.append(f'- "{q}" was too easy (the small solver got it): ask for more steps.')
        elif r.failure_mode is FailureMode.FAILED_STRONG:
            lines.append(f'- "{q}" was not solved by the larger solver: make the case complete and unambiguous.')
        elif r.failure_mode is FailureMode.FAILED_QV:
            lines.append(f'- "{q}" failed the quality check: the answer must follow from the article.')
    return ("\nEarlier questions (write an entirely new one):\n" + "\n".join(lines) + "\n") if lines else ""


async def run(agent) -> None:
    """One proposal per round until accepted or out of rounds; a round whose replies are all
    unusable ends the document."""
    excerpt = agent.document("challenger")
    while len(agent.rounds) < agent.max_rounds:
        ch = None
        for sample in range(TRIES_PER_ROUND):
            messages = render(PROMPTS / "challenger.md", domain=agent.domain, title=agent.doc.title,
                              passage=excerpt, feedback=feedback(agent.rounds))  # fmt: skip
            p = (await agent.llm_json("challenger", messages, Proposal, sample=sample)).value
            why = usable(p, excerpt)
            if why is None:
                ch = challenge(p)
                break
            await agent.note(f"proposal not used: {why}")
        if ch is None:
            return
        report = await agent.evaluate(ch)
        if report.accepted:
            return
