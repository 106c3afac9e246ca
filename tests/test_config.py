"""Configuration: every config group composes with the real Hydra config, the group values are
the documented ones, bad values raise ConfigError naming the key, and the CLI reports a bad
config without a traceback."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from inner.engine.documents import load_documents
from inner.paths import PROJECT_ROOT, resolve_path
from inner.sdk.errors import ConfigError
from tests.conftest import CONF_DIR, compose_config

GENERATE = Path(sys.executable).parent / "autodata-generate"
CONF = PROJECT_ROOT / "conf"
GROUP_OPTIONS = sorted((p.parent.name, p.stem) for p in CONF.glob("*/*.yaml"))
DEMO = "generate_demo"  # the experiment of `make demo` (autodata-generate)
#: the other entry points sharing conf/ groups: (config name, module with register_configs)
OTHER_ENTRY_POINTS = (("evolve", "meta.config"), ("train", "train.config"), ("eval", "train.config"))


def compose_for_any_entry_point(override: str) -> Any:
    """``conf/`` groups (``experiment`` above all) are shared by the console scripts: compose
    with the generate config, else with the first other entry point that accepts the override."""
    try:
        return compose_config(override)
    except ConfigCompositionException as first:
        for name, module in OTHER_ENTRY_POINTS:
            try:
                importlib.import_module(module).register_configs()
            except ImportError:
                continue
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                try:
                    dcfg = compose(config_name=name, overrides=[override])
                except ConfigCompositionException:
                    continue
            return OmegaConf.to_object(dcfg)
        raise first


@pytest.mark.parametrize("group, option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_config_group_option_composes(group, option):
    prefix = "+" if group in ("experiment", "debug") else ""
    cfg = compose_for_any_entry_point(f"{prefix}{group}={option}")  # validated by the dataclasses
    if group == "llm":  # an option is named after its backend, or serves several local models
        assert cfg.llm.backend.kind == option or (cfg.llm.backend.kind == "local" and len(cfg.llm.backend.models) > 1)
    if group == "task":
        assert cfg.task.name == option and resolve_path(cfg.task.corpus).is_dir()
    if group == "rubric":
        assert cfg.rubric.name == option


def test_all_groups_are_covered():
    groups = {g for g, _ in GROUP_OPTIONS}
    assert {"llm", "task", "gate", "rubric", "experiment", "debug"} <= groups
    assert {o for g, o in GROUP_OPTIONS if g == "llm"} >= {"local", "vllm", "openai"}
    assert {o for g, o in GROUP_OPTIONS if g == "task"} >= {"cs_papers", "legal", "math"}
    assert {o for g, o in GROUP_OPTIONS if g == "rubric"} >= {"published", "evolved"}


@pytest.mark.parametrize(
    "override, check",
    [
        (
            "llm=local",
            lambda c: c.llm.backend.kind == "local" and c.llm.endpoints["default"].json_mode == "llama_cpp",
        ),
        (
            "llm=vllm",
            lambda c: (
                c.llm.backend.kind == "vllm"
                and c.llm.backend.vllm_model == "Qwen/Qwen2.5-7B-Instruct"
                and c.llm.backend.extra_args == ["--max-model-len", "16384"]
            ),
        ),
        (
            "llm=openai",
            lambda c: (
                c.llm.backend.kind == "openai"
                and c.llm.endpoints["default"].base_url == "https://api.openai.com/v1"
                and c.llm.endpoints["default"].api_key_env == "OPENAI_API_KEY"
            ),
        ),
        ("task=cs_papers", lambda c: c.task.name == "cs_papers" and c.task.verifiable == "never"),
        ("task=legal", lambda c: c.task.name == "legal" and c.task.corpus == "experiments/corpora/legal"),
        ("task=math", lambda c: c.task.name == "math" and c.task.verifiable == "auto"),
        ("gate=default", lambda c: c.gate.weak_avg_max == 0.65 and c.gate.min_gap == 0.2),
        ("gate=lenient", lambda c: c.gate.weak_avg_max == 0.75 and c.gate.reject_weak_zero is False),
        # the paper's k-of-n rule for exact answers: at most 1 of 4 weak, at least 3 of 4 strong
        (
            "gate=default",
            lambda c: (
                (c.gate.verifiable_weak_max_correct, c.gate.verifiable_strong_min_correct, c.inner.n_verifiable)
                == (1, 3, 4)
            ),
        ),
        # the paper's starting rubric: 10-15 criteria, >= 4 positive and >= 3 pitfalls, weights in [-10, 10]
        (
            "rubric=published",
            lambda c: (
                (c.rubric.min_criteria, c.rubric.max_criteria, c.rubric.min_positive, c.rubric.min_pitfalls)
                == (10, 15, 4, 3)
                and (c.rubric.min_weight, c.rubric.max_weight, c.rubric.partial_credit) == (-10, 10, False)
            ),
        ),
        # the evolved format: 2-15 positive criteria, weights 1..7, no pitfalls
        (
            "rubric=evolved",
            lambda c: (
                (c.rubric.min_criteria, c.rubric.max_criteria, c.rubric.max_pitfalls, c.rubric.min_weight)
                == (2, 15, 0, 1)
                and c.rubric.max_weight == 7
            ),
        ),
        ("task=cs_papers", lambda c: c.rubric.name == "evolved"),  # the default policy
        (
            f"+experiment={DEMO}",
            lambda c: (
                (c.task.limit, c.task.order, c.inner.max_rounds, c.inner.n_weak, c.inner.n_strong)
                == (2, "shortest", 2, 2, 2)
            ),
        ),
        (
            "+debug=tiny",
            lambda c: (
                (c.task.limit, c.inner.max_rounds, c.inner.n_weak, c.inner.n_strong, c.progress) == (1, 1, 1, 1, False)
            ),
        ),
        ("method=cot_self_instruct", lambda c: c.method == "cot_self_instruct"),
    ],
)
def test_config_group_values(override, check):
    assert check(compose_config(override))


def test_config_groups_compose_together():
    cfg = compose_config(
        "llm=vllm", "task=math", "gate=lenient", "rubric=published", f"+experiment={DEMO}", "method=cot_self_instruct"
    )
    assert (cfg.llm.backend.kind, cfg.task.name, cfg.gate.min_gap, cfg.rubric.name, cfg.task.limit, cfg.method) == (
        "vllm",
        "math",
        0.1,
        "published",
        2,
        "cot_self_instruct",
    )


@pytest.mark.parametrize("task", ["cs_papers", "legal", "math"])
def test_shipped_corpora_load(task):
    docs = load_documents(compose_config(f"task={task}").task)
    assert len(docs) >= 10
    assert not any(Path(d.path).name in ("SOURCES.md", "README.md") for d in docs)


@pytest.mark.parametrize(
    "overrides, key, value",
    [
        (["gate.weak_avg_max=1.5"], "gate.weak_avg_max", "1.5"),
        (["inner.max_rounds=0"], "inner.max_rounds", "0"),
        (["inner.n_weak=0"], "inner.n_weak", "0"),
        (["inner.n_verifiable=0"], "inner.n_verifiable", "0"),
        (["method=bogus"], "method", "bogus"),
        (["llm.roles.judge.endpoint=nope"], "llm.roles.judge.endpoint", "nope"),
        (["task.verifiable=maybe"], "task.verifiable", "maybe"),
        (["task.order=random"], "task.order", "random"),
        (["llm.endpoints.default.json_mode=x"], "llm.endpoints.default.json_mode", "x"),
        (["llm.roles.judge.temperature=5"], "llm.roles.judge.temperature", "5"),
        # the harness's budgets
        (["inner.harness_max_calls=0"], "inner.harness_max_calls", "0"),
        (["inner.harness_max_tokens=0"], "inner.harness_max_tokens", "0"),
        (["inner.harness_wall_s=0"], "inner.harness_wall_s", "0"),
        (["inner.harness_cpu_s=0"], "inner.harness_cpu_s", "0"),
        (["inner.harness_memory_mb=100"], "inner.harness_memory_mb", "100"),
        (["inner.harness_max_procs=0"], "inner.harness_max_procs", "0"),
        (["inner.harness_doc_chars=-1"], "inner.harness_doc_chars", "-1"),
        # the verifiable gate
        (["gate.verifiable_weak_max_correct=-1"], "gate.verifiable_weak_max_correct", "-1"),
        (["gate.verifiable_strong_min_correct=1"], "gate.verifiable_strong_min_correct", "1"),
        # the rubric policy
        (["rubric.min_criteria=0"], "rubric.min_criteria", "0"),
        (["rubric.min_criteria=16"], "rubric.min_criteria", "16"),
        (["rubric.max_weight=11"], "rubric.max_weight", "11"),
        (["rubric.min_weight=-11"], "rubric.min_weight", "-11"),
        (["rubric=published", "rubric.max_pitfalls=2"], "rubric.min_pitfalls", "3"),
        (["rubric.max_pitfalls=3", "rubric.min_pitfalls=1"], "rubric.min_pitfalls", "1"),
        (["rubric=published", "rubric.min_positive=0"], "rubric.min_positive", "0"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(overrides, key, value):
    with pytest.raises(ConfigError) as ei:
        compose_config(*overrides)
    msg = str(ei.value)
    assert f"{key}=" in msg and value in msg, msg


def test_unknown_key_is_rejected_by_hydra():
    with pytest.raises(ConfigCompositionException, match="inner.bogus"):
        compose_config("inner.bogus=1")


def _cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [str(GENERATE), *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_bad_config_exits_nonzero_with_the_key_and_no_traceback(tmp_path):
    res = _cli(tmp_path, "inner.max_rounds=0")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "inner.max_rounds" in out and "Traceback" not in out


def test_cli_missing_corpus_exits_nonzero_without_traceback(tmp_path):
    res = _cli(
        tmp_path,
        "llm=openai",
        "llm.endpoints.default.base_url=http://127.0.0.1:9/v1",
        "llm.endpoints.default.api_key_env=null",
        f"task.corpus={tmp_path / 'no-such-corpus'}",
    )
    out = res.stdout + res.stderr
    assert res.returncode == 1
    assert "no-such-corpus" in out and "Traceback" not in out
