"""The backends' command lines (vLLM, llama.cpp) and what starting a backend does without a
real server: nothing for openai or when every base URL is set, a clear error for a missing
extra."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

import inner.llm.backends as backends
from inner.sdk.errors import BackendError
from tests.conftest import compose_config


def test_vllm_command_from_the_vllm_config():
    cfg = compose_config("llm=vllm").llm
    assert backends.vllm_command(cfg, 8123) == [
        "vllm",
        "serve",
        "Qwen/Qwen2.5-7B-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--served-model-name",
        "Qwen/Qwen2.5-7B-Instruct",
        "--max-model-len",
        "16384",
    ]


def test_vllm_served_name_and_model_can_differ():
    cfg = compose_config(
        "llm=vllm",
        "llm.backend.vllm_model=/models/ckpt",
        "llm.endpoints.default.model=served",
        "llm.backend.extra_args=[]",
    ).llm
    cmd = backends.vllm_command(cfg, 9000)
    assert cmd[:3] == ["vllm", "serve", "/models/ckpt"]
    assert cmd[cmd.index("--served-model-name") + 1] == "served" and cmd[-1] == "served"


@pytest.mark.local
def test_llama_cpp_command_from_the_local_config_parses_with_the_real_server_cli():
    cfg = compose_config("llm=local", "llm.backend.n_threads=3", "llm.backend.extra_args=[--n_batch,256]").llm
    cmd = backends.llama_cpp_command(cfg, Path("/models/m.gguf"), 8765)
    assert cmd[:3] == [sys.executable, "-m", "llama_cpp.server"]
    assert cmd[3:] == [
        "--model",
        "/models/m.gguf",
        "--model_alias",
        "qwen2.5-coder-0.5b-instruct",
        "--host",
        "127.0.0.1",
        "--port",
        "8765",
        "--n_ctx",
        "8192",
        "--n_threads",
        "3",
        "--n_threads_batch",
        "3",
        "--n_batch",
        "256",
    ]
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    parser = argparse.ArgumentParser()
    add_args_from_model(parser, Settings)
    args = parser.parse_args(cmd[3:])
    model, srv = (
        parse_model_from_args(ModelSettings, args),
        parse_model_from_args(ServerSettings, args),
    )
    assert (model.model, model.model_alias, model.n_ctx, model.n_threads, model.n_threads_batch, model.n_batch) == (
        "/models/m.gguf",
        "qwen2.5-coder-0.5b-instruct",
        8192,
        3,
        3,
        256,
    )
    assert (srv.host, srv.port) == ("127.0.0.1", 8765)


def test_llama_cpp_threads_default_to_all_cores():
    cfg = compose_config("llm=local").llm
    cmd = backends.llama_cpp_command(cfg, Path("m.gguf"), 1)
    assert cmd[cmd.index("--n_threads") + 1] == str(len(backends.usable_cores()))


def test_one_served_model_only():
    cfg = compose_config("llm=local").llm
    from inner.config import EndpointConfig

    cfg.endpoints["second"] = EndpointConfig(model="another-model")
    with pytest.raises(BackendError, match="another-model"):
        backends.vllm_command(cfg, 1)


@pytest.fixture
def no_server(monkeypatch):
    """Fail the test if anything tries to start a server or assemble weights."""

    def forbidden(*a, **k):
        raise AssertionError("a test tried to start a real LLM server")

    monkeypatch.setattr(backends, "ManagedServer", forbidden)
    monkeypatch.setattr(backends, "ensure_gguf", forbidden)


@pytest.mark.usefixtures("no_server")
def test_start_backend_openai_yields_nothing(tmp_path):
    cfg = compose_config("llm=openai").llm
    with backends.start_backend(cfg, log_dir=tmp_path) as urls:
        assert urls == {}
    assert not (tmp_path / "llm_server.log").exists()


@pytest.mark.usefixtures("no_server")
def test_start_backend_local_with_every_base_url_set_starts_nothing(tmp_path):
    cfg = compose_config("llm=local", "llm.endpoints.default.base_url=http://127.0.0.1:9/v1").llm
    with backends.start_backend(cfg, log_dir=tmp_path) as urls:
        assert urls == {}


@pytest.mark.usefixtures("no_server")
def test_start_backend_reports_missing_extras(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a))
    with pytest.raises(BackendError, match=r"pip install -e '\.\[local\]'"):
        backends.start_backend(compose_config("llm=local").llm, log_dir=tmp_path).__enter__()
    monkeypatch.setattr(backends.shutil, "which", lambda name: None)
    with pytest.raises(BackendError, match="pip install vllm"):
        backends.start_backend(compose_config("llm=vllm").llm, log_dir=tmp_path).__enter__()
