"""GRPO step benchmark: seconds per step, rollout tokens/s and peak memory of ``autodata-train``.

Runs ``train.trainer.run_train`` (TRL's GRPOTrainer, the project's rewards) for a few steps on
the demo examples (``train/demo/source``, exported to a temporary directory) and prints one JSON
line of results. The first step (model warm-up, allocator growth) is reported separately and
left out of the means.

    python experiments/bench/grpo_step.py                          # embedded 0.5B, CPU, local reward
    python experiments/bench/grpo_step.py --reward judge           # + the judge through llm=local
    python experiments/bench/grpo_step.py --device cuda --model Qwen/Qwen2.5-0.5B-Instruct --dtype bfloat16
    python experiments/bench/grpo_step.py --lora                   # LoRA instead of full fine-tuning

``--reward local`` (default) uses the judge-free word-overlap reward, so the benchmark needs no
LLM server and no network: it measures the trainer (rollouts, log-probabilities, backward,
optimizer). ``--reward judge`` adds the judge calls of the real pipeline. Device is automatic
(CUDA when torch sees a GPU, else CPU); ``--device cpu`` forces the CPU.

Rollout tokens/s = completion tokens generated in a step / seconds spent in ``generate`` in that
step (timed around transformers' ``GenerationMixin.generate``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import fmean
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


class GenerateTimer:
    """Times every ``GenerationMixin.generate`` call and counts new tokens per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    def install(self) -> None:
        from transformers.generation.utils import GenerationMixin

        original = GenerationMixin.generate
        timer = self

        def timed(model: Any, *args: Any, **kwargs: Any) -> Any:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = original(model, *args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seqs = out if torch.is_tensor(out) else out.sequences
            prompt_len = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[1]
            timer.calls.append((time.perf_counter() - t0, int(seqs.shape[0] * (seqs.shape[1] - prompt_len))))
            return out

        GenerationMixin.generate = timed  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="embedded, a checkpoint directory or a model id")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    ap.add_argument("--reward", default="local", choices=["local", "judge"])
    ap.add_argument("--steps", type=int, default=3, help="GRPO steps (the first is warm-up)")
    ap.add_argument("--batch", type=int, default=4, help="completions per step")
    ap.add_argument("--generations", type=int, default=4, help="completions per prompt (GRPO group)")
    ap.add_argument("--max-completion-length", type=int, default=64)
    ap.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of all weights")
    ap.add_argument(
        "--random-init",
        metavar="DIR",
        help="build the model from DIR's config.json and tokenizer with random weights (machines without the "
        "weights: same architecture and cost per token; a random model rarely stops, so completions run to the limit)",
    )
    ap.add_argument(
        "--runs", nargs="*", default=[str(ROOT / "train/demo/source/cs"), str(ROOT / "train/demo/source/legal")]
    )
    args = ap.parse_args()

    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from train.config import TrainConfig, register_configs
    from train.trainer import run_train

    cuda = torch.cuda.is_available()
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    scratch = tempfile.TemporaryDirectory(prefix="grpo-bench-model-")
    if args.random_init:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.random_init))
        model.save_pretrained(scratch.name)
        AutoTokenizer.from_pretrained(args.random_init).save_pretrained(scratch.name)
        args.model = scratch.name
        del model
    register_configs()
    overrides = [
        f"policy.model={args.model}",
        f"policy.dtype={dtype}",
        f"policy.lora.enabled={str(args.lora).lower()}",
        f"data.runs=[{','.join(args.runs)}]",
        "data.test_fraction=0.0",
        f"reward.kind={'overlap' if args.reward == 'local' else 'judge'}",
        f"grpo.max_steps={args.steps}",
        f"grpo.per_device_train_batch_size={args.batch}",
        f"grpo.num_generations={args.generations}",
        f"grpo.max_completion_length={args.max_completion_length}",
        f"grpo.bf16={str(dtype == 'bfloat16').lower()}",
        "grpo.save_steps=1000",
        "grpo.learning_rate=1e-6",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name="train", overrides=overrides))
    assert isinstance(cfg, TrainConfig)
    timer = GenerateTimer()
    timer.install()
    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as tmp:
        t0 = time.perf_counter()
        summary = run_train(cfg, Path(tmp))
        wall = time.perf_counter() - t0
        steps = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines() if '"reward"' in x]
    step_s = summary["step_s"]
    gen = timer.calls  # one generate call per step with TRL's transformers path
    per_step_tok_s = [tok / s for s, tok in gen if s > 0]
    result = {
        "bench": "grpo_step",
        "model": f"random init of {args.random_init}" if args.random_init else args.model,
        "device": "cuda" if cuda else "cpu",
        "device_name": torch.cuda.get_device_name(0) if cuda else f"cpu x{torch.get_num_threads()} threads",
        "dtype": dtype,
        "lora": args.lora,
        "reward": args.reward,
        "torch": torch.__version__,
        "completions_per_step": args.batch,
        "generations_per_prompt": args.generations,
        "max_completion_length": args.max_completion_length,
        "steps": summary["global_step"],
        "first_step_s": round(step_s[0], 2) if step_s else None,
        "mean_step_s": round(fmean(step_s[1:]), 2) if len(step_s) > 1 else None,
        "step_s": [round(s, 2) for s in step_s],
        "rollout_tokens_per_s": round(fmean(per_step_tok_s[1:]), 2) if len(per_step_tok_s) > 1 else None,
        "rollout_tokens_per_s_each": [round(x, 2) for x in per_step_tok_s],
        "generate_s_each": [round(s, 2) for s, _ in gen],
        "mean_completion_tokens": round(fmean(r["completions/mean_length"] for r in steps), 1) if steps else None,
        "clipped_ratio": round(fmean(r["completions/clipped_ratio"] for r in steps), 3) if steps else None,
        "peak_rss_mb": round(summary["peak_rss_mb"]),
        "peak_cuda_mb": round(summary["peak_cuda_mb"]) if "peak_cuda_mb" in summary else None,
        "wall_s_incl_load": round(wall, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
