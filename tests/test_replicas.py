"""Endpoints with replicas (``llm.endpoints.<name>.base_urls``): two scripted servers as two
replicas of one endpoint, through the real ``openai`` client. Least-in-flight balancing within
each replica's ceiling, failover when a replica goes down mid-run (every request still
answered, the counts in ``stats.json``), its return after the cool-down, the pool's rules step
by step, config errors, and ``llm=vllm`` starting several replicas (a stand-in ``vllm`` command
on ``PATH``)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import inner.llm.backends as backends
from inner.config import LLMConfig
from inner.engine.run import run_generate
from inner.llm.client import LLMClient
from inner.llm.probe import probe_endpoints
from inner.llm.replicas import Replica, ReplicaPool
from inner.sdk.errors import BackendError, ConfigError, LLMConnectionError, LLMStatusError
from tests.conftest import compose_config, scenario
from tests.scenario import RoundPlan
from tests.scripted_server import Reply, ScriptedServer

ACCEPT = RoundPlan(weak=[0.5, 0.5, 0.5], strong=[0.9, 0.9, 0.9])


def llm_config(*overrides: str) -> LLMConfig:
    """The real composed ``llm`` config (``llm=openai``: no backend, no key variable)."""
    return compose_config(
        "llm=openai",
        "llm.endpoints.default.api_key_env=null",
        "llm.endpoints.default.base_url=null",
        "llm.endpoints.default.timeout_s=5",
        *overrides,
    ).llm


def replicas_config(*urls: str, max_in_flight: int = 3, retries: int = 0, cooldown_s: float = 60.0) -> LLMConfig:
    return llm_config(
        f"llm.endpoints.default.base_urls=[{','.join(urls)}]",
        f"llm.endpoints.default.max_in_flight={max_in_flight}",
        f"llm.endpoints.default.max_retries={retries}",
        f"llm.endpoints.default.replica_cooldown_s={cooldown_s}",
    )


def echo(role: str, body: dict[str, Any]) -> str:
    return "answer to " + body["messages"][-1]["content"]


async def ask(client: LLMClient, n: int, *, start: int = 0) -> list[str]:
    """``n`` concurrent judge calls with distinct prompts; their texts, in order."""
    msgs = [[{"role": "user", "content": f"q{i}"}] for i in range(start, start + n)]
    comps = await asyncio.gather(*(client.complete("judge", m) for m in msgs))
    return [c.text for c in comps]


def run_client(cfg: LLMConfig, coro_fn: Any) -> Any:
    async def main() -> Any:
        client = LLMClient(cfg)
        try:
            return await coro_fn(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


# == balancing ===============================================================================


def test_two_replicas_share_the_traffic_within_their_ceilings(server):
    a, b = server(echo, latency_s=0.05), server(echo, latency_s=0.05)
    cfg = replicas_config(a.base_url, b.base_url, max_in_flight=3)

    async def go(client: LLMClient) -> Any:
        return await ask(client, 40), client.replica_counts()

    texts, counts = run_client(cfg, go)
    assert texts == [f"answer to q{i}" for i in range(40)]
    ra, rb = counts["default"]
    assert (ra["url"], rb["url"]) == (a.base_url, b.base_url)
    assert ra["requests"] == a.count() and rb["requests"] == b.count()
    assert a.count() + b.count() == 40
    assert a.count() >= 15 and b.count() >= 15, (a.count(), b.count())  # equal servers: about half each
    # each replica's own ceiling, seen by the servers and by the client; both saturated
    assert a.peak_in_flight == b.peak_in_flight == 3
    assert ra["in_flight_peak"] == rb["in_flight_peak"] == 3
    assert ra["failures"] == rb["failures"] == ra["taken_out"] == rb["taken_out"] == 0


def test_the_least_busy_replica_gets_the_next_request(server):
    """Least in flight, not round-robin: with two callers, one call is often waiting on the slow
    replica, so the next call goes to the idle fast one (round-robin would send half of the
    calls to the slow replica)."""
    fast, slow = server(echo, latency_s=0.01), server(echo, latency_s=0.25)
    cfg = replicas_config(fast.base_url, slow.base_url, max_in_flight=4)

    async def two_callers(client: LLMClient) -> list[str]:
        todo = iter(range(40))

        async def caller() -> list[str]:
            return [(await client.complete("judge", [{"role": "user", "content": f"q{i}"}])).text for i in todo]

        return [t for texts in await asyncio.gather(caller(), caller()) for t in texts]

    texts = run_client(cfg, two_callers)
    assert sorted(texts) == sorted(f"answer to q{i}" for i in range(40))
    assert fast.count() + slow.count() == 40
    assert fast.count() >= 32, (fast.count(), slow.count())


# == failover ================================================================================


def test_the_pool_takes_a_replica_out_once_probes_it_alone_and_doubles_its_cool_down():
    """The pool's rules, step by step, without HTTP: requests in flight when a replica fails
    take it out once; while it is out the others take everything, up to their ceilings, and
    further requests wait; after the cool-down it gets one probe at a time; a failed probe
    doubles the cool-down (up to the maximum); a successful one makes it healthy again."""

    async def go() -> None:
        a = Replica(index=0, url="http://a/v1", client=None, max_in_flight=2)
        b = Replica(index=1, url="http://user:secret@b/v1", client=None, max_in_flight=2)
        pool = ReplicaPool("default", [a, b], cooldown_s=0.2, cooldown_max_s=0.3)
        first = [await pool.acquire() for _ in range(3)]
        assert [r.index for r in first] == [0, 1, 0]  # least in flight, ties in turn
        gen = b.generation
        pool.release(b, failed=True, generation=gen, error="connection refused")
        assert (b.taken_out, b.failures, b.probing) == (1, 1, True)
        b2 = await pool.acquire(frozenset({0}))  # tried a already: b is the only one left, out or not
        assert b2 is b
        pool.release(b, failed=True, generation=gen, error="in flight before the take-out")
        assert b.taken_out == 1 and b.failures == 2  # not taken out twice
        waiter = asyncio.ensure_future(pool.acquire())  # a full, b out: it waits
        await asyncio.sleep(0.1)
        assert not waiter.done()
        await asyncio.sleep(0.2)  # b's cool-down is over: the waiter gets it as a probe
        assert waiter.done() and waiter.result() is b
        second = asyncio.ensure_future(pool.acquire())  # one probe at a time while a is healthy
        await asyncio.sleep(0.05)
        assert not second.done()
        t_out = time.monotonic()
        pool.release(b, failed=True, generation=b.generation, error="still down")
        assert b.taken_out == 2 and 0.25 < b.down_until - t_out <= 0.31  # 0.2 x 2, capped at 0.3
        pool.release(a, ok=True)
        assert (await second) is a
        await asyncio.sleep(0.35)
        probe = await pool.acquire()
        assert probe is b
        pool.release(b, ok=True)
        assert (b.probing, b.strikes) == (False, 0)
        assert [r["in_flight_peak"] for r in pool.counts()] == [2, 1]
        assert pool.counts()[1]["url"] == "http://b/v1"  # no credentials in stats.json
        pool.close()

    asyncio.run(go())


class GoesDown:
    """A replica's script that answers ``n`` requests normally, then stops its server (in
    another thread, as a crash would: open connections are closed, new ones refused)."""

    def __init__(self, n: int) -> None:
        self.n, self.seen, self.srv = n, 0, None
        self._lock = threading.Lock()

    def __call__(self, role: str, body: dict[str, Any]) -> Any:
        with self._lock:
            self.seen += 1
            if self.seen == self.n:
                threading.Thread(target=self.srv.stop).start()
        return echo(role, body)


def test_a_replica_that_goes_down_mid_run_loses_no_request_and_comes_back(server):
    script = GoesDown(5)
    a, b = server(echo, latency_s=0.05), server(script, latency_s=0.05)
    script.srv = b
    port_b = b.port
    # the first 60 calls end well within the cool-down (about 1 s at 4 in flight, 50 ms each)
    cfg = replicas_config(a.base_url, b.base_url, max_in_flight=4, retries=1, cooldown_s=3.0)

    async def go(client: LLMClient) -> Any:
        first = await ask(client, 60)
        during = client.replica_counts()["default"], a.count()
        # b back on its port; after its cool-down it gets a probe, then its share again
        back = ScriptedServer(echo, latency_s=0.05, port=port_b)
        back.start()
        try:
            await asyncio.sleep(3.2)
            second = await ask(client, 40, start=60)
            return first, second, during, client.replica_counts()["default"], client.usage.total_failures, back.count()
        finally:
            back.stop()

    first, second, during, after, failures, back_count = run_client(cfg, go)
    assert first == [f"answer to q{i}" for i in range(60)]  # every request answered, in order
    assert second == [f"answer to q{i}" for i in range(60, 100)]
    assert failures == 0  # no call failed: the failed attempts were re-sent
    (ra, rb), a_count = during
    assert rb["taken_out"] == 1  # the requests in flight when it went down take it out once
    assert rb["failures"] >= 1 and ra["failures"] == 0
    # everything b did not answer went to a (b answered at most the requests before its stop)
    assert ra["requests"] == a_count and ra["requests"] >= 60 - script.seen
    assert back_count >= 1  # after the cool-down the returned replica serves again
    assert after[1]["taken_out"] == 1 and after[1]["requests"] > rb["requests"]


def test_a_replica_answering_5xx_is_taken_out_and_its_requests_resent(server):
    a = server(echo, latency_s=0.02)
    b = server(lambda role, body: Reply(status=503), latency_s=0.02)
    cfg = replicas_config(a.base_url, b.base_url, max_in_flight=4, retries=0, cooldown_s=60.0)
    texts = run_client(cfg, lambda client: ask(client, 30))
    assert texts == [f"answer to q{i}" for i in range(30)]
    assert a.count() == 30
    # only the requests sent before it was taken out reached b: at most its ceiling
    assert 1 <= b.count() <= 4


def test_a_request_error_is_not_resent_nor_takes_the_replica_out(server):
    """HTTP 400 is the request's fault: the same request would fail on every replica."""
    a = server(lambda role, body: Reply(status=400))
    b = server(lambda role, body: Reply(status=400))
    cfg = replicas_config(a.base_url, b.base_url, max_in_flight=2)

    async def go(client: LLMClient) -> Any:
        with pytest.raises(LLMStatusError) as ei:
            await client.complete("judge", [{"role": "user", "content": "q"}])
        return ei.value, client.replica_counts()["default"]

    exc, counts = run_client(cfg, go)
    assert exc.status == 400
    assert a.count() + b.count() == 1
    assert sum(r["failures"] for r in counts) == 1 and all(r["taken_out"] == 0 for r in counts)


