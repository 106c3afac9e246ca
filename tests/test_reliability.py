"""Reliability: typed, counted, retried and uncached LLM call failures (through the real client
and the scripted server); honest exit codes of the console scripts; unknown config keys and
bad endpoints refused up front; durable records; a prompt stop on SIGINT and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from inner.config import EndpointConfig, LLMConfig
from inner.engine.records import Example, RunWriter
from inner.io import append_jsonl, atomic_write_text, read_jsonl
from inner.llm.cache import ResponseCache
from inner.llm.client import LLMClient
from inner.llm.probe import probe_endpoints
from inner.sdk import errors
from tests.conftest import scenario, write_corpus
from tests.scenario import RoundPlan
from tests.scripted_server import Reply, ScriptedServer

BIN = Path(sys.executable).parent
GENERATE = BIN / "autodata-generate"
TIMEOUT_S = 0.5

#: one fault per way a call can fail -> (exception class, kind in calls.jsonl, HTTP status)
FAULTS: dict[str, tuple[Reply, type[errors.LLMCallError], int | None]] = {
    "http_500": (Reply(status=500), errors.LLMStatusError, 500),
    "http_429": (Reply(status=429, headers={"retry-after": "0.2"}), errors.LLMStatusError, 429),
    "timeout": (Reply(content="late", delay_s=TIMEOUT_S + 0.5), errors.LLMTimeoutError, None),
    "drop": (Reply(drop=True), errors.LLMConnectionError, None),
    "html_200": (
        Reply(raw_body="<html>502 Bad Gateway</html>", content_type="text/html"),
        errors.LLMBadResponseError,
        None,
    ),
    "broken_json_200": (
        Reply(raw_body='{"choices": [', content_type="application/json"),
        errors.LLMBadResponseError,
        None,
    ),
    "no_choices": (Reply(no_choices=True), errors.LLMBadResponseError, None),
    "empty_content": (Reply(content=""), errors.LLMEmptyError, None),
}


class Script:
    """Answers ``"ok"`` (or ``{"a": 1}`` for structured calls) after ``fail`` faulty replies."""

    def __init__(self, fault: Reply | None, fail: int | None) -> None:
        self.fault, self.fail, self.sent = fault, fail, 0
        self._lock = threading.Lock()

    def __call__(self, role: str, body: dict[str, Any]) -> Any:
        with self._lock:
            if self.fault is not None and (self.fail is None or self.sent < self.fail):
                self.sent += 1
                return self.fault
        return {"a": 1} if body.get("response_format") else "ok"


def _client(url: str, tmp: Path, *, retries: int = 1) -> LLMClient:
    cfg = LLMConfig(endpoints={"default": EndpointConfig(base_url=url, max_retries=retries, timeout_s=TIMEOUT_S)})
    return LLMClient(cfg, cache=ResponseCache(tmp / "cache"), call_log=tmp / "calls.jsonl")


def _call(url: str, tmp: Path, **kw: Any) -> tuple[Any, LLMClient]:
    async def go() -> tuple[Any, LLMClient]:
        client = _client(url, tmp, **kw)
        try:
            return await client.complete("judge", [{"role": "user", "content": "hi"}]), client
        except errors.LLMCallError as exc:
            return exc, client
        finally:
            await client.aclose()

    return asyncio.run(go())


def _lines(p: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


# == typed failures, retries, cache ==========================================================


@pytest.mark.parametrize("name", list(FAULTS))
def test_one_fault_is_retried_then_succeeds(name, tmp_path):
    reply, _, _ = FAULTS[name]
    script = Script(reply, fail=1)
    with ScriptedServer(script) as url:
        comp, client = _call(url, tmp_path)
    if reply.delay_s:
        time.sleep(reply.delay_s)  # let the abandoned reply finish before the server stops
    assert comp.text == "ok" and script.sent == 1
    assert client.usage.roles["judge"].calls == 1 and client.usage.total_failures == 0
    assert [c["error"] for c in _lines(tmp_path / "calls.jsonl")] == [None]


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_persistent_fault_is_one_typed_counted_uncached_failure(name, tmp_path):
    reply, cls, status = FAULTS[name]
    script = Script(reply, fail=None)
    with ScriptedServer(script) as url:
        exc, client = _call(url, tmp_path, retries=1)
        sent = script.sent
        if reply.delay_s:
            time.sleep(reply.delay_s)
    assert type(exc) is cls and isinstance(exc, errors.LLMCallError)
    assert (exc.role, exc.endpoint, exc.status, exc.kind) == ("judge", "default", status, cls.kind)
    assert exc.cause and "after 1 retries" in str(exc)
    assert sent == 2  # the first attempt and one retry
    usage = client.usage.as_dict()["judge"]
    assert usage["failures"] == 1 and usage["failure_kinds"] == {cls.kind: 1} and usage["calls"] == 0
    (line,) = _lines(tmp_path / "calls.jsonl")
    assert line["error"] == cls.kind and line["role"] == "judge" and line["status"] == status and line["key"]
    assert len(ResponseCache(tmp_path / "cache")) == 0  # a rerun asks again
    with ScriptedServer(Script(None, 0)) as url:  # ... and gets the answer
        comp, client2 = _call(url, tmp_path)
    assert comp.text == "ok" and not comp.cached and client2.usage.total_failures == 0


def test_retry_after_is_honoured(tmp_path):
    with ScriptedServer(Script(Reply(status=429, headers={"retry-after": "1"}), fail=1)) as url:
        t0 = time.monotonic()
        comp, _ = _call(url, tmp_path)
    assert comp.text == "ok" and time.monotonic() - t0 >= 0.9


class Out(BaseModel):
    a: int


def test_schema_failure_after_repair_is_counted_logged_and_not_cached(tmp_path):
    async def go(url: str) -> tuple[Any, LLMClient]:
        client = _client(url, tmp_path)
        try:
            return await client.complete_json("judge", [{"role": "user", "content": "hi"}], Out), client
        finally:
            await client.aclose()

    bad = Script(Reply(content="not json at all"), fail=None)
    with ScriptedServer(bad) as url:
        res, client = asyncio.run(go(url))
    assert not res.ok and res.raw == ["not json at all"] * 2 and "no JSON object" in res.error
    assert bad.sent == 2
    assert client.usage.as_dict()["judge"]["failure_kinds"] == {"schema": 1}
    lines = _lines(tmp_path / "calls.jsonl")
    assert [c["error"] for c in lines] == [None, None, "schema"]
    assert len(ResponseCache(tmp_path / "cache")) == 0
    # a rerun asks again; a usable reply (here after one repair) is cached with its repair
    fixed = Script(Reply(content="still not json"), fail=1)
    with ScriptedServer(fixed) as url:
        res, client = asyncio.run(go(url))
    assert res.ok and res.value.a == 1 and fixed.sent == 1
    assert client.usage.total_failures == 0 and len(ResponseCache(tmp_path / "cache")) == 2


# == config errors up front ==================================================================


def _cli(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [str(GENERATE), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def _openai_args(url: str, corpus: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "llm=openai", f"llm.endpoints.default.base_url={url}", "llm.endpoints.default.api_key_env=null",
        "llm.endpoints.default.max_retries=1", f"task.corpus={corpus}", "inner.max_rounds=1", "progress=false",
        *extra, f"hydra.run.dir={run_dir}",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+inner.no_such_key=1", "inner.no_such_key is not a config key"),
        ("+inner.max_round=2", "inner.max_round is not a config key (did you mean inner.max_rounds?)"),
        ("+llm.roles.judge.temprature=0", "did you mean llm.roles.judge.temperature?"),
        ("+llm.endpoints.default.modle=x", "did you mean llm.endpoints.default.model?"),
    ],
)
def test_unknown_keys_are_refused_before_any_work(override, expected, server, corpus, tmp_path):
    srv = server(scenario(RoundPlan()))
    res = _cli(tmp_path, *_openai_args(srv.base_url, corpus, tmp_path / "run", override))
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert expected in out and "Traceback" not in out
    assert srv.count() == 0 and not (tmp_path / "run" / "trajectories").exists()


def test_unknown_keys_walk_the_schema_not_free_dicts():
    from hydra import compose, initialize_config_dir

    from inner.entrypoint import unknown_keys
    from inner.paths import PROJECT_ROOT

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        clean = compose(config_name="generate", overrides=["llm=openai"])
        bad = compose(config_name="generate", overrides=["+inner.bogus=1", "+llm.backend.n_ctxx=1"])
    assert unknown_keys(clean) == []  # endpoint names (a dict) are free keys
    assert [k for k, _ in unknown_keys(bad)] == ["llm.backend.n_ctxx", "inner.bogus"] or [
        k for k, _ in unknown_keys(bad)
    ] == ["inner.bogus", "llm.backend.n_ctxx"]


def test_probe_refuses_bad_or_unreachable_endpoints_with_one_message(caplog):
    def cfg(url: str | None, **kw: Any) -> LLMConfig:
        return LLMConfig(endpoints={"default": EndpointConfig(base_url=url, **kw)})

    with pytest.raises(errors.ConfigError, match=r"base_url='htp://x/v1' is invalid"):
        probe_endpoints(cfg("htp://x/v1"))
    with pytest.raises(errors.ConfigError, match="Port out of range"):
        probe_endpoints(cfg("http://127.0.0.1:99999/v1"))
    with pytest.raises(errors.BackendError, match=r"cannot be reached: ConnectError.*llm.endpoints.default.base_url"):
        probe_endpoints(cfg("http://127.0.0.1:9/v1"))
    with pytest.raises(errors.ConfigError, match="is not set"):
        probe_endpoints(cfg(None))
    with ScriptedServer(lambda r, b: "x") as url:
        probe_endpoints(cfg(url, model="scripted"))  # reachable, model listed: silent
        assert not caplog.records
        probe_endpoints(cfg(None, model="gpt-x"), {"default": url})
        assert "does not list model 'gpt-x'" in caplog.text


def test_probe_refuses_a_rejected_key(monkeypatch):
    def script(role: str, body: dict[str, Any]) -> str:
        return "x"

    srv = ScriptedServer(script)
    url = srv.start()
    try:
        monkeypatch.setenv("AUTODATA_TEST_KEY", "sk-bad")
        import httpx2

        real_get = httpx2.get

        def get(u: str, **kw: Any) -> Any:
            resp = real_get(u, **kw)
            return (
                httpx2.Response(401, request=resp.request)
                if kw["headers"]["Authorization"] == "Bearer sk-bad"
                else resp
            )

        monkeypatch.setattr(httpx2, "get", get)
        with pytest.raises(errors.ConfigError, match=r"refused the API key \(HTTP 401"):
            probe_endpoints(
                LLMConfig(endpoints={"default": EndpointConfig(base_url=url, api_key_env="AUTODATA_TEST_KEY")})
            )
    finally:
        srv.stop()


# == exit codes ==============================================================================


def test_exit_code_3_with_the_rerun_command_then_0_after_the_rerun(server, corpus, tmp_path):
    bad = Reply(status=503)

    def flaky(role: str, body: dict[str, Any]) -> Any:
        return bad if role == "challenger" and "MARK-B" in json.dumps(body["messages"]) else inner(role, body)

    inner = scenario(RoundPlan())
    srv = server(flaky)
    run_dir = tmp_path / "run"
    res = _cli(tmp_path, *_openai_args(srv.base_url, corpus, run_dir))
    out = res.stdout + res.stderr
    assert res.returncode == 3, out
    assert "1 of 3 documents ended in error (LLM call failures: status 1)" in out
    assert "calls.jsonl" in out and "llm_server.log" not in out
    rerun = out.split("A rerun redoes exactly those documents: ", 1)[1].split("\n")[0].strip()
    assert rerun.startswith("autodata-generate ") and f"hydra.run.dir={run_dir}" in rerun
    assert json.loads((run_dir / "stats.json").read_text())["errored"] == 1

    good = server(scenario(RoundPlan()))
    args = [a.replace(srv.base_url, good.base_url) for a in rerun.split()[1:]]
    res2 = _cli(tmp_path, *args)
    assert res2.returncode == 0, res2.stdout + res2.stderr
    assert all("MARK-B" in json.dumps(b["messages"]) for _, b in good.requests) and good.count() == 14
    assert len(_lines(run_dir / "dataset.jsonl")) == 3


def test_evolve_exit_code_maps_a_circuit_breaker():
    from meta.cli import exit_code

    assert exit_code({"stop_reason": "circuit breaker: 5 evaluations in a row ended in error"}) == 4
    assert exit_code({"stop_reason": "meta.max_iterations=2 reached"}) == 0


# == durable records =========================================================================


def _example(i: int) -> Example:
    return Example(
        example_id=f"d{i}:q", doc_id=f"d{i}", task="t", method="m", harness_id="h@1", round=1, context="c",
        question=f"q{i}", reference_answer="a", rubric=[{"id": "c1", "criterion": "x", "weight": 1}],
        question_type="other", verifiable=False, weak_scores=[0.5], strong_scores=[0.9], weak_avg=0.5,
        strong_avg=0.9, gap=0.4,
    )  # fmt: skip


def test_an_append_after_a_torn_line_stays_separate(tmp_path):
    w = RunWriter(tmp_path / "run")
    w.append_example(_example(1))
    with w.dataset_path.open("a") as fh:  # a kill in the middle of the next write
        fh.write(_example(2).model_dump_json()[:40])
    w.append_example(_example(3))
    raw = w.dataset_path.read_text().splitlines()
    assert len(raw) == 3 and Example.model_validate_json(raw[2]).example_id == "d3:q"
    # the next start drops the torn line and keeps both complete examples
    assert [e.example_id for e in RunWriter(tmp_path / "run").load_examples(repair=True)] == ["d1:q", "d3:q"]
    assert len(w.dataset_path.read_text().splitlines()) == 2


def test_a_record_glued_to_a_torn_line_is_recovered(tmp_path):
    w = RunWriter(tmp_path / "run")
    w.dataset_path.write_text(_example(1).model_dump_json()[:50] + _example(2).model_dump_json() + "\n")
    assert [e.example_id for e in RunWriter(tmp_path / "run").load_examples(repair=True)] == ["d2:q"]
    assert w.dataset_path.read_text() == _example(2).model_dump_json() + "\n"
    p = tmp_path / "history.jsonl"
    p.write_text('{"iteration": 1}\n{"iteration": 2, "x": {"y"' + '{"iteration": 3, "x": {"y": 1}}\n')
    append_jsonl(p, {"iteration": 4})
    assert [r["iteration"] for r in read_jsonl(p)] == [1, 3, 4]


def test_atomic_write_fsyncs_the_file_and_the_directory(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_text(tmp_path / "d" / "splits.json", "{}\n")
    assert (tmp_path / "d" / "splits.json").read_text() == "{}\n"
    assert len(synced) == 2 and ".splits.json." in synced[0] and synced[1] == str(tmp_path / "d")
    synced.clear()
    append_jsonl(tmp_path / "d" / "h.jsonl", {"a": 1})  # a new file: its directory too
    assert synced == [str(tmp_path / "d" / "h.jsonl"), str(tmp_path / "d")]


# == a prompt stop ===========================================================================

BUSY_HARNESS = """
import time


