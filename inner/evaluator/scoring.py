"""Rubric scoring and the rubric policy (part of the frozen evaluator).

Score of one answer (Agentic Self-Instruct, arXiv 2606.25996, "Rubric-based evaluation")::

    score = clip((sum_{w > 0} w * s  -  sum_{w < 0} |w| * s) / sum_{w > 0} w, 0, 1)

where ``w`` is a criterion's integer weight in [-10, 10] without 0 (a negative weight marks a
*pitfall*: a mistake the answer must not make) and ``s`` the judge's verdict on that criterion
(binary by default: 1 = satisfied completely and unambiguously, 0 otherwise; partial credit
0.5 only with ``rubric.partial_credit=true``). For a pitfall, ``s = 1`` means the answer
*commits* the pitfall.

The rubric policy (``conf/rubric/``) is checked on every challenge before any solver runs; a
rubric that breaks it is an INVALID_CHALLENGE with the reason, never clamped or repaired. Before
it, the challenge limits (:data:`MAX_FIELD_CHARS`, :data:`MAX_CRITERIA`,
:data:`MAX_CRITERION_CHARS`, :data:`CRITERION_ID`; all in one place below) bound every field of a
challenge, so an oversized one is INVALID_CHALLENGE before any LLM call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class Criterion(Protocol):
    """What scoring needs of a rubric criterion (:class:`inner.engine.records.RubricItem`)."""

    id: str
    weight: int


@dataclass
class RubricPolicyConfig:
    """Which rubrics the evaluator accepts (``conf/rubric/*.yaml``).

    Attributes:
        name: ``published`` (10-15 criteria, >= 4 positive and >= 3 pitfalls, weights in
            [-10, 10]: the paper's starting challenger) or ``evolved`` (2-15 positive criteria,
            weights 1..7: the format the paper's meta-optimizer converged to), or any name for a
            custom policy.
        min_criteria / max_criteria: number of criteria allowed.
        min_positive: least number of criteria with a positive weight.
        min_pitfalls / max_pitfalls: number of negative-weight criteria allowed.
        min_weight / max_weight: integer weight range (0 is never allowed).
        partial_credit: the judge may give 0.5 for a partly met criterion (default: binary).
    """

    name: str = "evolved"
    min_criteria: int = 2
    max_criteria: int = 15
    min_positive: int = 2
    min_pitfalls: int = 0
    max_pitfalls: int = 0
    min_weight: int = 1
    max_weight: int = 7
    partial_credit: bool = False

    def __post_init__(self) -> None:
        from inner.sdk.errors import ConfigError

        if not 1 <= self.min_criteria <= self.max_criteria:
            raise ConfigError(
                f"rubric.min_criteria={self.min_criteria} is invalid: must be >= 1 and <= "
                f"rubric.max_criteria={self.max_criteria}"
            )
        if not -10 <= self.min_weight <= self.max_weight <= 10 or self.max_weight <= 0:
            raise ConfigError(
                f"rubric.min_weight={self.min_weight}, rubric.max_weight={self.max_weight} are invalid: "
                "need -10 <= min_weight <= max_weight <= 10 and max_weight > 0"
            )
        if self.min_positive < 1:
            raise ConfigError(
                f"rubric.min_positive={self.min_positive} is invalid: must be >= 1 (the score divides by the "
                "positive weights)"
            )
        if self.min_pitfalls > self.max_pitfalls:
            raise ConfigError(
                f"rubric.min_pitfalls={self.min_pitfalls} is invalid: must be <= rubric.max_pitfalls={self.max_pitfalls}"
            )
        if self.min_pitfalls > 0 and self.min_weight >= 0:
            raise ConfigError(
                f"rubric.min_pitfalls={self.min_pitfalls} needs negative weights: set rubric.min_weight < 0"
            )


def rubric_score(rubric: Sequence[Criterion], verdicts: Mapping[str, float]) -> float:
    """Score of one answer in [0, 1] (formula in the module docstring).

    Args:
        rubric: the criteria (ids and integer weights; at least one positive weight).
        verdicts: criterion id -> the judge's verdict in [0, 1]; a missing id counts as 0
            (not satisfied / pitfall not committed).

    Raises:
        ValueError: the rubric has no positive weight (the policy check rejects such rubrics
            before any answer is scored).
    """
    positive = sum(c.weight for c in rubric if c.weight > 0)
    if positive <= 0:
        raise ValueError("a rubric needs at least one criterion with a positive weight")
    gained = sum(c.weight * verdicts.get(c.id, 0.0) for c in rubric if c.weight > 0)
    lost = sum(-c.weight * verdicts.get(c.id, 0.0) for c in rubric if c.weight < 0)
    return min(1.0, max(0.0, (gained - lost) / positive))


# -- the challenge limits (policy-independent, frozen) ------------------------------------------
# Every challenge is held to these before any LLM call; one over a limit is INVALID_CHALLENGE with
# the reason (:func:`check_challenge_limits`), never cut. They keep every evaluator prompt well
# inside an endpoint's context window, so an endpoint's 4xx on an evaluator role is rare, and when
# one still happens it is the challenge's failed round too (:mod:`inner.evaluator.roles`).

#: a criterion id: short and plain, so a judge can reproduce it
CRITERION_ID = re.compile(r"[A-Za-z0-9_.-]{1,16}")
#: longest criterion text, characters
MAX_CRITERION_CHARS = 600
#: most criteria in a rubric, whatever the policy allows
MAX_CRITERIA = 30
#: longest ``context``, ``question`` and ``reference_answer``, characters
MAX_FIELD_CHARS = {"context": 8000, "question": 2000, "reference_answer": 8000}


class ChallengeLike(Protocol):
    """What :func:`check_challenge_limits` needs of a challenge (:class:`inner.sdk.contract.Challenge`)."""

    context: str
    question: str
    reference_answer: str
    rubric: Sequence[Criterion]


def check_challenge_limits(challenge: ChallengeLike) -> str | None:
    """``None`` if every field of ``challenge`` is within the challenge limits above, else the
    reason naming each field over its limit (checked before the rubric policy and before any
    LLM call)."""
    problems = [
        f"{name} is {len(getattr(challenge, name))} characters (at most {cap})"
        for name, cap in MAX_FIELD_CHARS.items()
        if len(getattr(challenge, name)) > cap
    ]
    if len(challenge.rubric) > MAX_CRITERIA:
        problems.append(f"{len(challenge.rubric)} criteria (at most {MAX_CRITERIA})")
    if not problems:
        return None
    return "challenge over the evaluator's limits: " + "; ".join(problems)


def check_rubric_policy(rubric: Sequence[Criterion], policy: RubricPolicyConfig) -> str | None:
    """``None`` if ``rubric`` honours ``policy``, else the reason it breaks it (one sentence
    naming every violated rule). Whatever the policy, ids must match :data:`CRITERION_ID` and
    criteria be at most :data:`MAX_CRITERION_CHARS` long (ids the judge cannot reproduce would
    make every grade unusable)."""
    problems = []
    bad_ids = [c.id[:20] for c in rubric if not CRITERION_ID.fullmatch(c.id)]
    if bad_ids:
        problems.append(f"criterion ids must be 1-16 letters, digits, '_', '.' or '-': {bad_ids[:5]}")
    long = [c.id[:20] for c in rubric if len(getattr(c, "criterion", "")) > MAX_CRITERION_CHARS]
    if long:
        problems.append(f"criteria longer than {MAX_CRITERION_CHARS} characters: {long[:5]}")
    n = len(rubric)
    if not policy.min_criteria <= n <= policy.max_criteria:
        problems.append(f"{n} criteria (policy {policy.name!r} wants {policy.min_criteria}-{policy.max_criteria})")
    ids = [c.id for c in rubric]
    if len(set(ids)) != len(ids):
        problems.append("criterion ids are not unique")
    bad = [
        f"{c.id}={c.weight}" for c in rubric if c.weight == 0 or not policy.min_weight <= c.weight <= policy.max_weight
    ]
    if bad:
        problems.append(f"weights out of range [{policy.min_weight}, {policy.max_weight}] without 0: {', '.join(bad)}")
    pos = sum(1 for c in rubric if c.weight > 0)
    neg = sum(1 for c in rubric if c.weight < 0)
    if pos < policy.min_positive:
        problems.append(f"{pos} positive criteria (policy wants at least {policy.min_positive})")
    if not policy.min_pitfalls <= neg <= policy.max_pitfalls:
        problems.append(f"{neg} pitfall criteria (policy wants {policy.min_pitfalls}-{policy.max_pitfalls})")
    if not problems:
        return None
    return f"rubric breaks policy {policy.name!r}: " + "; ".join(problems)