def test_every_replica_down_fails_each_request_once_per_replica_without_stalling(server):
    a, b = server(echo), server(echo)
    urls = [a.base_url, b.base_url]
    a.stop()
    b.stop()
    cfg = replicas_config(*urls, max_in_flight=2, cooldown_s=60.0)

    async def go(client: LLMClient) -> Any:
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(client.complete("judge", [{"role": "user", "content": f"q{i}"}]) for i in range(6)),
            return_exceptions=True,
        )
        return results, time.monotonic() - t0, client.replica_counts()["default"], client.usage.as_dict()

    results, took, counts, usage = run_client(cfg, go)
    assert all(isinstance(r, LLMConnectionError) for r in results), results
    assert "replica" in str(results[0]) and "the last of 2 tried" in str(results[0])
    assert took < 5.0  # both down: sent anyway, never waiting out a 60 s cool-down
    assert [r["failures"] for r in counts] == [6, 6]
    assert usage["judge"]["failures"] == 6 and usage["judge"]["failure_kinds"] == {"connection": 6}


# == the inner loop and stats.json ===========================================================


def test_generation_over_two_replicas_counts_them_in_stats_json(make_cfg, server, tmp_path):
    plan = scenario(ACCEPT)
    a, b = server(plan), server(plan)
    cfg = make_cfg(
        f"llm.endpoints.default.base_urls=[{a.base_url},{b.base_url}]",
        "llm.endpoints.default.max_in_flight=2",
        "inner.max_rounds=1",
    )
    stats = asyncio.run(run_generate(cfg, tmp_path / "run", base_urls={}))
    assert stats["accepted"] == 3 and stats["errored"] == 0
    ra, rb = stats["replicas"]["default"]
    assert ra["requests"] == a.count() > 0 and rb["requests"] == b.count() > 0
    calls = sum(u["calls"] for u in stats["this_invocation"].values())
    assert ra["requests"] + rb["requests"] == calls
    on_disk = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert on_disk["replicas"] == stats["replicas"]


