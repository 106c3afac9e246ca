"""``autodata-train`` and ``autodata-eval``: the Hydra entry points of training and evaluation.

Examples::

    autodata-export-dataset runs/demo --out runs/dataset            # runs -> HF dataset
    autodata-train data.dataset=runs/dataset                         # embedded 0.5B, CPU, judge = llm=local
    autodata-train +experiment=grpo_paper data.dataset=... llm=vllm  # published settings (GPU)
    autodata-train data.dataset=... policy.lora.enabled=true         # LoRA through peft
    autodata-eval models=[embedded,runs/train/<run>/final] \\
        'sets=[{name: in_domain, dataset: runs/dataset, split: test}, {name: ood, dataset: runs/legal, split: all}]'
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from inner.entrypoint import cli_guard, to_config
from inner.paths import PROJECT_ROOT
from train.config import EvalConfig, TrainConfig, register_configs

log = logging.getLogger("autodata")

register_configs()

#: Libraries that print a line per HTTP request, per tensor or per checkpoint shard.
QUIET = ("httpx", "httpx2", "matplotlib", "datasets", "filelock", "urllib3")


def _quiet() -> None:
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="train")
def _train(dcfg: DictConfig) -> None:
    from train.trainer import run_train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with cli_guard(f"checkpoints are in {run_dir}; rerun the same command to resume"):
        _quiet()
        cfg = to_config(dcfg, TrainConfig)
        summary = run_train(cfg, run_dir)
    keys = ("global_step", "train_examples", "mean_step_s", "peak_rss_mb", "final_model")
    print(json.dumps({k: summary.get(k) for k in keys}, default=str))


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="eval")
def _eval(dcfg: DictConfig) -> None:
    from train.evaluate import markdown_table, run_eval

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with cli_guard():
        _quiet()
        cfg = to_config(dcfg, EvalConfig)
        results = run_eval(cfg, run_dir)
    print(markdown_table(results))
    print(f"table: {run_dir / 'eval.md'}  plot: {run_dir / 'eval.png'}  figures: {run_dir / 'eval.json'}")


def train_main() -> None:
    """Console-script entry point of ``autodata-train``."""
    _train()


def eval_main() -> None:
    """Console-script entry point of ``autodata-eval``."""
    _eval()
