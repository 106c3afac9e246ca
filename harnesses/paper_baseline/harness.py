"""The paper's starting harness: the published computer-science challenger of Agentic
Self-Instruct (arXiv 2606.25996), as a main agent.

``run(agent)`` works on one document, round after round:

1. the challenger (``prompts/challenger.md``) first fills a *scratchpad* (the document's key
   insight and the errors a solver without the document would likely make), then writes the
   context, the question, the reference answer and a rubric of 10-15 criteria: 7-10
   requirements with weights +1..+10 and 3-5 pitfalls with weights -1..-10 (a pitfall is a
   mistake the answer must not make; the judge marks it 1 when the answer commits it). The
   JSON schema sent with the request enforces the list lengths and weight ranges, so a
   grammar-constrained model (llama.cpp) cannot break the ``published`` rubric policy;
2. the published quality checks as a self-check (role ``self_check``, ``prompts/self_check.md``:
   context leak, generic, multi-part, rubric covers the answer). A draft its own check rejects
   is regenerated instead of evaluated, at most ``MAX_REGENERATIONS`` times per document; after
   that it is evaluated anyway. The verdict goes to ``agent.evaluate(challenge,
   self_check=verdict)``, where it is recorded and never gates (the frozen check decides);
3. ``agent.evaluate(challenge)``: the frozen evaluator reports back; an accepted report ends
   the document;
4. otherwise the grouped refinement feedback for the next round: earlier failures grouped by
   mode with their scores, which rubric points the weak solver already got without the
   document, which pitfalls it fell into, what the strong solver missed, a short diagnosis by
   the main agent (``prompts/refine.md``), and the instruction to try a new angle.

Run it with the rubric policy it was written for: ``rubric=published``
(``+experiment=autodata_paper``). The contract is documented in :mod:`inner.harness`. The meta
loop mutates copies of this directory; keep everything a mutation may need inside it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from inner.contract import Challenge, FailureMode, QVVerdict, RoundRecord, RubricItem, render

PROMPTS = Path(__file__).parent / "prompts"

# Rubric shape of the published challenger (arXiv 2606.25996): 7-10 requirements weighted
# +1..+10 and 3-5 pitfalls weighted -1..-10, 10-15 criteria in all.
MIN_CRITERIA, MAX_CRITERIA = 7, 10
MIN_PITFALLS, MAX_PITFALLS = 3, 5
MAX_WEIGHT = 10
# Drafts rejected by the harness's own quality check that are regenerated rather than
# evaluated, per document; beyond this a rejected draft is evaluated anyway.
MAX_REGENERATIONS = 2
# Ask the main agent for a diagnosis on top of the grouped failure summary.
USE_ADVISOR = True
# Challenger replies that cannot be used (after one repair) before the document is given up.
MAX_UNUSABLE = 2
# Evaluations that return an already-recorded report (the challenger repeated itself) before
# the document is given up.
MAX_REPEATS = 2


class Scratchpad(BaseModel):
    """Reasoning written before the example (discarded: never part of the challenge)."""

    key_insight: str
    weak_solver_errors: str


class WeightedPoint(BaseModel):
    """A rubric requirement or pitfall; ``weight`` is its magnitude 1..10 (a pitfall's sign is
    added by :func:`to_challenge`)."""

    id: str
    criterion: str = Field(min_length=1)
    weight: int = Field(json_schema_extra={"minimum": 1, "maximum": MAX_WEIGHT})

    @field_validator("weight", mode="before")
    @classmethod
    def _magnitude(cls, v: object) -> int:
        # a model that writes a pitfall as -5 or a weight of 12 means |w| within the range
        return max(1, min(MAX_WEIGHT, abs(int(v))))  # type: ignore[call-overload]


class PaperChallenge(BaseModel):
    """What the challenger writes, scratchpad first (the JSON schema keeps this order)."""

    scratchpad: Scratchpad
    context: str = Field(min_length=1)
    question: str = Field(min_length=1)
    reference_answer: str = Field(min_length=1)
    criteria: list[WeightedPoint] = Field(min_length=MIN_CRITERIA, max_length=MAX_CRITERIA)
    pitfalls: list[WeightedPoint] = Field(min_length=MIN_PITFALLS, max_length=MAX_PITFALLS)
    question_type: str = "other"


class SelfCheck(BaseModel):
    """The published quality checks, answered by the harness's own ``self_check`` role."""

    context_leak: bool
    generic: bool
    multi_part: bool
    rubric_covers_answer: bool
    reason: str = ""

    def verdict(self) -> QVVerdict:
        failed = [
            name
            for name, bad in (
                ("context leak", self.context_leak),
                ("generic", self.generic),
                ("multi-part", self.multi_part),
                ("rubric does not cover the answer", not self.rubric_covers_answer),
            )
            if bad
        ]
        reason = self.reason.strip() or "passes"
        return QVVerdict(passed=not failed, reason=f"{'; '.join(failed)}: {reason}" if failed else reason)