def test_probe_checks_every_replica(server):
    a = server(echo)
    cfg = replicas_config(a.base_url, "http://127.0.0.1:9/v1")
    with pytest.raises(BackendError, match=r"base_urls\[1\]"):
        probe_endpoints(cfg, timeout_s=2.0)
    cfg = replicas_config(a.base_url, "htp:/nowhere")
    with pytest.raises(ConfigError, match=r"llm.endpoints.default.base_urls\[1\]='htp:/nowhere' is invalid"):
        probe_endpoints(cfg)


# == config ==================================================================================


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["llm.endpoints.default.base_url=http://h:1/v1", "llm.endpoints.default.base_urls=[http://h:2/v1]"],
            "llm.endpoints.default.base_url='http://h:1/v1' and llm.endpoints.default.base_urls=",
        ),
        (
            ["llm.endpoints.default.base_urls=[http://h:1/v1,http://h:1/v1]"],
            "llm.endpoints.default.base_urls[1]='http://h:1/v1' is invalid: is listed twice",
        ),
        (["llm.endpoints.default.base_urls=['',http://h:1/v1]"], "llm.endpoints.default.base_urls[0]=''"),
        (["llm.endpoints.default.replica_cooldown_s=0"], "llm.endpoints.default.replica_cooldown_s=0"),
        (
            ["llm.endpoints.default.replica_cooldown_s=10", "llm.endpoints.default.replica_cooldown_max_s=5"],
            "llm.endpoints.default.replica_cooldown_max_s=5",
        ),
    ],
)
def test_bad_replica_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as ei:
        llm_config(*overrides)
    assert message in str(ei.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["llm=local", "llm.backend.replicas=2"], "only llm=vllm starts replicas"),
        (["llm=vllm", "llm.backend.replicas=0"], "llm.backend.replicas=0"),
        (["llm=vllm", "llm.backend.gpus_per_replica=0"], "llm.backend.gpus_per_replica=0"),
    ],
)
def test_bad_backend_replica_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        compose_config(*overrides)


