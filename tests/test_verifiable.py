"""Verifiable (exact-answer) rounds: chosen by the task and a frozen rule on the reference
answer, never by the challenger; ``inner.n_verifiable`` attempts per side, each final answer
checked for equivalence with the reference (math-verify, else normalized match), no judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inner.engine.records import RunWriter
from inner.evaluator.answers import answers_equivalent, is_exact_reference
from tests.conftest import run, scenario
from tests.scenario import RoundPlan, challenge_json

LONG_FREE_TEXT = (
    "The mechanism works because the gating signal suppresses the residual path during the "
    "early phase of training, which the authors show stabilises the loss curve."
)


def _round(run_dir: Path):
    (traj,) = RunWriter(run_dir).load_trajectories()
    return traj, traj.rounds[-1]


def _cfg(make_cfg, mode: str = "auto", *extra: str):
    return make_cfg(f"task.verifiable={mode}", "task.limit=1", "inner.max_rounds=1", *extra)


# -- the k-of-n gate through the pipeline -----------------------------------------------------


def test_one_of_four_weak_and_three_of_four_strong_is_accepted_without_judge(make_cfg, server, tmp_path):
    plan = RoundPlan(exact_answer="42", weak_answers=["41", "42", "7", "0"], strong_answers=["42", "42", "41", "42"])
    srv = server(scenario(plan))
    stats = run(_cfg(make_cfg, "always"), tmp_path / "run", srv)
    assert stats["accepted"] == 1
    assert srv.count("judge") == 0
    assert srv.count("weak_solver") == 4 and srv.count("strong_solver") == 4  # inner.n_verifiable, not n_weak
    _, rnd = _round(tmp_path / "run")
    assert rnd.verifiable and rnd.failure_mode.value == "ACCEPTED"
    assert [a.extracted for a in rnd.weak] == ["41", "42", "7", "0"]
    assert rnd.weak_scores == [0.0, 1.0, 0.0, 0.0] and rnd.strong_scores == [1.0, 1.0, 0.0, 1.0]
    assert all(a.grades == [] and a.judge_raw == [] for a in rnd.weak + rnd.strong)
    (ex,) = [json.loads(x) for x in (tmp_path / "run" / "dataset.jsonl").read_text().splitlines()]
    assert ex["verifiable"] is True and ex["reference_answer"] == "42"


def test_two_of_four_weak_is_too_easy_and_strong_skipped(make_cfg, server, tmp_path):
    plan = RoundPlan(exact_answer="42", weak_answers=["42", "42", "41", "1"], strong_answers=["42"] * 4)
    srv = server(scenario(plan))
    stats = run(_cfg(make_cfg, "always"), tmp_path / "run", srv)
    assert stats["failure_modes"] == {"TOO_EASY": 1}
    assert srv.count("strong_solver") == 0 and srv.count("judge") == 0
    _, rnd = _round(tmp_path / "run")
    assert rnd.strong == [] and "2 of 4 weak" in rnd.reasons[0]


def test_two_of_four_strong_fails_strong(make_cfg, server, tmp_path):
    plan = RoundPlan(exact_answer="42", weak_answers=["1", "2", "3", "4"], strong_answers=["43", "42", "43", "42"])
    srv = server(scenario(plan))
    stats = run(_cfg(make_cfg, "always"), tmp_path / "run", srv)
    assert stats["failure_modes"] == {"FAILED_STRONG": 1} and stats["accepted"] == 0
    _, rnd = _round(tmp_path / "run")
    assert "2 of 4 strong" in rnd.reasons[0]


def test_gate_thresholds_apply_to_verifiable_rounds(make_cfg, server, tmp_path):
    plan = RoundPlan(exact_answer="42", weak_answers=["41", "42", "7", "0"], strong_answers=["42"] * 4)
    srv = server(scenario(plan))
    stats = run(_cfg(make_cfg, "always", "gate.verifiable_weak_max_correct=0"), tmp_path / "run", srv)
    assert stats["failure_modes"] == {"TOO_EASY": 1}  # 1 of 4 weak is now too many


def test_math_equivalence_counts_as_correct(make_cfg, server, tmp_path):
    # 1/2 = 0.5 = \frac{1}{2} = 2/4; 0.25 and 1/3 are not
    plan = RoundPlan(
        exact_answer="1/2",
        weak_answers=["0.25", "1/3", "\\boxed{0.5}", "2"],
        strong_answers=["0.5", "\\frac{1}{2}", "2/4", "1/3"],
    )
    srv = server(scenario(plan))
    stats = run(_cfg(make_cfg, "auto"), tmp_path / "run", srv)
    assert stats["accepted"] == 1
    _, rnd = _round(tmp_path / "run")
    assert rnd.verifiable
    assert rnd.weak_scores == [0.0, 0.0, 1.0, 0.0] and rnd.strong_scores == [1.0, 1.0, 1.0, 0.0]


# -- who decides that a round is verifiable: the task, never the challenger -------------------


def test_auto_with_an_exact_reference_is_verifiable(make_cfg, server, tmp_path):
    plan = RoundPlan(exact_answer="42", weak_answers=["1", "2", "3", "4"], strong_answers=["42"] * 4)
    srv = server(scenario(plan))
    run(_cfg(make_cfg, "auto"), tmp_path / "run", srv)
    _, rnd = _round(tmp_path / "run")
    assert rnd.verifiable and rnd.failure_mode.value == "ACCEPTED" and srv.count("judge") == 0


def test_challenger_claiming_an_exact_answer_does_not_get_a_verifiable_round(make_cfg, server, tmp_path):
    claim = {**challenge_json("QMARK-A r1", reference=LONG_FREE_TEXT), "answer_is_exact": True}
    srv = server(scenario(RoundPlan(challenge=claim)))
    stats = run(_cfg(make_cfg, "auto"), tmp_path / "run", srv)
    _, rnd = _round(tmp_path / "run")
    assert not rnd.verifiable and rnd.challenge.reference_answer == LONG_FREE_TEXT
    assert srv.count("weak_solver") == 3 and srv.count("judge") == 6  # rubric round: n_weak + n_strong, judged
    assert stats["accepted"] == 1 and rnd.weak_scores == [0.5, 0.5, 0.5]


def test_never_uses_the_judge_even_for_an_exact_reference(make_cfg, server, tmp_path):
    plan = RoundPlan(exact_answer="42", weak_answers=["42"] * 4, strong_answers=["42"] * 4)
    srv = server(scenario(plan))
    stats = run(_cfg(make_cfg, "never"), tmp_path / "run", srv)
    assert stats["accepted"] == 1 and srv.count("judge") == 6
    _, rnd = _round(tmp_path / "run")
    assert not rnd.verifiable and rnd.weak_scores == [0.5, 0.5, 0.5]


def test_always_checks_a_free_text_reference_by_equivalence(make_cfg, server, tmp_path):
    plan = RoundPlan(exact_answer=LONG_FREE_TEXT, weak_answers=["no"] * 4, strong_answers=[LONG_FREE_TEXT] * 4)
    srv = server(scenario(plan))
    stats = run(_cfg(make_cfg, "always"), tmp_path / "run", srv)
    _, rnd = _round(tmp_path / "run")
    assert rnd.verifiable and stats["accepted"] == 1 and srv.count("judge") == 0


# -- the frozen rules -------------------------------------------------------------------------


@pytest.mark.parametrize("reference", ["42", "-3.5", "1/2", "\\frac{1}{2}", "x^2 + 1", "yes", "False", "Paris"])
def test_exact_references(reference):
    assert is_exact_reference(reference)


@pytest.mark.parametrize(
    "reference",
    [LONG_FREE_TEXT, "It depends on the learning rate schedule used", "Why would the loss diverge?", ""],
)
def test_free_text_references_are_not_exact(reference):
    assert not is_exact_reference(reference)


@pytest.mark.parametrize(
    "answer, reference, equal",
    [
        ("0.5", "1/2", True),
        ("\\frac{1}{2}", "0.5", True),
        ("2/4", "1/2", True),
        ("1,000", "1000", True),
        ("$42$", "42", True),
        ("Paris", "paris", True),
        ("0.4", "1/2", False),
        ("43", "42", False),
        ("", "42", False),
        ("London", "Paris", False),
    ],
)
def test_answers_equivalent(answer, reference, equal):
    assert answers_equivalent(answer, reference) is equal