def to_challenge(pc: PaperChallenge) -> Challenge:
    """The evaluator's :class:`Challenge`: requirements ``c1..`` with positive weights, then
    pitfalls ``p1..`` with negative weights (ids renumbered so that they are unique)."""
    rubric = [RubricItem(id=f"c{i}", criterion=c.criterion, weight=c.weight) for i, c in enumerate(pc.criteria, 1)]
    rubric += [RubricItem(id=f"p{i}", criterion=p.criterion, weight=-p.weight) for i, p in enumerate(pc.pitfalls, 1)]
    return Challenge(
        context=pc.context,
        question=pc.question,
        reference_answer=pc.reference_answer,
        rubric=rubric,
        question_type=pc.question_type,
    )


def rubric_text(challenge: Challenge) -> str:
    lines = []
    for c in challenge.rubric:
        kind = "PITFALL" if c.weight < 0 else "requirement"
        lines.append(f"- {c.id} [{kind}, weight {c.weight}]: {c.criterion}")
    return "\n".join(lines)


async def self_check(agent, challenge: Challenge) -> QVVerdict | None:
    """The harness's own quality verdict, or ``None`` when its reply was unusable."""
    messages = render(
        PROMPTS / "self_check.md",
        domain=agent.domain,
        document=agent.document("self_check"),
        context=challenge.context,
        question=challenge.question,
        reference_answer=challenge.reference_answer,
        rubric=rubric_text(challenge),
    )
    res = await agent.llm_json("self_check", messages, SelfCheck)
    return res.value.verdict() if res.value is not None else None


async def run(agent) -> None:
    """Draft, self-check (regenerate on rejection), evaluate, refine, until accepted or out of rounds."""
    feedback: str | None = None
    unusable = regenerations = repeats = 0
    seen: set[str] = set()
    while len(agent.rounds) < agent.max_rounds:
        block = f"## Feedback on your earlier attempts\n{feedback}\n" if feedback else "Write the example now."
        messages = render(
            PROMPTS / "challenger.md",
            domain=agent.domain,
            document=agent.document("challenger"),
            feedback_block=block,
        )
        res = await agent.llm_json("challenger", messages, PaperChallenge)
        if res.value is None:
            unusable += 1
            await agent.note(f"challenger output unusable after one repair: {res.error}")
            if unusable >= MAX_UNUSABLE:
                return
            feedback = (feedback or "") + f"\nYour last reply could not be used: {res.error}. Reply with valid JSON."
            continue
        await agent.note(f"scratchpad: key insight: {res.value.scratchpad.key_insight[:300]}")
        challenge = to_challenge(res.value)
        verdict = await self_check(agent, challenge)
        if verdict is not None and not verdict.passed and regenerations < MAX_REGENERATIONS:
            regenerations += 1
            await agent.note(f"own quality check rejected the draft, regenerating: {verdict.reason}")
            feedback = (
                (feedback + "\n\n" if feedback else "")
                + f'Your draft "{challenge.question}" failed the quality check ({verdict.reason}). '
                "Write a new example that avoids this problem."
            )
            continue
        report = await agent.evaluate(challenge, self_check=verdict)
        if report.accepted:
            return
        if report.key in seen:
            repeats += 1
            if repeats >= MAX_REPEATS:
                await agent.note("the challenger keeps repeating an evaluated example; giving up")
                return
        seen.add(report.key)
        feedback = await make_feedback(agent, agent.rounds)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _hit_rate(r: RoundRecord, side: str, cid: str) -> float | None:
    attempts = r.weak if side == "weak" else r.strong
    scores = [g.score for a in attempts for g in a.grades if g.id == cid]
    return sum(scores) / len(scores) if scores else None


