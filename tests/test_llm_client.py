"""The LLM client through the real ``openai`` client and the scripted server: structured output
and its one repair, retries on transport failures, failure isolation, usage accounting, the
call log and the response cache."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from inner.engine.records import RunWriter
from tests.conftest import run, scenario
from tests.helpers.records import read_jsonl, request_bodies
from tests.scenario import RoundPlan, Scenario, challenge_json
from tests.scripted_server import Reply

ACCEPT = RoundPlan(weak=[0.5, 0.5, 0.5], strong=[0.9, 0.9, 0.9])
PER_ROUND_ACCEPT = 14  # 1 challenger + 1 QV + 3 weak + 3 strong + 6 judge


class FailFirst:
    """Wrap a script: the first ``n`` requests of ``role`` (whose user message contains
    ``match``, if given) get ``reply`` instead of the scenario's answer; ``n=None`` fails
    forever. Other requests go to the wrapped scenario."""

    def __init__(
        self,
        inner: Scenario,
        role: str,
        reply: Reply | str,
        n: int | None = 1,
        match: str | None = None,
    ):
        self.inner, self.role, self.reply, self.n, self.match = inner, role, reply, n, match
        self.failed = 0
        self.last_failed_at = 0.0  # time.monotonic() of the last scripted failure
        self._lock = threading.Lock()

    def __call__(self, role: str, body: dict[str, Any]) -> Any:
        if role == self.role and (self.match is None or self.match in json.dumps(body["messages"])):
            with self._lock:
                if self.n is None or self.failed < self.n:
                    self.failed += 1
                    self.last_failed_at = time.monotonic()
                    return self.reply
        return self.inner(role, body)


def _traj(run_dir: Path, marker: str):
    trajs = [t for t in RunWriter(run_dir).load_trajectories() if marker.lower() in t.doc_id]
    assert len(trajs) == 1
    return trajs[0]


# -- structured output ------------------------------------------------------------------------


def test_malformed_json_is_repaired_once(make_cfg, server, tmp_path):
    srv = server(scenario(RoundPlan(challenge="not json, sorry")))
    stats = run(make_cfg("task.limit=1", "inner.max_rounds=1"), tmp_path / "run", srv)
    assert stats["accepted"] == 1
    traj = RunWriter(tmp_path / "run").load_trajectories()[0]
    assert traj.rounds[0].failure_mode.value == "ACCEPTED"
    replies = [e.text for e in traj.events if e.kind == "llm" and e.role == "challenger"]
    assert len(replies) == 2 and replies[0] == "not json, sorry"
    ch = request_bodies(srv, "challenger")
    assert len(ch) == 2
    repair = ch[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": "not json, sorry"}
    assert "no JSON object found in the reply" in repair[-1]["content"]
    assert traj.harness_usage["challenger"].calls == 2


def test_schema_violation_error_is_sent_back_in_the_repair(make_cfg, server, tmp_path):
    srv = server(scenario(RoundPlan(challenge={"context": "c", "question": "q"})))
    stats = run(make_cfg("task.limit=1", "inner.max_rounds=1"), tmp_path / "run", srv)
    assert stats["accepted"] == 1
    repair = request_bodies(srv, "challenger")[1]["messages"][-1]["content"]
    assert "JSON does not match the schema" in repair
    assert "reference_answer" in repair and "rubric" in repair


def test_malformed_twice_costs_no_round_and_run_continues(make_cfg, server, tmp_path):
    srv = server(FailFirst(scenario(ACCEPT), "challenger", "{still: not json}", n=2, match="MARK-A"))
    stats = run(make_cfg("inner.max_rounds=2"), tmp_path / "run", srv)
    assert stats["accepted"] == 3
    traj = _traj(tmp_path / "run", "MARK-A")
    # the unusable reply never reached the evaluator: the one round is the accepted one
    (r1,) = traj.rounds
    assert r1.failure_mode.value == "ACCEPTED" and traj.status == "accepted"
    replies = [e.text for e in traj.events if e.kind == "llm" and e.role == "challenger"]
    assert replies[:2] == ["{still: not json}", "{still: not json}"]
    notes = [e.text for e in traj.events if e.kind == "note"]
    assert any("unusable" in n and "invalid JSON" in n for n in notes)
    assert stats["failure_modes"] == {"ACCEPTED": 3}


def test_code_fenced_json_parses_without_repair(make_cfg, server, tmp_path):
    fenced = "Here it is:\n```json\n" + json.dumps(challenge_json("QMARK-A r1")) + "\n```\nDone."
    srv = server(scenario(RoundPlan(challenge=fenced)))
    stats = run(make_cfg("task.limit=1", "inner.max_rounds=1"), tmp_path / "run", srv)
    assert stats["accepted"] == 1
    traj = RunWriter(tmp_path / "run").load_trajectories()[0]
    assert [e.text for e in traj.events if e.kind == "llm"] == [fenced]
    assert traj.rounds[0].challenge.question == "QMARK-A r1"
    assert srv.count("challenger") == 1


def test_structured_roles_send_the_schema(make_cfg, server, tmp_path):
    srv = server(scenario(ACCEPT))
    run(
        make_cfg("task.limit=1", "inner.max_rounds=1", "llm.endpoints.default.json_mode=json_schema"),
        tmp_path / "r",
        srv,
    )
    rf = request_bodies(srv, "challenger")[0]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["name"] == "Challenge"
    assert {"context", "question", "reference_answer", "rubric"} <= set(rf["json_schema"]["schema"]["properties"])
    assert "response_format" not in request_bodies(srv, "weak_solver")[0]
    assert request_bodies(srv, "judge")[0]["response_format"]["json_schema"]["name"] == "JudgeOutput"


def test_json_mode_none_sends_no_response_format(make_cfg, server, tmp_path):
    srv = server(scenario(ACCEPT))
    stats = run(
        make_cfg("task.limit=1", "inner.max_rounds=1", "llm.endpoints.default.json_mode=none"),
        tmp_path / "r",
        srv,
    )
    assert stats["accepted"] == 1
    assert all("response_format" not in b for _, b in srv.requests)


def test_role_header_arrives_with_every_request(make_cfg, server, tmp_path):
    srv = server(scenario(RoundPlan(weak=[0.8, 0.8, 0.8]), ACCEPT))
    run(make_cfg("task.limit=1", "inner.max_rounds=2"), tmp_path / "run", srv)
    assert set(srv.roles()) == {
        "challenger",
        "quality_verifier",
        "main_agent",
        "weak_solver",
        "strong_solver",
        "judge",
    }
    # each header names the role whose prompt is in the body
    systems = {"challenger": "challenger", "judge": "strict grader", "weak_solver": "expert solver"}
    for role, phrase in systems.items():
        assert all(phrase in b["messages"][0]["content"] for b in request_bodies(srv, role))


# -- retries ----------------------------------------------------------------------------------


def _retry_run(make_cfg, server, tmp_path, reply: Reply, *extra: str):
    fail = FailFirst(scenario(ACCEPT), "challenger", reply, n=1)
    srv = server(fail)
    stats = run(
        make_cfg("+debug=tiny", "llm.endpoints.default.max_retries=2", *extra),
        tmp_path / "run",
        srv,
    )
    if reply.delay_s:  # let the abandoned slow reply finish before the server stops
        time.sleep(max(0.0, fail.last_failed_at + reply.delay_s + 0.5 - time.monotonic()))
    return srv, stats


def test_500_once_then_success(make_cfg, server, tmp_path):
    srv, stats = _retry_run(make_cfg, server, tmp_path, Reply(status=500))
    assert stats["accepted"] == 1 and stats["errored"] == 0
    assert srv.count("challenger") == 2
    # one logical call, counted once, and no failure recorded
    assert stats["this_invocation"]["challenger"]["calls"] == 1
    assert stats["this_invocation"]["challenger"]["failures"] == 0


def test_503_once_then_success(make_cfg, server, tmp_path):
    srv, stats = _retry_run(make_cfg, server, tmp_path, Reply(status=503))
    assert stats["accepted"] == 1 and srv.count("challenger") == 2


def test_429_once_then_success(make_cfg, server, tmp_path):
    srv, stats = _retry_run(make_cfg, server, tmp_path, Reply(status=429))
    assert stats["accepted"] == 1 and srv.count("challenger") == 2


def test_timeout_then_success(make_cfg, server, tmp_path):
    srv, stats = _retry_run(
        make_cfg,
        server,
        tmp_path,
        Reply(content="late", delay_s=1.5),
        "llm.endpoints.default.timeout_s=0.5",
    )
    assert stats["accepted"] == 1 and stats["errored"] == 0
    assert srv.count("challenger") == 2
    traj = RunWriter(tmp_path / "run").load_trajectories()[0]
    assert "late" not in [e.text for e in traj.events]


def test_dropped_connection_then_success(make_cfg, server, tmp_path):
    srv, stats = _retry_run(make_cfg, server, tmp_path, Reply(drop=True))
    assert stats["accepted"] == 1 and srv.count("challenger") == 2


def test_persistent_500_marks_only_that_document_error_and_a_rerun_finishes_it(make_cfg, server, tmp_path):
    cfg = make_cfg("inner.max_rounds=1", "llm.endpoints.default.max_retries=1")
    bad = server(FailFirst(scenario(ACCEPT), "challenger", Reply(status=500), n=None, match="MARK-B"))
    stats = run(cfg, tmp_path / "run", bad)
    assert stats["errored"] == 1 and stats["accepted"] == 2 and stats["finished"] == 2
    traj_b = _traj(tmp_path / "run", "MARK-B")
    assert traj_b.status == "error" and "LLMStatusError" in traj_b.error and "HTTP 500" in traj_b.error
    assert _traj(tmp_path / "run", "MARK-A").status == "accepted"
    assert _traj(tmp_path / "run", "MARK-C").status == "accepted"
    assert len(read_jsonl(tmp_path / "run" / "dataset.jsonl")) == 2
    assert bad.count("challenger") == 2 + 2  # B: 1 + 1 retry; A and C: 1 each
    failed = [c for c in read_jsonl(tmp_path / "run" / "calls.jsonl") if c["error"]]
    assert len(failed) == 1 and failed[0]["role"] == "challenger"
    assert failed[0]["error"] == "status" and failed[0]["status"] == 500

    good = server(scenario(ACCEPT))
    stats2 = run(cfg, tmp_path / "run", good)
    assert stats2["accepted"] == 3 and stats2["errored"] == 0
    assert good.count() == PER_ROUND_ACCEPT  # only document B is redone
    assert all("MARK-B" in json.dumps(b["messages"]) for _, b in good.requests)
    ds = read_jsonl(tmp_path / "run" / "dataset.jsonl")
    assert len(ds) == 3 and len({e["example_id"] for e in ds}) == 3


def test_a_failed_call_is_counted_as_a_failure_in_stats(make_cfg, server, tmp_path):
    cfg = make_cfg("inner.max_rounds=1", "task.limit=1", "llm.endpoints.default.max_retries=0")
    srv = server(FailFirst(scenario(ACCEPT), "challenger", Reply(status=503), n=None))
    stats = run(cfg, tmp_path / "run", srv)
    assert stats["errored"] == 1 and srv.count() == 1
    challenger = stats["this_invocation"].get("challenger", {})
    assert challenger.get("failures", 0) == 1 and challenger.get("calls", 0) == 0


# -- usage, call log, cache -------------------------------------------------------------------


def test_usage_per_role_and_call_log(make_cfg, server, tmp_path):
    srv = server(scenario(ACCEPT))
    stats = run(make_cfg("inner.max_rounds=1"), tmp_path / "run", srv)
    inv = stats["this_invocation"]
    expected_calls = {
        "challenger": 3,
        "quality_verifier": 3,
        "weak_solver": 9,
        "strong_solver": 9,
        "judge": 18,
    }
    assert {r: u["calls"] for r, u in inv.items()} == expected_calls
    assert all(u["cached_calls"] == 0 and u["failures"] == 0 for u in inv.values())
    for role in expected_calls:
        # the scripted server reports prompt_tokens = characters of the messages // 4
        sent = sum(sum(len(m["content"]) for m in b["messages"]) // 4 for b in request_bodies(srv, role))
        assert inv[role]["prompt_tokens"] == sent
        assert inv[role]["completion_tokens"] >= expected_calls[role]
    # the records carry the same usage, round by round
    assert stats["usage_per_role"] == inv
    assert stats["tokens_total"] == sum(u["prompt_tokens"] + u["completion_tokens"] for u in inv.values())

    calls = read_jsonl(tmp_path / "run" / "calls.jsonl")
    assert len(calls) == srv.count() == sum(expected_calls.values())
    assert Counter(c["role"] for c in calls) == Counter(srv.roles())
    assert all(c["key"] and c["cached"] is False and c["error"] is None for c in calls)
    assert len({c["key"] for c in calls}) == len(calls)  # n attempts are n distinct cache entries


def test_rerun_into_same_run_dir_makes_zero_requests(make_cfg, server, tmp_path):
    srv = server(scenario(ACCEPT))
    cfg = make_cfg("inner.max_rounds=1")
    first = run(cfg, tmp_path / "run", srv)
    n = srv.count()
    dataset = (tmp_path / "run" / "dataset.jsonl").read_text()
    second = run(cfg, tmp_path / "run", srv)
    assert srv.count() == n
    assert second["accepted"] == first["accepted"] == 3
    assert second["this_invocation"] == {}
    assert (tmp_path / "run" / "dataset.jsonl").read_text() == dataset


def test_shared_cache_replays_every_call(make_cfg, server, tmp_path):
    srv = server(scenario(RoundPlan(weak=[0.8, 0.8, 0.8]), ACCEPT))
    cfg = make_cfg("inner.max_rounds=2", f"llm.cache_dir={tmp_path / 'cache'}")
    first = run(cfg, tmp_path / "run1", srv)
    n = srv.count()
    second = run(cfg, tmp_path / "run2", srv)
    assert srv.count() == n  # everything came from the cache
    inv1, inv2 = first["this_invocation"], second["this_invocation"]
    assert set(inv2) == set(inv1)
    for role in inv1:
        assert inv2[role]["calls"] == 0
        assert inv2[role]["cached_calls"] == inv1[role]["calls"]
    # identical records, and the cached calls are logged as such
    assert second["accepted"] == first["accepted"] == 3
    ds1 = read_jsonl(tmp_path / "run1" / "dataset.jsonl")
    ds2 = read_jsonl(tmp_path / "run2" / "dataset.jsonl")
    assert sorted(e["example_id"] for e in ds1) == sorted(e["example_id"] for e in ds2)
    calls2 = read_jsonl(tmp_path / "run2" / "calls.jsonl")
    assert len(calls2) == n and all(c["cached"] for c in calls2)
    assert second["usage_per_role"]["judge"]["cached_calls"] == inv1["judge"]["calls"]
