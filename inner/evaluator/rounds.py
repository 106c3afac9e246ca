"""The round rules: what one request to evaluate a challenge costs and runs (frozen).

A harness may call ``agent.evaluate(challenge, side=...)`` as often as it likes; these rules
decide what each call is worth. They are pure functions of the document's recorded rounds, so
the document session (:class:`inner.engine.loop.DocumentSession`) only carries them out and the
rules are tested on their own (``tests/test_rounds.py``):

- **one round per distinct challenge** (its :func:`~inner.sdk.contract.challenge_key`): asking
  again about a recorded challenge returns the recorded report at no cost, so re-submitting a
  challenge cannot buy fresh solver samples (a lucky draw);
- **weak first, then strong**: a round evaluated with ``side="weak"`` that passed the weak side
  (``WEAK_PASSED``) is continued, in the same round, with the strong side when asked for
  ``side="both"``; its weak attempts are kept, never redrawn;
- **the judge redo**: a round whose judge grade stayed unusable (``JUDGE_ERROR``) is an
  infrastructure failure the first time in a document (the document ends ``error`` and is redone
  by the next run, with new judge samples); a second time the challenge cannot be graded and the
  round counts as failed (so a rubric made to break the judge cannot launder a failed document
  into an infrastructure error);
- **the round budget**: a new challenge once ``inner.max_rounds`` rounds are recorded ends the
  document (``exhausted``).

Source: the paper's main agent calls its evaluation tool once per candidate example and ends on
the first accepted one (Agentic Self-Instruct, arXiv 2606.25996); the rest is this project's
accounting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from inner.sdk.contract import FailureMode, RoundRecord

#: the reason added to a round whose judge failed again after the document was redone
JUDGE_FAILED_TWICE = "the judge could not grade this challenge, again after a redo: counted as a failed round"


class RoundAction(StrEnum):
    """What the session does with one evaluate request."""

    REPLAY = "replay"  # return the recorded report; no LLM call, no round spent
    EVALUATE = "evaluate"  # run the evaluator (a new round, a continuation or a judge redo)
    OUT_OF_ROUNDS = "out_of_rounds"  # a new challenge with every round used: the document ends


@dataclass(frozen=True)
class RoundPlan:
    """The decision for one evaluate request.

    Attributes:
        action: see :class:`RoundAction`.
        index: position of the recorded round this request concerns in the document's rounds
            (replaced after evaluation), or ``None`` for a new round (appended).
        round_no: the round's number (1-based).
        prior: the recorded ``WEAK_PASSED`` round to continue with the strong side (its weak
            attempts reused), else ``None``.
    """

    action: RoundAction
    index: int | None
    round_no: int
    prior: RoundRecord | None = None


def plan_round(rounds: Sequence[RoundRecord], key: str, side: str, max_rounds: int) -> RoundPlan:
    """What an ``evaluate`` request for the challenge with key ``key`` does.

    Args:
        rounds: the document's recorded rounds, in order.
        key: the challenge's :func:`~inner.sdk.contract.challenge_key`.
        side: ``"weak"`` or ``"both"``.
        max_rounds: the document's round budget (``inner.max_rounds``).

    Raises:
        ValueError: ``side`` is neither ``"weak"`` nor ``"both"``.
    """
    if side not in ("weak", "both"):
        raise ValueError(f"side must be 'weak' or 'both', not {side!r}")
    index = next((i for i, r in enumerate(rounds) if r.key == key), None)
    if index is None:
        if len(rounds) >= max_rounds:
            return RoundPlan(RoundAction.OUT_OF_ROUNDS, None, len(rounds) + 1)
        return RoundPlan(RoundAction.EVALUATE, None, len(rounds) + 1)
    prior = rounds[index]
    if prior.failure_mode is FailureMode.JUDGE_ERROR:  # redo with new judge samples, from scratch
        return RoundPlan(RoundAction.EVALUATE, index, prior.round)
    if prior.failure_mode is FailureMode.WEAK_PASSED and side == "both":
        return RoundPlan(RoundAction.EVALUATE, index, prior.round, prior=prior)
    return RoundPlan(RoundAction.REPLAY, index, prior.round)


class RoundVerdict(StrEnum):
    """How a freshly evaluated round bears on the document."""

    ACCEPTED = "accepted"  # the document ends accepted
    REDO_DOCUMENT = "redo_document"  # a first judge failure: the document ends ``error``, redone later
    CONTINUE = "continue"  # a failed round (the harness may try again)


def settle_round(rec: RoundRecord, judge_errors: int) -> tuple[RoundVerdict, int]:
    """The verdict on a freshly evaluated round and the document's judge-error count after it.

    A second judge failure adds :data:`JUDGE_FAILED_TWICE` to ``rec.reasons`` (the round is
    then a failed round of the harness).

    Args:
        rec: the round the evaluator returned.
        judge_errors: judge failures recorded in the document before this round.
    """
    if rec.failure_mode is FailureMode.JUDGE_ERROR:
        judge_errors += 1
        if judge_errors <= 1:
            return RoundVerdict.REDO_DOCUMENT, judge_errors
        rec.reasons.append(JUDGE_FAILED_TWICE)
        return RoundVerdict.CONTINUE, judge_errors
    if rec.accepted:
        return RoundVerdict.ACCEPTED, judge_errors
    return RoundVerdict.CONTINUE, judge_errors
