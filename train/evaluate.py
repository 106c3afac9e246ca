"""Before/after evaluation: mean@k, best@k and truncation rate of models on exported datasets.

For every model (the base model, a GRPO checkpoint, ...) and every evaluation set (the
in-distribution test split, an out-of-distribution domain's export), ``k`` completions are
sampled per example with transformers ``generate`` (same seed for every model) from the
example's ``prompt`` and graded with the training rewards (:mod:`train.rewards`: the frozen
rubric judge, or answer equivalence for exact-answer rows). A completion cut at
``max_completion_length`` is truncated and scores 0.

- mean@k: mean over examples of the mean score of the example's k completions.
- best@k: mean over examples of the best of its k completions.
- truncation rate: truncated completions / all completions.

Completions whose judge output stayed unusable are left out of their example's mean and best
(counted as ``judge_failures``); an example with none left is left out of the set's means.

Outputs (in the output directory): ``eval.json`` (every figure), ``eval.md`` (the table),
``eval.png`` (mean@k and best@k per set and model), ``completions.jsonl`` (every completion
with its truncation flag and score).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from inner.io import atomic_write_text
from inner.sdk.errors import ConfigError
from train.config import EMBEDDED, EvalConfig, EvalSet
from train.export import DatasetError, load_split
from train.judge import build_judge_client, judge_endpoints
from train.rewards import LocalOverlapReward, RubricReward, VerifiableReward

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One sampled completion: text, whether it was cut at the length limit, its token count."""

    text: str
    truncated: bool
    tokens: int


@dataclass
class SetResult:
    """Figures of one model on one evaluation set (see the module docstring)."""

    model: str
    label: str
    set: str
    examples: int
    k: int
    mean_at_k: float | None
    best_at_k: float | None
    truncation_rate: float
    judge_failures: int
    mean_tokens: float
    generate_s: float
    tokens_per_s: float
    scores: list[list[float | None]] = field(default_factory=list)


def sample_completions(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    *,
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
    stop_ids: list[int],
) -> list[list[Sample]]:
    """``k`` completions per chat prompt with ``model.generate``.

    Args:
        prompts: chat messages per example.
        k: completions per prompt (``num_return_sequences``); greedy when ``temperature`` is 0.
        max_new_tokens: the length limit; a completion that reaches it without a stop token is
            truncated.
        batch_size: prompts per ``generate`` call.
        seed: ``torch.manual_seed`` before the first batch (the same for every model).
        stop_ids: token ids that end a completion.

    Returns:
        One list of ``k`` :class:`Sample` per prompt, in order.
    """
    import torch

    torch.manual_seed(seed)
    device = next(model.parameters()).device
    stops = set(stop_ids)
    out: list[list[Sample]] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        sampling = temperature > 0
        with torch.no_grad():
            gen = model.generate(
                **enc,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_p=top_p if sampling else None,
                top_k=None,
                num_return_sequences=k,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(stops),
            )
        new = gen[:, enc["input_ids"].shape[1] :].tolist()
        for i in range(len(batch)):
            samples = []
            for ids in new[i * k : (i + 1) * k]:
                end = next((j for j, t in enumerate(ids) if t in stops), None)
                kept = ids if end is None else ids[:end]
                samples.append(Sample(tokenizer.decode(kept, skip_special_tokens=True), end is None, len(kept)))
            out.append(samples)
    return out


def _set_rows(s: EvalSet, max_examples: int | None) -> list[dict[str, Any]]:
    if not s.dataset:
        raise ConfigError(f"sets: {s.name!r} has no dataset: give an autodata-export-dataset directory")
    splits = ["train", "test"] if s.split == "all" else [s.split]
    rows: list[dict[str, Any]] = []
    for sp in splits:
        try:
            rows.extend(load_split(Path(s.dataset), sp).to_list())
        except DatasetError:
            if s.split != "all":
                raise
    if not rows:
        raise DatasetError(f"evaluation set {s.name!r} ({s.dataset}, split {s.split}) holds no example")
    return rows[:max_examples] if max_examples else rows


