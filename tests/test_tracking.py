"""Optional W&B tracking in offline mode (no network): metrics land in <run>/wandb/."""

from __future__ import annotations

import pytest

from inner.sdk.errors import ConfigError
from inner.tracking import LoggerConfig, NullTracker, build_tracker, flatten
from tests.conftest import run, scenario
from tests.scenario import RoundPlan
from tests.test_meta import GOOD_EDIT, MetaScenario, evolve, evolve_config, write_corpus


def _records(run_dir) -> bytes:
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    return files[0].read_bytes()


def test_generate_logs_progress_and_stats_offline(make_cfg, server, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    srv = server(scenario(RoundPlan(weak=[0.5, 0.5, 0.5], strong=[0.9, 0.9, 0.9])))
    run(make_cfg("logger=wandb"), tmp_path / "run", srv)
    data = _records(tmp_path / "run")
    for key in (b"documents_done", b"pass_rate", b"final/weak_avg", b"usage_per_role/judge/calls"):
        assert key in data, key


def test_evolve_logs_iterations_offline(server, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    corpus = write_corpus(tmp_path / "corpus", ["MARK-T1", "MARK-T2", "MARK-V1", "MARK-V2", "MARK-S1"])
    srv = server(MetaScenario([GOOD_EDIT]))
    evolve(evolve_config(corpus, "meta.max_iterations=1", "logger=wandb"), tmp_path / "evo", srv)
    data = _records(tmp_path / "evo")
    assert b"candidate_val" in data and b"best_so_far" in data and b"best_val_pass_rate" in data


def test_logger_off_by_default_and_bad_values(make_cfg):
    cfg = make_cfg()
    assert cfg.logger.kind == "none"
    assert isinstance(build_tracker(cfg.logger, run_dir=None, config={}, job="x"), NullTracker)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="logger.mode='cloud'"):
        LoggerConfig(kind="wandb", mode="cloud")
    assert flatten({"a": {"b": 1, "c": "x"}, "d": 0.5}) == {"a/b": 1, "d": 0.5}