async def run(agent):
    await agent.llm("challenger", [{"role": "user", "content": agent.document("challenger")}])
    while True:  # a harness that never awaits again
        time.sleep(0.01)
"""


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(pred: Any, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "the run never got busy"
        time.sleep(0.05)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_one_signal_stops_a_run_waiting_on_the_llm_within_5_s(sig, code, server, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", ["MARK-A", "MARK-B", "MARK-C"])

    def script(role: str, body: dict[str, Any]) -> Any:
        if "MARK-A" in json.dumps(body["messages"]):
            return inner(role, body)
        return Reply(content="too late", delay_s=60)

    inner = scenario(RoundPlan())
    srv = server(script)
    run_dir = tmp_path / "run"
    proc = _start(
        [str(GENERATE), *_openai_args(srv.base_url, corpus, run_dir, "llm.endpoints.default.timeout_s=120")], tmp_path
    )

    def a_done_b_c_waiting() -> bool:
        a = [t for t in RunWriter(run_dir, readonly=True).load_trajectories() if "mark-a" in t.doc_id]
        return srv.count() >= 16 and bool(a) and a[0].status == "accepted"

    _wait_for(a_done_b_c_waiting, proc)  # document A finished, B and C waiting on the server
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 5.0, out
    assert proc.returncode == code, out
    assert f"interrupted by {sig.name}" in out and "Traceback" not in out
    trajs = {t.doc_id.split("-")[2]: t for t in RunWriter(run_dir).load_trajectories()}
    assert trajs["a"].status == "accepted" and len(_lines(run_dir / "dataset.jsonl")) == 1


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_one_signal_stops_a_run_whose_harness_is_busy_within_5_s(sig, code, server, corpus, tmp_path):
    harness = tmp_path / "busy_harness"
    harness.mkdir()
    (harness / "harness.py").write_text(textwrap.dedent(BUSY_HARNESS))
    srv = server(scenario(RoundPlan()))
    run_dir = tmp_path / "run"
    proc = _start([str(GENERATE), *_openai_args(srv.base_url, corpus, run_dir, f"harness={harness}")], tmp_path)
    _wait_for(lambda: srv.count("challenger") >= 3, proc)  # every harness got its reply, then spins
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 5.0, out
    assert proc.returncode == code, out


def test_run_async_exits_even_when_the_event_loop_is_blocked(tmp_path):
    prog = textwrap.dedent(
        """
        import time
        from inner.entrypoint import cli_guard, run_async

        async def main():
            print("READY", flush=True)
            time.sleep(600)  # blocks the event loop: cancellation cannot reach it

        with cli_guard():
            run_async(main())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", prog], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 5.0 and proc.returncode == 143, out
    assert "did not stop within 4 s of SIGTERM" in out


