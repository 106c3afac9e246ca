"""The acceptance gate (inner/evaluator/gate.py) and the answer extraction of the frozen evaluator
(inner/evaluator/roles.py): every default rubric threshold at its exact boundary, and the verifiable
k-of-n rule (at most 1 of 4 weak, at least 3 of 4 strong answers equivalent to the reference)."""

from __future__ import annotations

import pytest

from inner.config import GateConfig
from inner.engine.records import FailureMode
from inner.evaluator.answers import extract_final_answer, normalize_answer
from inner.evaluator.gate import check_rubric, check_verifiable, check_verifiable_weak, check_weak
from inner.sdk.errors import ConfigError

CFG = GateConfig()


def gate(weak: list[float], strong: list[float], *, qv: bool = True, cfg: GateConfig = CFG) -> FailureMode:
    return check_rubric(weak, strong, qv_passed=qv, cfg=cfg).mode


# -- defaults -------------------------------------------------------------------------------


def test_defaults_are_the_published_thresholds():
    assert (
        CFG.weak_avg_max,
        CFG.weak_max,
        CFG.strong_avg_min,
        CFG.strong_avg_max,
        CFG.min_gap,
    ) == (
        0.65,
        0.75,
        0.60,
        0.95,
        0.20,
    )
    assert CFG.reject_weak_zero and CFG.reject_strong_zero


def test_clear_accept():
    d = check_rubric([0.5, 0.5, 0.5], [0.9, 0.9, 0.9], qv_passed=True, cfg=CFG)
    assert d.accepted and d.mode is FailureMode.ACCEPTED and d.reasons == []


# -- weak average -----------------------------------------------------------------------------


def test_weak_avg_exactly_065_passes():
    assert check_weak([0.65, 0.65, 0.65], CFG) is None
    assert gate([0.65, 0.65, 0.65], [0.9, 0.9, 0.9]) is FailureMode.ACCEPTED


def test_weak_avg_066_is_too_easy():
    d = check_weak([0.66, 0.66, 0.66], CFG)
    assert d is not None and d.mode is FailureMode.TOO_EASY
    assert any("weak_avg" in r for r in d.reasons)
    assert gate([0.66, 0.66, 0.66], [0.95 - 0.01] * 3) is FailureMode.TOO_EASY


# -- max weak -------------------------------------------------------------------------------


def test_max_weak_exactly_075_passes():
    weak = [0.75, 0.6, 0.6]  # avg 0.65, max 0.75: both exactly on the boundary
    assert check_weak(weak, CFG) is None
    assert gate(weak, [0.9, 0.9, 0.9]) is FailureMode.ACCEPTED


def test_max_weak_above_075_is_too_easy_even_with_low_average():
    weak = [0.8, 0.3, 0.3]  # avg 0.467 is fine, one attempt is too good
    d = check_weak(weak, CFG)
    assert d is not None and d.mode is FailureMode.TOO_EASY
    assert any("max weak" in r for r in d.reasons) and not any("weak_avg" in r for r in d.reasons)
    assert gate(weak, [0.9, 0.9, 0.9]) is FailureMode.TOO_EASY


# -- zero scores ------------------------------------------------------------------------------


def test_weak_zero_is_weak_zero():
    d = check_weak([0.0, 0.5, 0.5], CFG)
    assert d is not None and d.mode is FailureMode.WEAK_ZERO
    assert gate([0.0, 0.5, 0.5], [0.9, 0.9, 0.9]) is FailureMode.WEAK_ZERO


def test_strong_zero_is_failed_strong():
    # strong avg 0.667 and gap 0.367 would pass; only the zero fails it
    d = check_rubric([0.3, 0.3, 0.3], [0.0, 1.0, 1.0], qv_passed=True, cfg=CFG)
    assert d.mode is FailureMode.FAILED_STRONG
    assert d.reasons == ["a strong score is 0"]


def test_zero_rejection_can_be_disabled():
    cfg = GateConfig(reject_weak_zero=False, reject_strong_zero=False)
    assert gate([0.0, 0.5, 0.5], [0.9, 0.9, 0.9], cfg=cfg) is FailureMode.ACCEPTED
    assert gate([0.3, 0.3, 0.3], [0.0, 1.0, 1.0], cfg=cfg) is FailureMode.ACCEPTED