def criterion_insights(r: RoundRecord) -> list[str]:
    """What the grades say about one round: requirements the weak solver met without the
    document (too guessable), pitfalls it fell into (good), requirements the strong solver
    missed (unclear or unsupported by the document)."""
    if r.challenge is None:
        return []
    weak_met, weak_fell, strong_missed = [], [], []
    for c in r.challenge.rubric:
        w, s = _hit_rate(r, "weak", c.id), _hit_rate(r, "strong", c.id)
        if c.weight > 0 and w is not None and w >= 0.5:
            weak_met.append(c.criterion)
        if c.weight < 0 and w is not None and w >= 0.5:
            weak_fell.append(c.criterion)
        if c.weight > 0 and s is not None and s < 0.5:
            strong_missed.append(c.criterion)
    out = []
    if weak_met:
        out.append("the solver WITHOUT the document already met: " + "; ".join(weak_met[:4]))
    if weak_fell:
        out.append("pitfalls it fell into (keep this kind): " + "; ".join(weak_fell[:3]))
    if strong_missed:
        out.append("the solver WITH the document missed: " + "; ".join(strong_missed[:4]))
    return out


def summarize_failures(history: list[RoundRecord]) -> str:
    """Earlier failures grouped by mode, one entry per round, with scores and rubric insights."""
    groups: dict[str, list[str]] = {}
    for r in history:
        q = r.challenge.question if r.challenge else "(no valid question)"
        mode = r.failure_mode
        if mode in (FailureMode.TOO_EASY, FailureMode.WEAK_ZERO, FailureMode.WEAK_PASSED):
            key = {
                FailureMode.TOO_EASY: "TOO EASY",
                FailureMode.WEAK_ZERO: "WEAK SOLVER SCORED ZERO (question unclear or unanswerable)",
                FailureMode.WEAK_PASSED: "PASSED THE WEAK SIDE ONLY",
            }[mode]
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
        line += "".join(f"\n      {x}" for x in criterion_insights(r))
        groups.setdefault(key, []).append(line)
    return "\n".join(f"{key}:\n" + "\n".join(f"  - {ln}" for ln in lines) for key, lines in groups.items())


async def make_feedback(agent, history: list[RoundRecord]) -> str:
    """Grouped failure summary + the main agent's advice + the instruction to try a new angle."""
    summary = summarize_failures(history)
    parts = [f"Your earlier examples for this document were rejected.\n{summary}"]
    if USE_ADVISOR:
        messages = render(PROMPTS / "refine.md", domain=agent.domain, title=agent.doc.title, failures=summary)
        advice = (await agent.llm("main_agent", messages)).text.strip()
        if advice:
            parts.append(f"Advice: {advice}")
    parts.append(
        "Write an entirely new question from a different angle: do not rephrase the questions above. "
        "Too easy means the solver without the document answered it, so target the document's key insight and "
        "turn the weak solver's likely errors into pitfalls; failed on strong means even the solver with the "
        "document could not answer it, so make it clearer and fully answerable from the document."
    )
    return "\n\n".join(parts)
