"""The evaluator identity covers the frozen code: a run resumed after an edit to any file under
inner/evaluator/ is refused, naming the file (issue 15, item 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import inner.engine.run as engine_run
from inner.evaluator import FROZEN_DIR, frozen_files
from inner.sdk.errors import ConfigError
from tests.conftest import run, write_corpus
from tests.test_meta import NEUTRAL_EDIT, MetaScenario, evolve, evolve_config


@pytest.fixture
def meta_corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", ["MARK-T1", "MARK-T2", "MARK-V1", "MARK-V2", "MARK-S1"])


@pytest.fixture
def frozen_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the frozen directory that the identity hashes instead of the real one
    (so that a test can 'edit gate.py' without touching the project's sources)."""
    copy = tmp_path / "frozen"
    shutil.copytree(FROZEN_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    files = sorted(copy.joinpath(p.relative_to(FROZEN_DIR)) for p in frozen_files())
    monkeypatch.setattr(engine_run, "FROZEN_DIR", copy)
    monkeypatch.setattr(engine_run, "frozen_files", lambda: files)
    return copy


def test_frozen_files_are_the_evaluator_directory():
    names = {str(p.relative_to(FROZEN_DIR)) for p in frozen_files()}
    assert {"gate.py", "roles.py", "scoring.py", "answers.py", "prompts/judge.md"} <= names
    assert not any("__pycache__" in n for n in names)
    ident = engine_run.evaluator_identity
    assert callable(ident)


def test_evolve_resumed_after_a_frozen_edit_is_refused_naming_the_file(meta_corpus, server, tmp_path, frozen_copy):
    srv = server(MetaScenario([NEUTRAL_EDIT]))
    evolve(evolve_config(meta_corpus, "meta.max_iterations=0"), tmp_path / "run", srv)
    gate = frozen_copy / "gate.py"
    gate.write_text(gate.read_text() + "\n# a loosened gate\n")
    with pytest.raises(ConfigError, match=r"inner/evaluator/gate\.py") as err:
        evolve(evolve_config(meta_corpus, "meta.max_iterations=0"), tmp_path / "run", srv)
    assert "allow_evaluator_change" in str(err.value)


def test_evolve_without_evaluator_json_beside_recorded_evaluations_is_refused(meta_corpus, server, tmp_path):
    srv = server(MetaScenario([NEUTRAL_EDIT]))
    evolve(evolve_config(meta_corpus, "meta.max_iterations=0"), tmp_path / "run", srv)
    (tmp_path / "run" / "evaluator.json").unlink()
    with pytest.raises(ConfigError, match=r"evaluator\.json is missing"):
        evolve(evolve_config(meta_corpus, "meta.max_iterations=0"), tmp_path / "run", srv)
    (tmp_path / "run" / "evaluator.json").write_text('{"evaluator": ')
    with pytest.raises(ConfigError, match=r"unreadable"):
        evolve(evolve_config(meta_corpus, "meta.max_iterations=0"), tmp_path / "run", srv)


def test_generate_resumed_after_a_frozen_edit_is_refused_naming_the_file(make_cfg, server, tmp_path, frozen_copy):
    from tests.scenario import RoundPlan, Scenario

    srv = server(Scenario({"*": [RoundPlan(weak=[0.9])]}))
    cfg = make_cfg("task.limit=1", "inner.max_rounds=1", "inner.n_weak=1", "inner.n_strong=1")
    run(cfg, tmp_path / "run", srv)
    recorded = json.dumps(engine_run.frozen_identity())
    prompt = frozen_copy / "prompts" / "judge.md"
    prompt.write_text(prompt.read_text() + "\nBe generous.\n")
    assert json.dumps(engine_run.frozen_identity()) != recorded
    with pytest.raises(ConfigError, match=r"inner/evaluator/prompts/judge\.md"):
        run(cfg, tmp_path / "run", srv)