def test_an_unreachable_endpoint_is_one_clear_error_before_any_document(corpus, tmp_path):
    res = _cli(tmp_path, *_openai_args("http://127.0.0.1:9/v1", corpus, tmp_path / "run"))
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert out.count("cannot be reached") == 1 and "llm.endpoints.default.base_url" in out and "Traceback" not in out
    assert not list((tmp_path / "run").glob("trajectories/*.json"))


def test_a_run_that_failed_wholly_on_a_wrong_model_reruns_with_the_right_one(server, corpus, tmp_path):
    inner = scenario(RoundPlan())

    def script(role: str, body: dict[str, Any]) -> Any:
        if body["model"] != "right-model":
            return Reply(status=404)  # what OpenAI-compatible servers answer for an unknown model
        return inner(role, body)

    srv = server(script)
    run_dir = tmp_path / "run"
    first = _cli(tmp_path, *_openai_args(srv.base_url, corpus, run_dir, "llm.endpoints.default.model=wrong-model"))
    assert first.returncode == 3, first.stdout + first.stderr
    assert "every document ended in error" in first.stdout + first.stderr
    second = _cli(tmp_path, *_openai_args(srv.base_url, corpus, run_dir, "llm.endpoints.default.model=right-model"))
    assert second.returncode == 0, second.stdout + second.stderr
    assert len(_lines(run_dir / "dataset.jsonl")) == 3
