"""CoT Self-Instruct (Yu et al., 2025, "CoT-Self-Instruct") as a one-shot harness.

One chain-of-thought generation pass per document that produces the same example format as
the challenger (the reasoning is asked for first and discarded), evaluated once by the same
frozen evaluator and gate as Agentic Self-Instruct; no feedback loop
(``autodata-generate method=cot_self_instruct``).
"""

from __future__ import annotations

from pathlib import Path

from inner.contract import Challenge, render

PROMPTS = Path(__file__).parent / "prompts"


class CoTChallenge(Challenge):
    """A challenge preceded by the model's step-by-step reasoning."""

    reasoning: str = ""


async def run(agent) -> None:
    """Write one example with chain-of-thought (challenger role) and evaluate it once."""
    messages = render(PROMPTS / "cot_self_instruct.md", domain=agent.domain, document=agent.document("challenger"))
    res = await agent.llm_json("challenger", messages, CoTChallenge)
    if res.value is None:
        await agent.note(f"challenger output unusable after one repair: {res.error}")
        return
    await agent.evaluate(Challenge.model_validate(res.value.model_dump(exclude={"reasoning"})))
