"""The real embedded model (llm=local): the baseline harness in its sandbox on one short
document, one round. Slow (minutes)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket

import pytest

from inner.engine.records import FailureMode, RunWriter
from inner.engine.run import run_generate
from inner.sdk.contract import challenge_key
from tests.conftest import compose_config


@pytest.mark.slow
def test_one_round_on_embedded_model_writes_complete_records(tmp_path, caplog):
    cfg = compose_config(
        "+debug=tiny",
        "llm=local",
        "task=cs_papers",
        "llm.roles.challenger.doc_chars=2000",
        "llm.roles.quality_verifier.doc_chars=2000",
        "llm.roles.strong_solver.doc_chars=2000",
        "llm.roles.weak_solver.max_tokens=120",
        "llm.roles.strong_solver.max_tokens=120",
    )
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="inner.llm.backends"):
        stats = asyncio.run(run_generate(cfg, run_dir))

    # records exist and parse with the project's own schemas
    (t,) = RunWriter(run_dir).load_trajectories()
    assert t.status in ("accepted", "exhausted"), (t.status, t.end_reason, t.harness_error, t.error)
    assert t.error is None and t.harness_error is None and t.end_reason
    assert t.harness_usage["challenger"].calls >= 1 and t.harness_usage["challenger"].completion_tokens > 0
    assert t.events and t.events[0].kind == "llm" and t.events[0].role == "challenger"
    assert len(t.rounds) <= 1
    if not t.rounds:  # the challenger never wrote a usable challenge: the harness noted it and gave up
        assert any(e.kind == "note" and "unusable" in e.text for e in t.events)
    else:
        r = t.rounds[0]
        assert r.round == 1 and r.challenge is not None and r.key == challenge_key(r.challenge)
        # one round: the document is accepted exactly when its round is; a failed round says why
        assert r.accepted == (t.status == "accepted") and (r.accepted or r.reasons)
        if r.failure_mode is FailureMode.INVALID_CHALLENGE:  # the rubric broke the policy: said why
            assert r.reasons and r.reasons[0].startswith("rubric breaks policy")
        else:
            assert r.qv is not None and r.usage["quality_verifier"].calls == 1
            if not r.qv.passed:  # inner.skip_solvers_on_qv_fail (default): no solver sees it
                assert r.failure_mode is FailureMode.FAILED_QV and not r.weak and not r.strong
            else:
                assert len(r.weak) == 1  # +debug=tiny: one weak attempt
        for a in r.weak + r.strong:
            assert a.answer and a.score is not None and 0.0 <= a.score <= 1.0
            assert {g.id for g in a.grades} == {c.id for c in r.challenge.rubric}
            # the recorded score is the paper's formula on the recorded verdicts
            verdict = {g.id: g.score for g in a.grades}
            positive = sum(c.weight for c in r.challenge.rubric if c.weight > 0)
            raw = sum(c.weight * verdict[c.id] for c in r.challenge.rubric) / positive
            assert a.score == pytest.approx(min(1.0, max(0.0, raw)))
    for name in ("stats.json", "config.yaml", "calls.jsonl", "llm_server.log"):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "stats.json").read_text())
    assert on_disk["finished"] == 1 and on_disk["pass_rate"] in (0.0, 1.0)
    calls = [json.loads(x) for x in (run_dir / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == sum(u["calls"] for u in stats["this_invocation"].values()) > 0
    if stats["accepted"]:
        assert len((run_dir / "dataset.jsonl").read_text().splitlines()) == 1

    # the server was stopped: its port no longer accepts connections
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("starting LLM server")]
    port = int(re.search(r"--port (\d+)", started[0]).group(1))  # type: ignore[union-attr]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0

    # a rerun replays from the records: no server, no LLM call
    caplog.clear()
    again = asyncio.run(run_generate(cfg, run_dir))
    assert sum(u["calls"] for u in again["this_invocation"].values()) == 0
    assert not any(r.getMessage().startswith("starting LLM server") for r in caplog.records)
