"""``run_train``: GRPO (TRL's ``GRPOTrainer``) on an exported dataset with the rubric-judge reward.

One training run writes into its output directory (Hydra's run dir)::

    dataset/               the export, when the input was run directories (data.runs)
    checkpoint-<step>/     TRL/transformers checkpoints (model, optimizer, scheduler, RNG,
                           trainer state) every grpo.save_steps steps; the last
                           grpo.save_total_limit are kept
    final/                 the trained model and tokenizer (LoRA merged into the base)
    metrics.jsonl          one line per logged step: reward mean and std, per-function means,
                           truncation rate, completion lengths, loss, learning rate, KL when
                           grpo.beta > 0, seconds per step
    train_config.yaml      the resolved config;  train_identity.json  what a resume must match
    train_summary.json     steps, wall time, seconds per step, peak memory, judge calls/tokens
    calls.jsonl, llm_cache/, llm_server.log   the judge's calls, cache and server log

Rerunning the same command resumes from the last checkpoint (``resume=auto``); a resume with
another dataset or policy is refused. Published settings (arXiv 2606.25996: Qwen-3.5-4B, about
one epoch, batch 32, learning rate 1e-6) are ``+experiment=grpo_paper``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from inner.io import atomic_write_text
from inner.sdk.errors import ConfigError
from inner.tracking import build_tracker
from train.config import RewardConfig, TrainConfig
from train.export import DatasetError, export_dataset, load_split
from train.judge import build_judge_client, judge_endpoints
from train.rewards import LocalOverlapReward, RubricReward, VerifiableReward

log = logging.getLogger(__name__)

#: TRL log keys copied to the one-line step summary in the log
STEP_KEYS = (
    "reward",
    "reward_std",
    "completions/clipped_ratio",
    "completions/mean_length",
    "kl",
    "loss",
)


def build_reward_funcs(reward: RewardConfig, *, client: Any, stop_token_ids: list[int]) -> list[Any]:
    """The reward functions for ``reward.kind``.

    ``judge``: :class:`~train.rewards.RubricReward` (rubric rows) and
    :class:`~train.rewards.VerifiableReward` (exact-answer rows); each returns ``None`` on the
    other's rows, so a row's reward is the one that applies. ``overlap``: the judge-free
    :class:`~train.rewards.LocalOverlapReward` (benchmarks only).

    Args:
        client: an LLM client or a zero-argument factory of one (used by the judge only).
        stop_token_ids: ids that end a finished completion (see :func:`train.policy.stop_token_ids`).
    """
    if reward.kind == "overlap":
        return [LocalOverlapReward(stop_token_ids=stop_token_ids)]
    return [
        RubricReward(
            client, stop_token_ids=stop_token_ids, partial_credit=reward.partial_credit, retries=reward.judge_retries
        ),
        VerifiableReward(stop_token_ids=stop_token_ids),
    ]


def resolve_dataset(cfg: TrainConfig, out_dir: Path) -> Path:
    """The exported dataset to train on: ``data.dataset``, or ``data.runs`` exported into
    ``<out_dir>/dataset`` (re-exported on every start, so a resumed run sees the same rows).

    Raises:
        ConfigError: neither or both of ``data.dataset`` and ``data.runs`` are set.
        DatasetError: the runs hold no accepted example, or the dataset has no train split.
    """
    if bool(cfg.data.dataset) == bool(cfg.data.runs):
        raise ConfigError(
            f"data.dataset={cfg.data.dataset!r}, data.runs={cfg.data.runs!r}: set exactly one "
            "(data.dataset=<autodata-export-dataset dir> or data.runs=[<run dir>, ...])"
        )
    if cfg.data.dataset:
        return Path(cfg.data.dataset)
    target = out_dir / "dataset"
    export_dataset(
        [Path(r) for r in cfg.data.runs],
        target,
        test_fraction=cfg.data.test_fraction,
        seed=cfg.data.split_seed,
        overwrite=True,
    )
    return target


def grpo_config(cfg: TrainConfig, out_dir: Path) -> Any:
    """TRL ``GRPOConfig`` from ``cfg.grpo`` (checkpoints into ``out_dir``; no TRL reporting
    integration: metrics go through :class:`MetricsCallback`)."""
    from trl import GRPOConfig

    g = asdict(cfg.grpo)
    extra = g.pop("extra") or {}
    clash = sorted(set(extra) & set(g))
    if clash:
        raise ConfigError(f"grpo.extra sets {clash}, which are grpo.* fields: set them there")
    if not g["use_vllm"]:
        for k in ("vllm_mode", "vllm_server_base_url", "vllm_gpu_memory_utilization"):
            g.pop(k)
    return GRPOConfig(
        output_dir=str(out_dir),
        save_strategy="steps",
        report_to="none",
        log_completions=False,
        disable_tqdm=True,
        **g,
        **extra,
    )


class MetricsCallback(TrainerCallback):
    """Writes every TRL log line to ``metrics.jsonl`` and the experiment tracker, and one
    summary line per step to the log (reward mean/std, truncation rate, completion length, KL,
    loss); measures seconds per optimizer step.

    Args:
        path: the ``metrics.jsonl`` to append to.
        tracker: an :class:`inner.tracking.Tracker` (W&B or nothing).
    """

    def __init__(self, path: Path, tracker: Any) -> None:
        self.path, self.tracker = path, tracker
        self.t_last: float | None = None
        self.step_last = 0
        #: wall seconds of each optimizer step of this invocation
        self.step_times: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.t_last is None:
            self.t_last, self.step_last = time.perf_counter(), state.global_step

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        now = time.perf_counter()
        if self.t_last is not None and state.global_step > self.step_last:
            self.step_times.append((now - self.t_last) / (state.global_step - self.step_last))
        self.t_last, self.step_last = now, state.global_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, **logs}
        if self.step_times:
            row["step_s"] = self.step_times[-1]
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=float) + "\n")
        self.tracker.log({k: v for k, v in row.items() if isinstance(v, int | float)}, step=state.global_step)
        parts = [f"{k.split('/')[-1]}={logs[k]:.4g}" for k in STEP_KEYS if isinstance(logs.get(k), int | float)]
        if parts:
            log.info("step %d: %s", state.global_step, " ".join(parts))


#: grpo settings a resumed run may change: training length and bookkeeping
RESUMABLE_CHANGES = ("max_steps", "num_train_epochs", "save_steps", "save_total_limit", "logging_steps")


def _identity(cfg: TrainConfig, dataset: Path, n_examples: int) -> dict[str, Any]:
    return {
        "dataset": str(dataset.resolve()),
        "examples": n_examples,
        "policy": asdict(cfg.policy),
        "reward": asdict(cfg.reward),
        "grpo": {k: v for k, v in asdict(cfg.grpo).items() if k not in RESUMABLE_CHANGES},
    }


def _check_resume(out_dir: Path, ident: dict[str, Any], resume: str) -> str | None:
    """The checkpoint to resume from (or ``None``), after checking the run's identity."""
    from transformers.trainer_utils import get_last_checkpoint

    path = out_dir / "train_identity.json"
    if resume == "never":
        return None
    if resume != "auto":
        ckpt = Path(resume)
        if not (ckpt / "trainer_state.json").is_file():
            raise ConfigError(f"resume={resume!r} is not a checkpoint directory (no trainer_state.json)")
        return str(ckpt)
    last = get_last_checkpoint(str(out_dir)) if out_dir.is_dir() else None
    if last and path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in ident if old.get(k) != ident[k]]
        diff = [
            f"{k}.{sub}" if isinstance(ident[k], dict) and isinstance(old.get(k), dict) else k
            for k in diff
            for sub in (
                [s for s in ident[k] if old[k].get(s) != ident[k][s]]
                if isinstance(ident[k], dict) and isinstance(old.get(k), dict)
                else [None]
            )
        ]
        if diff:
            raise ConfigError(
                f"output directory {out_dir} holds a training run with a different {', '.join(diff)}; "
                "resume it with the same settings, pass resume=never to start over, or choose a new hydra.run.dir"
            )
    return last


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (MB) and, on a GPU, peak allocated CUDA memory (MB)."""
    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_train(cfg: TrainConfig, out_dir: Path, *, base_urls: dict[str, str] | None = None) -> dict[str, Any]:
    """Train ``cfg.policy`` with GRPO on the train split of the dataset; resumable.

    Args:
        cfg: the training config.
        out_dir: the output directory (Hydra's run dir).
        base_urls: judge endpoint URLs, bypassing the backend (tests pass the scripted server).

    Returns:
        The ``train_summary.json`` dictionary.

    Raises:
        ConfigError: bad settings, or a resume that does not match the directory's run.
        DatasetError: no accepted example (or no train split) in the input.
        BackendError: the judge server could not be started.
    """
    from peft import LoraConfig
    from trl import GRPOTrainer

    from train.policy import load_policy, load_tokenizer, stop_token_ids

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset_dir = resolve_dataset(cfg, out_dir)
    train_ds = load_split(dataset_dir, "train")
    if cfg.data.max_examples is not None:
        train_ds = train_ds.select(range(min(cfg.data.max_examples, len(train_ds))))
    ident = _identity(cfg, dataset_dir, len(train_ds))
    resume_from = _check_resume(out_dir, ident, cfg.resume)
    atomic_write_text(out_dir / "train_identity.json", json.dumps(ident, indent=2) + "\n")
    atomic_write_text(out_dir / "train_config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    log.info(
        "GRPO on %d examples of %s with %s%s -> %s",
        len(train_ds), dataset_dir, cfg.policy.model, f" (resuming {resume_from})" if resume_from else "", out_dir,
    )  # fmt: skip

    tokenizer = load_tokenizer(cfg.policy.model)
    model = load_policy(cfg.policy.model, dtype=cfg.policy.dtype)
    stops = stop_token_ids(tokenizer, model)
    peft_config = None
    if cfg.policy.lora.enabled:
        lo = cfg.policy.lora
        peft_config = LoraConfig(
            r=lo.r,
            lora_alpha=lo.alpha,
            lora_dropout=lo.dropout,
            target_modules=list(lo.target_modules),
            task_type="CAUSAL_LM",
        )
    args = grpo_config(cfg, out_dir)
    tracker = build_tracker(cfg.logger, run_dir=out_dir, config=asdict(cfg), job="train")
    needs_judge = cfg.reward.kind == "judge" and not all(train_ds["verifiable"])
    clients: list[Any] = []
    if not needs_judge and base_urls is None:  # no judge call will be made: start no server
        base_urls = {name: "http://127.0.0.1:9/v1" for name in cfg.llm.endpoints}
    with judge_endpoints(cfg.llm, run_dir=out_dir, base_urls=base_urls) as urls:

        def make_client() -> Any:
            clients.append(build_judge_client(cfg.llm, run_dir=out_dir, base_urls=urls))
            return clients[-1]

        rewards = build_reward_funcs(cfg.reward, client=make_client, stop_token_ids=stops)
        callback = MetricsCallback(out_dir / "metrics.jsonl", tracker)
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=rewards,
            args=args,
            train_dataset=train_ds,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[callback],
        )
        try:
            result = trainer.train(resume_from_checkpoint=resume_from)
        finally:
            for c in clients:
                loop = getattr(trainer, "async_loop", None)
                if loop is not None and loop.is_running():
                    asyncio.run_coroutine_threadsafe(c.aclose(), loop).result(timeout=30)
            tracker.finish()
    final = out_dir / "final"
    trained = trainer.model
    if peft_config is not None:
        trained = trained.merge_and_unload()
    trained.save_pretrained(final)
    tokenizer.save_pretrained(final)
    steps = callback.step_times
    summary = {
        "output_dir": str(out_dir),
        "final_model": str(final),
        "dataset": str(dataset_dir),
        "train_examples": len(train_ds),
        "global_step": trainer.state.global_step,
        "resumed_from": resume_from,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "wall_s": time.perf_counter() - t0,
        "mean_step_s": sum(steps) / len(steps) if steps else None,
        "step_s": steps,
        **peak_memory_mb(),
        "judge_usage": clients[0].usage.as_dict() if clients else {},
        "rewards": {
            r.__name__: {"scored": r.tally.scored, "truncated": r.tally.truncated, "failures": r.tally.failures}
            for r in rewards
        },
        "last_log": trainer.state.log_history[-1] if trainer.state.log_history else {},
    }
    atomic_write_text(out_dir / "train_summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    log.info("trained %d steps in %.0f s; model in %s", summary["global_step"], summary["wall_s"], final)
    return summary


__all__ = ["DatasetError", "build_reward_funcs", "grpo_config", "resolve_dataset", "run_train"]