async def score_samples(
    rows: list[dict[str, Any]], samples: list[list[Sample]], *, rewards: list[Any]
) -> list[list[float | None]]:
    """Scores of every sample: the first reward function that applies to the row (rubric judge
    or equivalence); ``None`` where the judge's output was unusable."""
    flat_rows = [r for r, ss in zip(rows, samples, strict=True) for _ in ss]
    flat = [s for ss in samples for s in ss]
    columns = {key: [r[key] for r in flat_rows] for key in flat_rows[0] if key != "prompt"}
    kw = {
        "prompts": [r["prompt"] for r in flat_rows],
        "completions": [s.text for s in flat],
        "truncated": [s.truncated for s in flat],
        **columns,
    }
    per_func = []
    for fn in rewards:
        res = fn(**kw)
        per_func.append(await res if asyncio.iscoroutine(res) else res)
    merged: list[float | None] = [
        next((v for v in vals if v is not None), None) for vals in zip(*per_func, strict=True)
    ]
    out, i = [], 0
    for ss in samples:
        out.append(merged[i : i + len(ss)])
        i += len(ss)
    return out


def summarize(
    model: str,
    label: str,
    set_name: str,
    samples: list[list[Sample]],
    scores: list[list[float | None]],
    *,
    k: int,
    generate_s: float,
) -> SetResult:
    """mean@k, best@k, truncation rate and judge failures of one model on one set."""
    means, bests = [], []
    for sc in scores:
        valid = [x for x in sc if x is not None]
        if valid:
            means.append(fmean(valid))
            bests.append(max(valid))
    flat = [s for ss in samples for s in ss]
    tokens = sum(s.tokens for s in flat)
    return SetResult(
        model=model,
        label=label,
        set=set_name,
        examples=len(samples),
        k=k,
        mean_at_k=fmean(means) if means else None,
        best_at_k=fmean(bests) if bests else None,
        truncation_rate=sum(s.truncated for s in flat) / len(flat),
        judge_failures=sum(x is None for sc in scores for x in sc),
        mean_tokens=tokens / len(flat),
        generate_s=generate_s,
        tokens_per_s=tokens / generate_s if generate_s > 0 else 0.0,
        scores=scores,
    )


def default_label(model: str) -> str:
    """``base`` for the embedded model, else the checkpoint's directory name (``final`` ->
    the training run's directory name)."""
    if model == EMBEDDED:
        return "base"
    p = Path(model)
    return p.parent.name if p.name == "final" and p.parent.name else p.name