# -- strong average -------------------------------------------------------------------------


def test_strong_avg_exactly_060_passes():
    assert gate([0.4, 0.4, 0.4], [0.6, 0.6, 0.6]) is FailureMode.ACCEPTED


def test_strong_avg_059_fails_strong():
    d = check_rubric([0.3, 0.3, 0.3], [0.59, 0.59, 0.59], qv_passed=True, cfg=CFG)
    assert d.mode is FailureMode.FAILED_STRONG
    assert any("strong_avg" in r for r in d.reasons)


def test_strong_avg_095_is_too_easy():
    d = check_rubric([0.5, 0.5, 0.5], [0.95, 0.95, 0.95], qv_passed=True, cfg=CFG)
    assert d.mode is FailureMode.TOO_EASY
    assert any("strong_avg" in r for r in d.reasons)
    assert gate([0.5, 0.5, 0.5], [1.0, 1.0, 1.0]) is FailureMode.TOO_EASY


def test_strong_avg_just_under_095_passes():
    assert gate([0.5, 0.5, 0.5], [0.949, 0.949, 0.949]) is FailureMode.ACCEPTED


# -- gap ------------------------------------------------------------------------------------


def test_gap_exactly_020_passes_despite_float_error():
    assert 0.85 - 0.65 < 0.20  # the float error the gate must tolerate
    assert gate([0.65, 0.65, 0.65], [0.85, 0.85, 0.85]) is FailureMode.ACCEPTED
    assert gate([0.4, 0.4, 0.4], [0.6, 0.6, 0.6]) is FailureMode.ACCEPTED


def test_gap_019_fails_strong():
    d = check_rubric([0.5, 0.5, 0.5], [0.69, 0.69, 0.69], qv_passed=True, cfg=CFG)
    assert d.mode is FailureMode.FAILED_STRONG
    assert len(d.reasons) == 1 and d.reasons[0].startswith("gap")


# -- quality verifier and precedence --------------------------------------------------------


def test_qv_failure_wins_over_good_scores():
    d = check_rubric([0.5, 0.5, 0.5], [0.9, 0.9, 0.9], qv_passed=False, cfg=CFG)
    assert d.mode is FailureMode.FAILED_QV and not d.accepted


def test_weak_side_is_checked_before_strong():
    # weak too easy and strong too weak: the weak verdict is the one reported
    assert gate([0.9, 0.9, 0.9], [0.1, 0.1, 0.1]) is FailureMode.TOO_EASY


# -- configurable thresholds ----------------------------------------------------------------


def test_custom_gate_changes_the_outcome():
    weak, strong = [0.7, 0.7, 0.7], [0.85, 0.85, 0.85]
    assert gate(weak, strong) is FailureMode.TOO_EASY
    lenient = GateConfig(weak_avg_max=0.75, weak_max=0.9, min_gap=0.1)
    assert gate(weak, strong, cfg=lenient) is FailureMode.ACCEPTED
    strict = GateConfig(min_gap=0.5)
    assert gate([0.4, 0.4, 0.4], [0.8, 0.8, 0.8]) is FailureMode.ACCEPTED
    assert gate([0.4, 0.4, 0.4], [0.8, 0.8, 0.8], cfg=strict) is FailureMode.FAILED_STRONG


def test_gate_config_rejects_bad_thresholds():
    with pytest.raises(ConfigError, match="gate.weak_avg_max"):
        GateConfig(weak_avg_max=1.5)
    with pytest.raises(ConfigError, match="gate.strong_avg_min"):
        GateConfig(strong_avg_min=0.9, strong_avg_max=0.8)


# -- verifiable mode: k of n answers equivalent to the reference --------------------------------


def vgate(n_weak: int, n_strong: int, *, k: int = 4, qv: bool = True, cfg: GateConfig = CFG) -> FailureMode:
    """The verifiable gate when ``n_weak`` of ``k`` weak and ``n_strong`` of ``k`` strong answers
    are equivalent to the reference."""
    weak = [True] * n_weak + [False] * (k - n_weak)
    strong = [True] * n_strong + [False] * (k - n_strong)
    return check_verifiable(weak, strong, qv_passed=qv, cfg=cfg).mode


