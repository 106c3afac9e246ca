"""The document loop end to end: the baseline harness in its sandbox, the real openai client,
the scripted server."""

from __future__ import annotations

import json

from inner.engine.records import RunWriter
from tests.conftest import run, scenario
from tests.helpers.records import read_jsonl
from tests.scenario import RoundPlan

ACCEPT = RoundPlan(weak=[0.5, 0.5, 0.5], strong=[0.9, 0.9, 0.9])
TOO_EASY = RoundPlan(weak=[0.8, 0.8, 0.8])
FAILED_STRONG = RoundPlan(weak=[0.5, 0.5, 0.5], strong=[0.6, 0.6, 0.6])


def test_accept_in_round_one_writes_all_records(make_cfg, server, tmp_path):
    srv = server(scenario(ACCEPT))
    stats = run(make_cfg(), tmp_path / "run", srv)
    ds = read_jsonl(tmp_path / "run" / "dataset.jsonl")
    assert len(ds) == 3 and stats["accepted"] == 3 and stats["pass_rate"] == 1.0
    ex = ds[0]
    assert ex["weak_scores"] == [0.5, 0.5, 0.5] and ex["strong_scores"] == [0.9, 0.9, 0.9]
    assert abs(ex["gap"] - 0.4) < 1e-9 and ex["rubric"][0] == {
        "id": "c1",
        "criterion": "states key point 1",
        "weight": 1,
    }
    traj = json.loads(next((tmp_path / "run" / "trajectories").glob("*.json")).read_text())
    assert traj["status"] == "accepted" and len(traj["rounds"]) == 1
    r = traj["rounds"][0]
    assert r["qv"]["passed"] and len(r["weak"]) == 3 and len(r["strong"]) == 3
    grades = {g["id"]: g["score"] for g in r["weak"][0]["grades"]}
    assert len(grades) == 10 and sum(grades.values()) == 5  # binary verdicts, 5 of 10 criteria
    # the evaluator's calls per round: 1 quality check + 3 weak + 3 strong + 6 judge
    assert r["usage"]["judge"]["calls"] == 6 and r["usage"]["quality_verifier"]["calls"] == 1
    assert traj["harness_usage"]["challenger"]["calls"] == 1
    assert [e["kind"] for e in traj["events"]] == ["llm", "evaluate"]
    assert srv.count() == 3 * 14
    assert (tmp_path / "run" / "stats.json").exists() and (tmp_path / "run" / "config.yaml").exists()


def test_weak_first_skips_strong_solver(make_cfg, server, tmp_path):
    srv = server(scenario(TOO_EASY))
    stats = run(make_cfg("inner.max_rounds=1"), tmp_path / "run", srv)
    assert srv.count("strong_solver") == 0 and srv.count("weak_solver") == 9
    assert stats["failure_modes"] == {"TOO_EASY": 3} and stats["pass_rate"] == 0.0


def test_accept_on_round_three_after_feedback(make_cfg, server, tmp_path):
    srv = server(scenario(TOO_EASY, FAILED_STRONG, ACCEPT))
    stats = run(make_cfg("inner.max_rounds=5"), tmp_path / "run", srv)
    assert stats["accepted"] == 3 and stats["mean_rounds_to_accept"] == 3.0
    traj = RunWriter(tmp_path / "run").load_trajectories()[0]
    assert [r.failure_mode.value for r in traj.rounds] == ["TOO_EASY", "FAILED_STRONG", "ACCEPTED"]
    # the grouped feedback reached the challenger of the third round of each document
    prompts = [b["messages"][1]["content"] for role, b in srv.requests if role == "challenger"]
    third = [p for p in prompts if "FAILED ON STRONG" in p]
    assert len(third) == 3
    fb = third[0]
    assert "TOO EASY" in fb and "weak avg 0.80" in fb
    assert "strong avg 0.60" in fb and "gap 0.10" in fb
    assert "entirely new question from a different angle" in fb
    assert srv.count("main_agent") == 2 * 3  # advice after rounds 1 and 2, none after acceptance


def test_budget_exhaustion(make_cfg, server, tmp_path):
    srv = server(scenario(TOO_EASY))
    stats = run(make_cfg("inner.max_rounds=2"), tmp_path / "run", srv)
    assert stats["accepted"] == 0 and stats["finished"] == 3
    trajs = RunWriter(tmp_path / "run").load_trajectories()
    assert all(t.status == "exhausted" and len(t.rounds) == 2 for t in trajs)
    assert not (tmp_path / "run" / "dataset.jsonl").exists() or not (tmp_path / "run" / "dataset.jsonl").read_text()


def test_qv_failure_skips_solvers_and_feeds_reason_back(make_cfg, server, tmp_path):
    srv = server(scenario(RoundPlan(qv=False), ACCEPT))
    run(make_cfg("inner.max_rounds=2"), tmp_path / "run", srv)
    traj = RunWriter(tmp_path / "run").load_trajectories()[0]
    r1 = traj.rounds[0]
    assert r1.failure_mode.value == "FAILED_QV" and r1.weak == [] and "context leaks" in r1.qv.reason
    prompts = [b["messages"][1]["content"] for role, b in srv.requests if role == "challenger"]
    assert any("FAILED QUALITY CHECK" in p and "context leaks the answer" in p for p in prompts)
    assert traj.status == "accepted"
