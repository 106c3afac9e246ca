"""Verifiable mode: majority vote of normalized final answers against the reference, no judge."""

from __future__ import annotations

import json
from pathlib import Path

from inner.records import RunWriter
from tests.conftest import run, scenario
from tests.scenario import RoundPlan


def _round(run_dir: Path):
    (traj,) = RunWriter(run_dir).load_trajectories()
    return traj, traj.rounds[-1]


def _cfg(make_cfg, *extra: str):
    return make_cfg("task.verifiable=auto", "task.limit=1", "inner.max_rounds=1", *extra)


def test_strong_right_weak_wrong_is_accepted_without_judge(make_cfg, server, tmp_path):
    plan = RoundPlan(exact_answer="42", weak_answers=["41", "41", "7"], strong_answers=["42", "42", "41"])
    srv = server(scenario(plan))
    stats = run(_cfg(make_cfg), tmp_path / "run", srv)
    assert stats["accepted"] == 1
    assert srv.count("judge") == 0
    assert srv.count("weak_solver") == 3 and srv.count("strong_solver") == 3
    traj, rnd = _round(tmp_path / "run")
    assert rnd.verifiable and rnd.failure_mode.value == "ACCEPTED"
    assert [a.extracted for a in rnd.weak] == ["41", "41", "7"]
    assert rnd.weak_scores == [0.0, 0.0, 0.0] and rnd.strong_scores == [1.0, 1.0, 0.0]
    assert all(a.grades == [] and a.judge_raw == [] for a in rnd.weak + rnd.strong)
    (ex,) = [json.loads(x) for x in (tmp_path / "run" / "dataset.jsonl").read_text().splitlines()]
    assert ex["verifiable"] is True and ex["reference_answer"] == "42"


def test_weak_majority_right_is_too_easy_and_strong_skipped(make_cfg, server, tmp_path):
    plan = RoundPlan(exact_answer="42", weak_answers=["42", "42", "41"], strong_answers=["42", "42", "42"])
    srv = server(scenario(plan))
    stats = run(_cfg(make_cfg), tmp_path / "run", srv)
    assert stats["failure_modes"] == {"TOO_EASY": 1}
    assert srv.count("strong_solver") == 0 and srv.count("judge") == 0
    _, rnd = _round(tmp_path / "run")
    assert rnd.failure_mode.value == "TOO_EASY" and rnd.strong == []


def test_strong_majority_wrong_fails_strong(make_cfg, server, tmp_path):
    plan = RoundPlan(exact_answer="42", weak_answers=["1", "2", "3"], strong_answers=["43", "43", "42"])
    srv = server(scenario(plan))
    stats = run(_cfg(make_cfg), tmp_path / "run", srv)
    assert stats["failure_modes"] == {"FAILED_STRONG": 1} and stats["accepted"] == 0
    _, rnd = _round(tmp_path / "run")
    assert rnd.failure_mode.value == "FAILED_STRONG"
    assert any("'43'" in r for r in rnd.reasons)


def test_normalized_forms_count_as_equal(make_cfg, server, tmp_path):
    plan = RoundPlan(exact_answer="42", weak_answers=["41", "40", "7"], strong_answers=["42.0", "$42$", "41"])
    srv = server(scenario(plan))
    stats = run(_cfg(make_cfg), tmp_path / "run", srv)
    assert stats["accepted"] == 1
    _, rnd = _round(tmp_path / "run")
    assert [a.extracted for a in rnd.strong] == ["42", "42", "41"]
    assert rnd.strong_scores == [1.0, 1.0, 0.0]


def test_normalized_weak_answers_also_vote(make_cfg, server, tmp_path):
    # "42.0" and "\boxed{42}" are the reference: the weak majority knows it -> too easy
    plan = RoundPlan(exact_answer="42", weak_answers=["42.0", "\\boxed{42}", "1"], strong_answers=["42"] * 3)
    srv = server(scenario(plan))
    stats = run(_cfg(make_cfg), tmp_path / "run", srv)
    assert stats["failure_modes"] == {"TOO_EASY": 1}
    assert srv.count("strong_solver") == 0


def test_verifiable_never_uses_the_judge(make_cfg, server, tmp_path):
    plan = RoundPlan(
        exact_answer="42",
        weak_answers=["42", "42", "42"],  # would be TOO_EASY by majority vote
        strong_answers=["42", "42", "42"],
        weak=[0.5, 0.5, 0.5],
        strong=[0.9, 0.9, 0.9],
    )
    srv = server(scenario(plan))
    stats = run(
        make_cfg("task.verifiable=never", "task.limit=1", "inner.max_rounds=1"),
        tmp_path / "run",
        srv,
    )
    assert stats["accepted"] == 1
    assert srv.count("judge") == 6
    _, rnd = _round(tmp_path / "run")
    assert rnd.challenge.answer_is_exact and not rnd.verifiable
    assert rnd.weak_scores == [0.5, 0.5, 0.5] and rnd.strong_scores == [0.9, 0.9, 0.9]


def test_auto_without_exact_answer_uses_the_judge(make_cfg, server, tmp_path):
    srv = server(scenario(RoundPlan()))  # answer_is_exact=False
    stats = run(_cfg(make_cfg), tmp_path / "run", srv)
    assert stats["accepted"] == 1 and srv.count("judge") == 6
    _, rnd = _round(tmp_path / "run")
    assert not rnd.verifiable
