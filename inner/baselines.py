"""CoT Self-Instruct baseline (Yu et al., 2025, "CoT-Self-Instruct").

One chain-of-thought generation pass per document that produces the same example format as
the challenger (the reasoning is asked for first and discarded), no feedback loop. The
example then goes through the same quality verifier, frozen evaluator and gate as Agentic
Self-Instruct, so the two methods are compared on identical solvers
(``method=cot_self_instruct``).
"""

from __future__ import annotations

from inner.harness import HarnessContext
from inner.llm.client import JSONResult
from inner.records import Challenge
from inner.templates import INNER_PROMPTS, render


class CoTChallenge(Challenge):
    """A challenge preceded by the model's step-by-step reasoning."""

    reasoning: str = ""


async def cot_propose(ctx: HarnessContext, feedback: str | None) -> JSONResult[Challenge]:
    """Write one example with chain-of-thought; ``feedback`` is ignored (single pass).

    Uses the challenger role (its endpoint, sampling and document budget).
    """
    messages = render(
        INNER_PROMPTS / "cot_self_instruct.md",
        domain=ctx.domain,
        document=ctx.document("challenger"),
    )
    res = await ctx.llm.complete_json("challenger", messages, CoTChallenge)
    value = Challenge.model_validate(res.value.model_dump(exclude={"reasoning"})) if res.value else None
    return JSONResult(value, res.raw, res.error)