def test_one_base_url_is_still_one_replica_and_connections_count_replicas(server):
    a = server(echo)
    cfg = llm_config(f"llm.endpoints.default.base_url={a.base_url}", "llm.endpoints.default.max_in_flight=5")
    assert cfg.endpoints["default"].urls == [a.base_url] and cfg.max_connections() == 5
    assert run_client(cfg, lambda client: ask(client, 3)) == [f"answer to q{i}" for i in range(3)]
    assert a.count() == 3
    assert replicas_config("http://h:1/v1", "http://h:2/v1", max_in_flight=5).max_connections() == 10
    assert compose_config("llm=vllm", "llm.backend.replicas=4").llm.max_connections() == 4 * 64


def test_a_missing_url_still_says_how_to_fix_it():
    with pytest.raises(ConfigError, match="base_url is not set and no backend started a server for it"):
        LLMClient(llm_config())


# == llm=vllm with several replicas ==========================================================


def test_vllm_replicas_get_their_own_ports_gpus_and_logs(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cfg = compose_config(
        "llm=vllm", "llm.backend.replicas=2", "llm.backend.gpus_per_replica=2", "llm.backend.port=8100"
    ).llm
    s0, s1 = backends.vllm_servers(cfg, log_dir=tmp_path)
    assert s0.cmd[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    for s, port, gpus, log in ((s0, 8100, "0,1", "llm_server-0.log"), (s1, 8101, "2,3", "llm_server-1.log")):
        assert s.cmd[s.cmd.index("--port") + 1] == str(port)
        assert s.cmd[s.cmd.index("--tensor-parallel-size") + 1] == "2"
        assert s.cmd[-2:] == ["--max-model-len", "16384"]  # extra_args last: they override
        assert s.env == {"CUDA_VISIBLE_DEVICES": gpus}
        assert s.health_url == f"http://127.0.0.1:{port}/health" and s.log_path == tmp_path / log
    # counted within the parent's visible devices
    assert backends.vllm_replica_devices(cfg, 1, "4,5,6,7") == "6,7"
    with pytest.raises(BackendError, match="needs 4 GPUs, but CUDA_VISIBLE_DEVICES='0,1,2' lists 3"):
        backends.vllm_replica_devices(cfg, 0, "0,1,2")


def test_one_vllm_replica_is_the_command_as_before(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    cfg = compose_config("llm=vllm").llm
    (s,) = backends.vllm_servers(cfg, log_dir=tmp_path)
    assert "--tensor-parallel-size" not in s.cmd and s.env is None  # the parent's devices
    assert s.log_path == tmp_path / "llm_server.log"
    ports = backends.vllm_ports(compose_config("llm=vllm", "llm.backend.replicas=3").llm)
    assert len(set(ports)) == 3


#: A stand-in for ``vllm serve``: answers /health, /v1/models and chat completions on the
#: given port, and writes its arguments and CUDA_VISIBLE_DEVICES next to itself.
FAKE_VLLM = """\
#!{python}
import http.server, json, os, sys
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, f"started-{{port}}.json"), "w") as f:
    json.dump({{"args": args, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}}, f)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.reply({{"object": "list", "data": [{{"id": args[args.index("--served-model-name") + 1]}}]}})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.reply({{"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{{"index": 0, "message": {{"role": "assistant", "content": f"from {{port}}"}},
                                 "finish_reason": "stop"}}],
                    "usage": {{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}}})
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_llm_vllm_starts_replicas_and_the_client_balances_over_them(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vllm"
    fake.write_text(FAKE_VLLM.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    cfg = compose_config("llm=vllm", "llm.backend.replicas=2", "llm.backend.startup_timeout_s=30").llm
    with backends.start_backend(cfg, log_dir=tmp_path / "logs") as urls:
        assert list(urls) == ["default"] and len(urls["default"]) == 2
        probe_endpoints(cfg, urls)

        async def go() -> list[str]:
            client = LLMClient(cfg, base_urls=urls)
            try:
                return await ask(client, 8)
            finally:
                await client.aclose()

        texts = asyncio.run(go())
    ports = [int(u.split(":")[-1].split("/")[0]) for u in urls["default"]]
    assert set(texts) == {f"from {p}" for p in ports}  # both replicas answered
    started = [json.loads((bin_dir / f"started-{p}.json").read_text()) for p in ports]
    assert [s["gpus"] for s in started] == ["1", "3"]
    assert all(s["args"][:2] == ["serve", "Qwen/Qwen2.5-7B-Instruct"] for s in started)
    assert (tmp_path / "logs" / "llm_server-0.log").exists() and (tmp_path / "logs" / "llm_server-1.log").exists()
    for p in ports:  # stopped on exit
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", p), timeout=1).close()


def test_a_vllm_replica_that_does_not_come_up_stops_the_others(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vllm"
    # replica on the second port exits at once; the first would serve
    fake.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import os, sys, time
            port = int(sys.argv[sys.argv.index("--port") + 1])
            if port == int(os.environ["FAKE_FAIL_PORT"]):
                print("CUDA out of memory", flush=True)
                sys.exit(1)
            open(os.path.join({str(bin_dir)!r}, f"pid-{{port}}"), "w").write(str(os.getpid()))
            time.sleep(60)
            """
        )
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cfg = compose_config("llm=vllm", "llm.backend.replicas=2", "llm.backend.startup_timeout_s=30").llm
    ports = backends.vllm_ports(cfg)
    monkeypatch.setattr(backends, "vllm_ports", lambda _cfg: ports)
    monkeypatch.setenv("FAKE_FAIL_PORT", str(ports[1]))
    with pytest.raises(BackendError, match="exited with code 1 during startup") as ei:
        with backends.start_backend(cfg, log_dir=tmp_path):
            pass
    assert "CUDA out of memory" in str(ei.value)
    pid = int((bin_dir / f"pid-{ports[0]}").read_text())
    assert not Path(f"/proc/{pid}").exists()  # the replica that was up is stopped (and reaped)
