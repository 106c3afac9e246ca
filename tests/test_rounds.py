"""The round rules (inner/evaluator/rounds.py) on their own: pure functions of the recorded rounds."""

from __future__ import annotations

import pytest

from inner.evaluator.rounds import (
    JUDGE_FAILED_TWICE,
    RoundAction,
    RoundVerdict,
    plan_round,
    settle_round,
)
from inner.sdk.contract import FailureMode, RoundRecord


def rnd(no: int, key: str, mode: FailureMode) -> RoundRecord:
    return RoundRecord(round=no, key=key, failure_mode=mode)


def test_a_new_challenge_is_a_new_round_until_the_budget_is_spent():
    p = plan_round([], "a", "both", 2)
    assert (p.action, p.index, p.round_no, p.prior) == (RoundAction.EVALUATE, None, 1, None)
    rounds = [rnd(1, "a", FailureMode.TOO_EASY), rnd(2, "b", FailureMode.FAILED_QV)]
    assert plan_round(rounds[:1], "b", "both", 2).round_no == 2
    out = plan_round(rounds, "c", "both", 2)
    assert out.action is RoundAction.OUT_OF_ROUNDS


def test_a_recorded_challenge_is_replayed_at_no_cost_even_with_no_round_left():
    rounds = [rnd(1, "a", FailureMode.TOO_EASY)]
    for side in ("weak", "both"):
        p = plan_round(rounds, "a", side, 1)
        assert (p.action, p.index, p.round_no) == (RoundAction.REPLAY, 0, 1)


def test_weak_passed_continues_with_the_strong_side_only_when_asked():
    prior = rnd(1, "a", FailureMode.WEAK_PASSED)
    assert plan_round([prior], "a", "weak", 1).action is RoundAction.REPLAY
    p = plan_round([prior], "a", "both", 1)
    assert (p.action, p.index, p.prior) == (RoundAction.EVALUATE, 0, prior)


def test_a_judge_error_round_is_redone_from_scratch_in_place():
    p = plan_round([rnd(1, "a", FailureMode.JUDGE_ERROR)], "a", "both", 1)
    assert (p.action, p.index, p.round_no, p.prior) == (RoundAction.EVALUATE, 0, 1, None)


def test_bad_side_is_refused():
    with pytest.raises(ValueError, match="side"):
        plan_round([], "a", "strong", 1)


def test_settle_accepted_failed_and_the_judge_redo():
    assert settle_round(rnd(1, "a", FailureMode.ACCEPTED), 0) == (RoundVerdict.ACCEPTED, 0)
    assert settle_round(rnd(1, "a", FailureMode.FAILED_STRONG), 1) == (RoundVerdict.CONTINUE, 1)
    first = rnd(1, "a", FailureMode.JUDGE_ERROR)
    assert settle_round(first, 0) == (RoundVerdict.REDO_DOCUMENT, 1) and first.reasons == []
    second = rnd(1, "a", FailureMode.JUDGE_ERROR)
    assert settle_round(second, 1) == (RoundVerdict.CONTINUE, 2)
    assert second.reasons == [JUDGE_FAILED_TWICE]
