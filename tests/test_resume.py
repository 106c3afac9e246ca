"""Resuming a run directory after an interruption: no duplicate examples, finished documents
skipped, cached calls replayed, an unfinished document's recorded rounds reused without new
evaluator calls; a real SIGKILL of ``autodata-generate``; the config identity check."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from inner.engine.records import RunWriter
from inner.engine.run import run_generate
from inner.sdk.errors import ConfigError
from tests.conftest import run, scenario
from tests.scenario import MARK, RoundPlan, Scenario, challenge_json

TOO_EASY = RoundPlan(weak=[0.8, 0.8, 0.8])
ACCEPT = RoundPlan(weak=[0.5, 0.5, 0.5], strong=[0.9, 0.9, 0.9])
# per document: round 1 TOO_EASY = 1 challenger + 1 QV + 3 weak + 3 judge + 1 main agent = 9,
# round 2 ACCEPT = 1 + 1 + 3 + 3 + 6 = 14
PER_DOC_TOO_EASY_THEN_ACCEPT = 9 + 14
#: the evaluator's calls of a TOO_EASY round (QV + 3 weak + 3 judge): what a recorded round saves
TOO_EASY_EVALUATOR_CALLS = 7
EVALUATOR_ROLES = ("quality_verifier", "weak_solver", "strong_solver", "judge")
GENERATE = Path(sys.executable).parent / "autodata-generate"


class StatelessScenario(Scenario):
    """A :class:`Scenario` whose challenger reads the round number from its own prompt
    (1 + the earlier rounds listed in the feedback) instead of counting requests, so the plan
    does not shift when a request is lost in flight or served from the cache. A fresh
    instance answers a resumed run exactly like the interrupted one."""

    def __init__(self, *rounds: RoundPlan) -> None:
        super().__init__({"*": list(rounds)})

    def __call__(self, role: str, body: dict[str, Any]) -> Any:
        if role != "challenger":
            return super().__call__(role, body)
        user = body["messages"][1]["content"]
        marker = MARK.search(user).group(0)  # type: ignore[union-attr]
        rnd = 1 + len(re.findall(r"^\s*- round \d+:", user, re.MULTILINE))
        return challenge_json(f"Q{marker} r{rnd}")


def _dataset(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "dataset.jsonl").read_text().splitlines()]


def _assert_complete_without_duplicates(run_dir: Path, n_docs: int = 3) -> None:
    raw = (run_dir / "dataset.jsonl").read_text()
    assert raw.endswith("\n")
    ds = _dataset(run_dir)
    ids = [e["example_id"] for e in ds]
    assert len(ds) == n_docs and len(set(ids)) == n_docs
    assert len({e["doc_id"] for e in ds}) == n_docs
    trajs = RunWriter(run_dir).load_trajectories()
    assert len(trajs) == n_docs and all(t.status == "accepted" for t in trajs)


def _traj_path(run_dir: Path, marker: str) -> Path:
    (p,) = [p for p in (run_dir / "trajectories").glob("*.json") if marker.lower() in p.name]
    return p


# -- finished and torn records --------------------------------------------------------------


def test_rerun_of_a_finished_run_sends_nothing_and_adds_nothing(make_cfg, server, tmp_path):
    srv = server(scenario(TOO_EASY, ACCEPT))
    cfg = make_cfg("inner.max_rounds=2")
    run(cfg, tmp_path / "run", srv)
    n = srv.count()
    assert n == 3 * PER_DOC_TOO_EASY_THEN_ACCEPT
    stats = run(cfg, tmp_path / "run", srv)
    assert srv.count() == n
    assert stats["accepted"] == 3 and stats["mean_rounds_to_accept"] == 2.0
    _assert_complete_without_duplicates(tmp_path / "run")


def test_torn_dataset_line_and_unfinished_trajectories_are_repaired_from_cache(make_cfg, server, tmp_path):
    srv = server(scenario(TOO_EASY, ACCEPT))
    cfg = make_cfg("inner.max_rounds=2")
    run_dir = tmp_path / "run"
    run(cfg, run_dir, srv)
    n = srv.count()
    ds_path = run_dir / "dataset.jsonl"
    lines = ds_path.read_text().splitlines(keepends=True)
    by_doc = {json.loads(x)["doc_id"]: x for x in lines}
    a_before = _traj_path(run_dir, "MARK-A").read_bytes()

    # Mimic two kills. B: killed while appending its example (torn last line of the dataset),
    # its trajectory still says "running" after round 1. C: killed after its example was
    # appended but before its trajectory was rewritten (example on disk, trajectory "running").
    for marker in ("MARK-B", "MARK-C"):
        path = _traj_path(run_dir, marker)
        traj = json.loads(path.read_text())
        traj["status"], traj["rounds"] = "running", traj["rounds"][:1]
        path.write_text(json.dumps(traj))
    b_line = next(v for k, v in by_doc.items() if "mark-b" in k)
    kept = [x for x in lines if x != b_line]
    ds_path.write_text("".join(kept) + b_line[: len(b_line) // 2])

    stats = run(cfg, run_dir, srv)
    assert srv.count() == n  # everything replayed from the response cache
    inv = stats["this_invocation"]
    assert sum(u["calls"] for u in inv.values()) == 0
    replayed = sum(u["cached_calls"] for u in inv.values())
    # B and C only, and their recorded round 1 is reused without any evaluator call
    assert replayed == 2 * (PER_DOC_TOO_EASY_THEN_ACCEPT - TOO_EASY_EVALUATOR_CALLS)
    _assert_complete_without_duplicates(run_dir)
    assert _traj_path(run_dir, "MARK-A").read_bytes() == a_before  # finished: not touched
    for marker in ("MARK-B", "MARK-C"):
        assert len(json.loads(_traj_path(run_dir, marker).read_text())["rounds"]) == 2


def test_recorded_rounds_of_an_unfinished_document_are_reused_without_evaluator_calls(make_cfg, server, tmp_path):
    cfg = make_cfg("inner.max_rounds=2", "task.limit=1")
    run_dir = tmp_path / "run"
    run(cfg, run_dir, server(StatelessScenario(TOO_EASY, ACCEPT)))
    path = _traj_path(run_dir, "MARK-A")
    traj = json.loads(path.read_text())
    round_one = traj["rounds"][0]
    traj["status"], traj["rounds"] = "running", [round_one]  # killed after round 1 was recorded
    path.write_text(json.dumps(traj))
    (run_dir / "dataset.jsonl").unlink()
    shutil.rmtree(run_dir / "llm_cache")  # nothing replayable: every call made would reach the server

    fresh = server(StatelessScenario(TOO_EASY, ACCEPT))
    stats = run(cfg, run_dir, fresh)
    assert stats["accepted"] == 1
    # the harness runs again (challenger and main agent for round 1 too); round 1's challenge
    # is the recorded one, so the evaluator makes only round 2's calls: 1 QV + 3 + 3 solvers + 6 judge
    assert Counter(fresh.roles()) == {
        "challenger": 2,
        "main_agent": 1,
        "quality_verifier": 1,
        "weak_solver": 3,
        "strong_solver": 3,
        "judge": 6,
    }
    after = json.loads(path.read_text())
    assert after["rounds"][0] == round_one  # the recorded report itself, untouched
    assert [e["text"] for e in after["events"] if e["kind"] == "evaluate"] == ["recorded report returned", "ACCEPTED"]


def test_recorded_accepted_round_of_an_unfinished_document_ends_it_accepted(make_cfg, server, tmp_path):
    # Killed after the accepted round was recorded and its example appended, before the final
    # trajectory write (the sandbox is being stopped): the rerun must finish the document as
    # accepted from the record, with no evaluator call and no second example.
    cfg = make_cfg("inner.max_rounds=2", "task.limit=1")
    run_dir = tmp_path / "run"
    srv = server(StatelessScenario(TOO_EASY, ACCEPT))
    run(cfg, run_dir, srv)
    n = srv.count()
    path = _traj_path(run_dir, "MARK-A")
    traj = json.loads(path.read_text())
    traj["status"], traj["end_reason"] = "running", ""
    path.write_text(json.dumps(traj))
    stats = run(cfg, run_dir, srv)
    inv = stats["this_invocation"]
    assert srv.count() == n and all(inv.get(r, {}).get("cached_calls", 0) == 0 for r in EVALUATOR_ROLES)
    assert json.loads(path.read_text())["status"] == "accepted"
    assert stats["accepted"] == 1 and len(_dataset(run_dir)) == 1


def test_torn_cache_line_is_a_miss(make_cfg, server, tmp_path):
    srv = server(scenario(ACCEPT))
    cfg = make_cfg("inner.max_rounds=1", "task.limit=1", f"llm.cache_dir={tmp_path / 'cache'}")
    run(cfg, tmp_path / "run1", srv)
    n = srv.count()
    (segment,) = sorted((tmp_path / "cache").glob("segment-*.jsonl"))
    lines = segment.read_bytes().splitlines(keepends=True)
    assert len(lines) == n == 14
    segment.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
    stats = run(cfg, tmp_path / "run2", srv)
    assert srv.count() == n + 1  # only that one call is sent again
    assert stats["accepted"] == 1


def test_interrupted_run_resumes_with_fewer_requests(make_cfg, server, tmp_path):
    cfg = make_cfg("inner.max_rounds=2")
    fresh = server(StatelessScenario(TOO_EASY, ACCEPT))
    run(cfg, tmp_path / "fresh", fresh)
    n_fresh = fresh.count()
    assert n_fresh == 3 * PER_DOC_TOO_EASY_THEN_ACCEPT

    # Interrupt the run (like Ctrl-C) once the server has received K requests.
    K = 40
    plan = StatelessScenario(TOO_EASY, ACCEPT)
    lock = threading.Lock()
    state: dict[str, Any] = {"n": 0}

    def script(role: str, body: dict[str, Any]) -> Any:
        with lock:
            state["n"] += 1
            if state["n"] == K:
                state["loop"].call_soon_threadsafe(state["task"].cancel)
        return plan(role, body)

    srv = server(script)
    run_dir = tmp_path / "run"

    async def interrupted() -> bool:
        state["loop"] = asyncio.get_running_loop()
        state["task"] = asyncio.create_task(run_generate(cfg, run_dir, base_urls={"default": srv.base_url}))
        try:
            await state["task"]
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(interrupted())
    assert srv.count() >= K
    trajs = RunWriter(run_dir).load_trajectories()
    assert any(t.status == "running" for t in trajs)  # a document stopped between rounds
    finished_before = sum(t.finished for t in trajs)
    assert finished_before < 3

    # the evaluator calls of rounds the unfinished documents had recorded are not made again
    recorded = sum(
        u.calls + u.cached_calls for t in trajs if not t.finished for r in t.rounds for u in r.usage.values()
    )
    healthy = server(StatelessScenario(TOO_EASY, ACCEPT))
    stats = run(cfg, run_dir, healthy)
    second = healthy.count()
    inv = stats["this_invocation"]
    cached = sum(u["cached_calls"] for u in inv.values())
    assert sum(u["calls"] for u in inv.values()) == second
    # the unfinished documents are replayed: what was cached is not sent again
    assert second + cached == n_fresh - finished_before * PER_DOC_TOO_EASY_THEN_ACCEPT - recorded
    assert cached > 0 and 0 < second < n_fresh
    assert stats["accepted"] == 3 and stats["errored"] == 0
    _assert_complete_without_duplicates(run_dir)


# -- a real SIGKILL -------------------------------------------------------------------------


def _generate_cmd(srv, corpus: Path, run_dir: Path) -> list[str]:
    return [
        str(GENERATE),
        "llm=openai",
        f"llm.endpoints.default.base_url={srv.base_url}",
        "llm.endpoints.default.api_key_env=null",
        "llm.endpoints.default.max_retries=1",
        f"task.corpus={corpus}",
        "inner.max_rounds=3",
        "progress=false",
        f"hydra.run.dir={run_dir}",
    ]


def _rounds_recorded(run_dir: Path) -> int:
    if not (run_dir / "trajectories").is_dir():
        return 0
    return sum(len(t.rounds) for t in RunWriter(run_dir, readonly=True).load_trajectories())


def test_sigkill_mid_run_then_rerun_completes_without_duplicates(server, corpus, tmp_path):
    srv = server(StatelessScenario(TOO_EASY, TOO_EASY, ACCEPT), latency_s=0.2)
    run_dir = tmp_path / "run"
    cmd = _generate_cmd(srv, corpus, run_dir)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}

    log = (tmp_path / "killed.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not _rounds_recorded(run_dir):  # kill once some round is on disk
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no round was recorded"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    killed = RunWriter(run_dir).load_trajectories()
    assert killed and not all(t.finished for t in killed) and any(t.rounds for t in killed)
    first = srv.count()

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    second = srv.count() - first

    single = 3 * (9 + 9 + 14)  # TOO_EASY, TOO_EASY, ACCEPT per document
    assert first + second >= single  # the plan did not shift: every call was made at least once
    assert second < single
    assert first + second < 2 * single
    _assert_complete_without_duplicates(run_dir)
    assert all(len(t.rounds) <= 3 for t in RunWriter(run_dir).load_trajectories())


# -- config identity --------------------------------------------------------------------------


def test_resuming_with_a_different_method_raises_config_error(make_cfg, server, tmp_path):
    srv = server(scenario(ACCEPT))
    run(make_cfg("inner.max_rounds=1", "task.limit=1"), tmp_path / "run", srv)
    n = srv.count()
    with pytest.raises(ConfigError, match=r"different method.*hydra\.run\.dir"):
        run(
            make_cfg("inner.max_rounds=1", "task.limit=1", "method=cot_self_instruct"),
            tmp_path / "run",
            srv,
        )
    with pytest.raises(ConfigError, match="different gate"):
        run(make_cfg("inner.max_rounds=1", "task.limit=1", "gate=lenient"), tmp_path / "run", srv)
    with pytest.raises(ConfigError, match="different inner"):
        run(make_cfg("inner.max_rounds=2", "task.limit=1"), tmp_path / "run", srv)
    assert srv.count() == n  # refused before any request
    assert len(_dataset(tmp_path / "run")) == 1


def test_resuming_under_a_different_rubric_policy_raises_config_error(make_cfg, server, tmp_path):
    # the rubric policy is part of the frozen evaluator: examples accepted under two policies
    # must not be mixed in one run directory
    srv = server(scenario(ACCEPT))
    run(make_cfg("inner.max_rounds=1", "task.limit=1"), tmp_path / "run", srv)
    n = srv.count()
    with pytest.raises(ConfigError, match="different rubric"):
        run(make_cfg("inner.max_rounds=1", "task.limit=1", "rubric=published"), tmp_path / "run", srv)
    assert srv.count() == n