def markdown_table(results: list[SetResult]) -> str:
    """The results as a Markdown table."""

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    lines = [
        "| model | set | examples | k | mean@k | best@k | truncated | judge failures | mean tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.label} | {r.set} | {r.examples} | {r.k} | {f(r.mean_at_k)} | {f(r.best_at_k)} | "
            f"{r.truncation_rate:.3f} | {r.judge_failures} | {r.mean_tokens:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[SetResult], path: Path) -> None:
    """Grouped bars: mean@k (solid) and best@k (hatched) per set, one colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r.set for r in results))
    labels = list(dict.fromkeys(r.label for r in results))
    width = 0.8 / (2 * len(labels))
    fig, ax = plt.subplots(figsize=(max(5, 2.5 * len(sets)), 3.5))
    for j, lab in enumerate(labels):
        for m, (attr, hatch) in enumerate((("mean_at_k", None), ("best_at_k", "//"))):
            xs, ys = [], []
            for i, s in enumerate(sets):
                r = next((r for r in results if r.label == lab and r.set == s), None)
                if r is not None and getattr(r, attr) is not None:
                    xs.append(i + (2 * j + m) * width - 0.4 + width / 2)
                    ys.append(getattr(r, attr))
            ax.bar(xs, ys, width, color=f"C{j}", hatch=hatch, alpha=0.6 if hatch else 1.0,
                   label=f"{lab} {'best' if hatch else 'mean'}@k")  # fmt: skip
    ax.set_xticks(range(len(sets)), sets)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rubric score")
    k = results[0].k if results else 0
    ax.set_title(f"mean@{k} and best@{k} per evaluation set")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_eval(cfg: EvalConfig, out_dir: Path, *, base_urls: dict[str, str] | None = None) -> list[SetResult]:
    """Evaluate every model of ``cfg.models`` on every set of ``cfg.sets``; write the outputs.

    Args:
        cfg: the evaluation config.
        out_dir: where ``eval.json``, ``eval.md``, ``eval.png`` and ``completions.jsonl`` go.
        base_urls: judge endpoint URLs, bypassing the backend (tests).

    Returns:
        One :class:`SetResult` per (model, set), models outer.

    Raises:
        ConfigError: no set, or a set without a dataset.
        DatasetError: a set's split is missing or empty.
        BackendError: the judge server could not be started.
    """
    from train.policy import device_name, load_policy, load_tokenizer, stop_token_ids

    if not cfg.sets:
        raise ConfigError("sets=[] is invalid: give at least one evaluation set (sets=[{name:...,dataset:...}])")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {s.name: _set_rows(s, cfg.max_examples) for s in cfg.sets}
    labels = cfg.labels or [default_label(m) for m in cfg.models]
    device = device_name()
    results: list[SetResult] = []
    comp_path = out_dir / "completions.jsonl"
    comp_path.unlink(missing_ok=True)
    needs_judge = cfg.reward.kind == "judge" and any(not r["verifiable"] for rows in data.values() for r in rows)
    if not needs_judge and base_urls is None:
        base_urls = {name: "http://127.0.0.1:9/v1" for name in cfg.llm.endpoints}
    with judge_endpoints(cfg.llm, run_dir=out_dir, base_urls=base_urls) as urls:
        for model_name, label in zip(cfg.models, labels, strict=True):
            log.info("evaluating %s (%s) on %s", label, model_name, ", ".join(data))
            tokenizer = load_tokenizer(model_name)
            model = load_policy(model_name, dtype=cfg.dtype, device=device)
            stops = stop_token_ids(tokenizer, model)
            for set_name, rows in data.items():
                t0 = time.perf_counter()
                samples = sample_completions(
                    model, tokenizer, [r["prompt"] for r in rows], k=cfg.k, max_new_tokens=cfg.max_completion_length,
                    temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed, stop_ids=stops,
                )  # fmt: skip
                gen_s = time.perf_counter() - t0
                scores = asyncio.run(_score(cfg, rows, samples, out_dir, urls, stops))
                res = summarize(model_name, label, set_name, samples, scores, k=cfg.k, generate_s=gen_s)
                results.append(res)
                with comp_path.open("a", encoding="utf-8") as fh:
                    for r, ss, sc in zip(rows, samples, scores, strict=True):
                        for i, (s, x) in enumerate(zip(ss, sc, strict=True)):
                            fh.write(json.dumps({"model": label, "set": set_name, "example_id": r["example_id"],
                                                 "sample": i, "score": x, "truncated": s.truncated,
                                                 "tokens": s.tokens, "text": s.text}) + "\n")  # fmt: skip
                log.info(
                    "%s on %s: mean@%d %s, best@%d %s, truncated %.3f",
                    label, set_name, cfg.k, res.mean_at_k, cfg.k, res.best_at_k, res.truncation_rate,
                )  # fmt: skip
            del model
            gc.collect()
    write_results(results, out_dir, cfg)
    return results


async def _score(
    cfg: EvalConfig,
    rows: list[dict[str, Any]],
    samples: list[list[Sample]],
    out_dir: Path,
    urls: dict[str, str],
    stops: list[int],
) -> list[list[float | None]]:
    if cfg.reward.kind == "overlap":
        return await score_samples(rows, samples, rewards=[LocalOverlapReward(stop_token_ids=stops)])
    client = build_judge_client(cfg.llm, run_dir=out_dir, base_urls=urls)
    try:
        rewards = [
            RubricReward(client, partial_credit=cfg.reward.partial_credit, retries=cfg.reward.judge_retries),
            VerifiableReward(),
        ]
        return await score_samples(rows, samples, rewards=rewards)
    finally:
        await client.aclose()


def write_results(results: list[SetResult], out_dir: Path, cfg: EvalConfig) -> None:
    """``eval.json`` (config and every figure), ``eval.md`` and ``eval.png``."""
    payload = {"config": asdict(cfg), "results": [asdict(r) for r in results]}
    atomic_write_text(out_dir / "eval.json", json.dumps(payload, indent=2, default=str) + "\n")
    md = (
        f"# Evaluation: mean@{cfg.k}, best@{cfg.k}, truncation\n\n"
        f"{cfg.k} completions per example, temperature {cfg.temperature}, at most {cfg.max_completion_length} "
        "tokens (a longer completion is truncated and scores 0); graded by the frozen judge against each "
        "example's rubric (exact-answer examples: equivalence with the reference).\n\n" + markdown_table(results)
    )
    atomic_write_text(out_dir / "eval.md", md)
    if results:
        plot(results, out_dir / "eval.png")
