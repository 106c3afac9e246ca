"""The real embedded model (llm=local): one short document, one round. Slow (minutes)."""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import urlparse

import pytest

from inner.paths import PROJECT_ROOT
from inner.records import FailureMode, RunWriter
from inner.run import run_generate
from tests.conftest import compose_config


@pytest.mark.slow
def test_one_round_on_embedded_model_writes_complete_records(tmp_path):
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
    stats = asyncio.run(run_generate(cfg, run_dir))

    # records exist and parse with the project's own schemas
    trajs = RunWriter(run_dir).load_trajectories()
    assert len(trajs) == 1
    t = trajs[0]
    assert t.status in ("accepted", "exhausted") and t.error is None
    assert len(t.rounds) == 1
    r = t.rounds[0]
    assert r.failure_mode in set(FailureMode)
    assert r.usage["challenger"].calls >= 1 and r.usage["challenger"].completion_tokens > 0
    if r.challenge is None:  # a typed failure keeps the raw text
        assert r.failure_mode in (FailureMode.INVALID_CHALLENGE, FailureMode.HARNESS_ERROR)
        assert r.challenger_raw or r.harness_error
    else:
        assert r.qv is not None and r.challenge.rubric and all(1 <= c.weight <= 7 for c in r.challenge.rubric)
        if r.weak:
            assert all(a.answer for a in r.weak)
            assert all(a.score is None or 0.0 <= a.score <= 1.0 for a in r.weak)
    for name in ("stats.json", "config.yaml", "calls.jsonl", "llm_server.log"):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "stats.json").read_text())
    assert on_disk["finished"] == 1 and on_disk["pass_rate"] in (0.0, 1.0)
    calls = [json.loads(x) for x in (run_dir / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == sum(u["calls"] for u in stats["this_invocation"].values()) > 0
    assert all(c["error"] is None for c in calls)
    if stats["accepted"]:
        assert len((run_dir / "dataset.jsonl").read_text().splitlines()) == 1

    # the server was stopped: its port no longer accepts connections
    log = (run_dir / "llm_server.log").read_text()
    assert "Uvicorn running" in log or "Application startup complete" in log
    port = urlparse(next(x for x in log.split() if x.startswith("http://127.0.0.1:"))).port
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0

    # a rerun replays from the records: no server, no LLM call
    again = asyncio.run(run_generate(cfg, run_dir))
    assert sum(u["calls"] for u in again["this_invocation"].values()) == 0


@pytest.mark.slow
def test_one_meta_iteration_on_embedded_model(tmp_path):
    import git

    from inner.records import read_jsonl
    from meta.loop import run_evolve
    from tests.test_meta import evolve_config

    cfg = evolve_config(
        PROJECT_ROOT / "experiments" / "corpora" / "cs",
        "+experiment=demo",
        "llm=local",
        "meta.max_iterations=1",
        "meta.in_flight=1",
        "meta.edit_format=auto",
        "meta.harness_timeout_s=600",
        "llm.endpoints.default.timeout_s=900",
        "split.train_files=[distill-weight-banding.txt]",
        "split.val_files=[distill-deconv-checkerboard.txt]",
        "split.test_files=[]",
    )
    summary = asyncio.run(run_evolve(cfg, tmp_path / "evo"))
    (h,) = read_jsonl(tmp_path / "evo" / "history.jsonl")
    assert summary["iterations"] == 1 and h["status"] in ("admitted", "rejected", "invalid-edit", "crashed")
    assert h["analysis"] and h["implementer_reply"] is not None and h["tokens"]["implementer"] > 0
    repo = git.Repo(tmp_path / "evo" / "lineage")
    commits = list(repo.iter_commits("--all"))
    assert len(commits) == (2 if h["candidate"] else 1)  # root (+ the candidate when one was built)
    if h["candidate"]:
        assert [p.hexsha for p in repo.commit(h["candidate"]).parents] == [h["parent"]]
    archive = json.loads((tmp_path / "evo" / "archive.json").read_text())["entries"]
    assert archive[0]["iteration"] == 0 and 0.0 <= archive[0]["val_pass_rate"] <= 1.0