@pytest.mark.parametrize(
    "n_weak, n_strong, expected",
    [
        (0, 4, FailureMode.ACCEPTED),
        (1, 3, FailureMode.ACCEPTED),  # both exactly on the boundary
        (1, 4, FailureMode.ACCEPTED),
        (0, 3, FailureMode.ACCEPTED),  # no weak-zero rule: no weak answer right is the point
        (2, 4, FailureMode.TOO_EASY),
        (4, 4, FailureMode.TOO_EASY),
        (1, 2, FailureMode.FAILED_STRONG),
        (0, 0, FailureMode.FAILED_STRONG),
    ],
)
def test_verifiable_gate_is_at_most_1_of_4_weak_and_at_least_3_of_4_strong(n_weak, n_strong, expected):
    assert vgate(n_weak, n_strong) is expected


def test_verifiable_weak_side_is_checked_first_with_reasons():
    assert check_verifiable_weak([True, False, False, False], CFG) is None
    d = check_verifiable_weak([True, True, False, False], CFG)
    assert d is not None and d.mode is FailureMode.TOO_EASY and "2 of 4 weak" in d.reasons[0]
    assert vgate(3, 0) is FailureMode.TOO_EASY  # weak too easy wins over strong too weak
    d = check_verifiable([False] * 4, [True, True, False, False], qv_passed=True, cfg=CFG)
    assert d.mode is FailureMode.FAILED_STRONG and "2 of 4 strong" in d.reasons[0]


def test_verifiable_qv_failure_wins():
    assert vgate(0, 4, qv=False) is FailureMode.FAILED_QV


def test_verifiable_thresholds_are_configurable():
    strict = GateConfig(verifiable_weak_max_correct=0, verifiable_strong_min_correct=4)
    assert vgate(1, 4, cfg=strict) is FailureMode.TOO_EASY
    assert vgate(0, 3, cfg=strict) is FailureMode.FAILED_STRONG
    assert vgate(0, 4, cfg=strict) is FailureMode.ACCEPTED
    loose = GateConfig(verifiable_weak_max_correct=2, verifiable_strong_min_correct=3)
    assert vgate(2, 3, cfg=loose) is FailureMode.ACCEPTED
    with pytest.raises(ConfigError, match="gate.verifiable_strong_min_correct"):
        GateConfig(verifiable_weak_max_correct=2, verifiable_strong_min_correct=2)


# -- answer extraction and normalization ----------------------------------------------------


@pytest.mark.parametrize(
    "a, b",
    [
        ("Final answer: 1,000.", "1000"),
        ("\\boxed{0.50}", "0.5"),
        ("42.0", "42"),
        ("$42$", "42"),
        ("\\(42\\)", "42"),
        ("\\text{Paris}", "paris"),
        ('"Paris"', "PARIS"),
        ("  many   spaces  here ", "many spaces here"),
        ("-1,234,567.5", "-1234567.5"),
    ],
)
def test_normalize_answer_equal_forms(a, b):
    assert normalize_answer(extract_final_answer(a)) == normalize_answer(b)


def test_normalize_answer_keeps_different_values_apart():
    assert normalize_answer("42") != normalize_answer("4.2")
    assert normalize_answer("1,000") != normalize_answer("100")
    assert normalize_answer("0.5") == "0.5" and normalize_answer("\\boxed{0.50}") == "0.5"


def test_normalize_answer_drops_surrounding_brackets():
    # documented: "drop ... surrounding quotes, brackets and trailing punctuation"
    assert normalize_answer("(B)") == normalize_answer("B")
    assert normalize_answer("[42]") == normalize_answer("42")


def test_extract_final_answer_prefers_last_final_line():
    text = "Final answer: 3\nWait, recompute.\nFinal answer: 5"
    assert extract_final_answer(text) == "5"
    assert extract_final_answer("so the final answer is: 12") == "12"


def test_extract_final_answer_falls_back_to_boxed_then_last_line():
    assert extract_final_answer("we get \\boxed{\\frac{1}{2}} here\nthanks") == "\\frac{1}{2}"
    assert extract_final_answer("reasoning\n\n  the value is 9  \n\n") == "the value is 9"
    assert extract_final_answer("   ") == ""
