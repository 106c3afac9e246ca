"""``executor=ray``: the documents of a generation run and of the meta loop's evaluations on Ray
Core actors (a local Ray instance of 2 CPUs, shared by the module), against the scripted server
through the real client and sandbox: the same dataset as ``executor=local``, one record per
document, a worker killed mid-document, a driver killed mid-run, two meta iterations in flight."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

import git  # noqa: E402

from inner.config import ExecutorConfig  # noqa: E402
from inner.engine.documents import load_documents  # noqa: E402
from inner.engine.executor import open_executor  # noqa: E402
from inner.engine.harness import resolve_harness_dir  # noqa: E402
from inner.engine.ray_executor import WORKER_PREFIX  # noqa: E402
from inner.engine.records import RunWriter  # noqa: E402
from inner.engine.run import evaluate_harness  # noqa: E402
from inner.io import read_jsonl  # noqa: E402
from inner.llm.client import LLMClient  # noqa: E402
from inner.sdk.errors import ConfigError  # noqa: E402
from meta.loop import run_evolve  # noqa: E402
from tests.conftest import compose_config, run, write_corpus  # noqa: E402
from tests.scenario import MARK  # noqa: E402
from tests.test_meta import GOOD_EDIT, NEUTRAL_EDIT, MetaScenario, evolve_config  # noqa: E402
from tests.test_resume import ACCEPT, PER_DOC_TOO_EASY_THEN_ACCEPT, TOO_EASY, StatelessScenario  # noqa: E402

pytestmark = pytest.mark.ray

MARKERS = [f"MARK-R{i}" for i in range(1, 7)]
GENERATE = Path(sys.executable).parent / "autodata-generate"


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Any:
    """One local Ray instance (2 CPUs) for the module: the executor joins it (and leaves it
    running) instead of starting its own; subprocess drivers join it through RAY_ADDRESS."""
    ctx = ray.init(num_cpus=2, include_dashboard=False)
    yield ctx
    ray.shutdown()


@pytest.fixture
def corpus6(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", MARKERS)


def _cfg(corpus: Path, *overrides: str) -> Any:
    return compose_config(
        f"task.corpus={corpus}", "progress=false", "inner.max_rounds=2",
        "llm.endpoints.default.max_retries=1", "llm.endpoints.default.timeout_s=20", *overrides,
    )  # fmt: skip


def _dataset(run_dir: Path) -> list[dict[str, Any]]:
    return sorted(
        (json.loads(x) for x in (run_dir / "dataset.jsonl").read_text().splitlines()), key=lambda e: e["doc_id"]
    )


def _one_record_per_document(run_dir: Path, n: int = 6) -> None:
    raw = (run_dir / "dataset.jsonl").read_text()
    assert raw.endswith("\n")
    ds = _dataset(run_dir)
    assert len(ds) == n and len({e["doc_id"] for e in ds}) == n and len({e["example_id"] for e in ds}) == n
    trajs = RunWriter(run_dir, readonly=True).load_trajectories()
    assert len(trajs) == n and all(t.status == "accepted" for t in trajs)


def test_config_group_defaults_and_local_imports_no_ray():
    assert compose_config().executor == ExecutorConfig()
    assert compose_config("executor=ray").executor == ExecutorConfig(kind="ray")
    code = (
        "import sys, inner.cli, inner.engine.run, meta.loop, meta.cli; assert 'ray' not in sys.modules, 'ray imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_ray_dataset_equals_local_one_record_per_document(corpus6, server, tmp_path):
    local_srv = server(StatelessScenario(TOO_EASY, ACCEPT))
    local = run(_cfg(corpus6), tmp_path / "local", local_srv)
    ray_srv = server(StatelessScenario(TOO_EASY, ACCEPT))
    stats = run(_cfg(corpus6, "executor=ray"), tmp_path / "ray", ray_srv)

    assert ray_srv.count() == local_srv.count() == 6 * PER_DOC_TOO_EASY_THEN_ACCEPT
    _one_record_per_document(tmp_path / "ray")
    assert _dataset(tmp_path / "ray") == _dataset(tmp_path / "local")
    for key in (
        "documents",
        "accepted",
        "pass_rate",
        "mean_rounds_to_accept",
        "failure_modes",
        "usage_per_role",
        "final",
    ):
        assert stats[key] == local[key], key
    # the workers' calls reach the driver's meters: this invocation's counts are the local run's
    assert stats["this_invocation"] == local["this_invocation"]
    # and the actors' per-replica counts (one replica here) reach stats.json too
    requests = {e: [r["requests"] for r in reps] for e, reps in stats["replicas"].items()}
    assert requests == {e: [r["requests"] for r in reps] for e, reps in local["replicas"].items()}
    assert requests == {"default": [6 * PER_DOC_TOO_EASY_THEN_ACCEPT]}
    # both actors ran documents, each logging its own calls; together every request the server saw
    logs = sorted((tmp_path / "ray").glob("calls-worker*.jsonl"))
    assert [p.name for p in logs] == ["calls-worker0.jsonl", "calls-worker1.jsonl"]
    lines = [len(p.read_text().splitlines()) for p in logs]
    assert all(lines) and sum(lines) == ray_srv.count()

    # a rerun: every document finished, nothing sent, Ray not even needed, dataset unchanged
    before = ray_srv.count()
    again = run(_cfg(corpus6, "executor=ray"), tmp_path / "ray", ray_srv)
    assert ray_srv.count() == before and again["accepted"] == 6
    _one_record_per_document(tmp_path / "ray")

    # a driver killed after actors finished accepted documents but before it appended their lines:
    # the rerun appends them from the trajectories on disk, without a call
    ds = tmp_path / "ray" / "dataset.jsonl"
    ds.write_text("".join(ds.read_text().splitlines(keepends=True)[:4]))
    run(_cfg(corpus6, "executor=ray"), tmp_path / "ray", ray_srv)
    assert ray_srv.count() == before
    _one_record_per_document(tmp_path / "ray")
    assert _dataset(tmp_path / "ray") == _dataset(tmp_path / "local")


def test_typed_failure_in_a_worker_is_raised_as_it_is_not_retried(corpus6, server, tmp_path):
    srv = server(StatelessScenario(TOO_EASY, ACCEPT))
    cfg = _cfg(corpus6, "executor=ray", "task.limit=2")

    async def go() -> None:
        client = LLMClient(cfg.llm, base_urls={"default": srv.base_url})
        # the actors get no URL for the endpoint: each one's client refuses to start (a ConfigError)
        ex = open_executor(cfg.executor, llm=cfg.llm, base_urls={}, cache_root=tmp_path / "cache",
                           log_dir=tmp_path, max_concurrent_documents=2)  # fmt: skip
        try:
            async with ex as executor:
                await evaluate_harness(
                    tmp_path / "run", cfg=cfg, docs=load_documents(cfg.task),
                    harness_dir=resolve_harness_dir("baseline"), client=client, executor=executor,
                )  # fmt: skip
        finally:
            await client.aclose()

    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="base_url is not set"):
        asyncio.run(go())
    assert time.monotonic() - t0 < 60  # raised at once, not after restarts
    assert srv.count() == 0 and not (tmp_path / "run" / "dataset.jsonl").exists()


def _worker_pid(index: int) -> int:
    (name,) = [n for n in ray.util.list_named_actors() if n.startswith(WORKER_PREFIX) and n.endswith(f"-w{index}")]
    return ray.get(ray.get_actor(name).info.remote())["pid"]


def test_worker_killed_mid_document_is_retried_and_finished_once(corpus6, server, tmp_path):
    plan = StatelessScenario(TOO_EASY, ACCEPT)
    state: dict[str, Any] = {"n": 0, "killed": None}
    lock = threading.Lock()

    def script(role: str, body: dict[str, Any]) -> Any:
        with lock:
            state["n"] += 1
            if state["n"] == 20:  # every document in flight (3 per actor), some rounds recorded
                pid = _worker_pid(0)
                os.kill(pid, signal.SIGKILL)  # a hard exit of the actor's process, mid-document
                state["killed"] = pid
        return plan(role, body)

    srv = server(script, latency_s=0.05)
    stats = run(_cfg(corpus6, "executor=ray", "executor.max_retries=1"), tmp_path / "run", srv)

    pid = state["killed"]
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    # the documents worker 0 had in flight were redone on its restarted successor: the run
    # completed, with exactly one record per document and none recorded twice
    assert stats["documents"] == 6 and stats["accepted"] == 6 and stats["errored"] == 0
    _one_record_per_document(tmp_path / "run")
    assert srv.count() > 6 * PER_DOC_TOO_EASY_THEN_ACCEPT  # what the dead worker had asked was asked again
    for t in RunWriter(tmp_path / "run", readonly=True).load_trajectories():
        assert [r.round for r in t.rounds] == [1, 2]


def _finished_markers(run_dir: Path) -> set[str]:
    if not (run_dir / "trajectories").is_dir():
        return set()
    return {MARK.search(t.title).group(0) for t in RunWriter(run_dir, readonly=True).iter_trajectories() if t.finished}  # type: ignore[union-attr]


def test_driver_killed_mid_run_then_rerun_runs_only_the_missing_documents(corpus6, server, ray_session, tmp_path):
    srv = server(StatelessScenario(TOO_EASY, ACCEPT), latency_s=0.1)
    run_dir = tmp_path / "run"
    cmd = [
        str(GENERATE), "llm=openai", f"llm.endpoints.default.base_url={srv.base_url}",
        "llm.endpoints.default.api_key_env=null", "llm.endpoints.default.max_retries=1",
        f"task.corpus={corpus6}", "inner.max_rounds=2", "progress=false", "executor=ray",
        "executor.documents_per_worker=1", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    # the driver joins the module's Ray instance: its actors die with it (a job's actors share its fate)
    env = {**os.environ, "RAY_ADDRESS": ray_session.address_info["address"]}
    log = (tmp_path / "killed.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(_finished_markers(run_dir)) < 2:  # 2 actors x 1 document: kill with some finished, some not
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no document finished"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    finished = _finished_markers(run_dir)
    assert 2 <= len(finished) < 6
    first = srv.count()

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with srv._lock:
        rerun = srv.requests[first:]
    # zero calls for the documents finished before the kill; the others ran
    assert rerun and not [b for _, b in rerun if any(m in json.dumps(b) for m in finished)]
    _one_record_per_document(run_dir)
    stats = json.loads((run_dir / "stats.json").read_text())
    assert stats["accepted"] == 6 and sum(u["calls"] for u in stats["this_invocation"].values()) == len(rerun)


def test_two_meta_iterations_in_flight_on_ray(tmp_path, server):
    corpus = write_corpus(tmp_path / "corpus", ["MARK-T1", "MARK-T2", "MARK-V1", "MARK-V2", "MARK-S1"])
    srv = server(MetaScenario([GOOD_EDIT, NEUTRAL_EDIT]))
    cfg = evolve_config(
        corpus, "meta.in_flight=2", "meta.max_iterations=2", "meta.confirm_reps=0", "meta.noise_reps=1", "executor=ray"
    )
    run_dir = tmp_path / "run"
    summary = asyncio.run(run_evolve(cfg, run_dir, base_urls={"default": srv.base_url}))

    hist = read_jsonl(run_dir / "history.jsonl")
    assert sorted(h["iteration"] for h in hist) == [1, 2] and summary["iterations"] == 2
    # (both iterations start from the root with the same prompts, so the implementer's reply may be
    # the same for both: the statuses are the meta loop's, whichever executor; here: consistency)
    assert {h["status"] for h in hist} <= {"admitted", "rejected", "duplicate"}
    archive = json.loads((run_dir / "archive.json").read_text())["entries"]
    root = archive[0]["commit"]
    assert all(h["parent"] == root for h in hist)  # both selected while only the root was admitted
    admitted = [h for h in hist if h["status"] == "admitted"]
    assert admitted and sorted(e["commit"] for e in archive[1:]) == sorted(h["candidate"] for h in admitted)
    repo = git.Repo(run_dir / "lineage")
    for h in hist:
        if h.get("candidate"):
            c = repo.commit(h["candidate"])
            assert [p.hexsha for p in c.parents] == [root]
            assert f"iteration: {h['iteration']}" in c.message and f"status: {h['status']}" in c.message
    assert sorted(t.name for t in repo.tags) == sorted(f"admitted/iter-{h['iteration']:04d}" for h in admitted)
    fsck = subprocess.run(
        ["git", "fsck", "--full", "--strict"], cwd=run_dir / "lineage", capture_output=True, text=True
    )
    assert fsck.returncode == 0 and "error" not in fsck.stderr.lower(), fsck.stderr
    assert json.loads((run_dir / "tallies.json").read_text())
    # every evaluation ran on the actors: the driver itself called only the meta roles
    driver_roles = {c["role"] for c in read_jsonl(run_dir / "calls.jsonl")}
    assert driver_roles == {"analyzer", "implementer"}
    worker_roles = {c["role"] for p in run_dir.glob("calls-worker*.jsonl") for c in read_jsonl(p)}
    assert {"challenger", "quality_verifier", "weak_solver", "strong_solver", "judge"} <= worker_roles
