"""Student gain as the fitness of a harness (``meta.fitness=student_gain``; the DataAgent setting).

Why
---
A harness's validation pass rate says whether its examples separate a weak from a strong solver,
not whether they make a model better. DataAgent ("Exploring Autonomous Agentic Data Engineering
for Model Specialization", zjunlp, arXiv 2605.30407) scores a data-making program by how much a
student fine-tuned on its output improves on a public test split, shows the engineer the score
and the student's worst answers ("bad cases"), keeps the best program by public score and
reports it on a private split (public : private = 1 : 3). Fitness is the relative gain
``(score after - score before) / score before``.

One fitness evaluation of a harness (:func:`harness_fitness`)
------------------------------------------------------------
1. generate: the inner loop with the harness (sealed, frozen evaluator, unchanged) on the run's
   training documents (the first ``meta.student.generation_docs`` of ``splits.json``'s train
   split, the same for every harness); only accepted examples count;
2. export them (:func:`train.export.export_dataset`);
3. fine-tune the student from the same base checkpoint each time: LoRA SFT with TRL's
   ``SFTTrainer`` on (solver prompt, reference answer), DataAgent's recipe by default (r 8,
   alpha 16, all linear layers, learning rate 1e-4 with a cosine schedule, 3 epochs);
4. score it on the **public** items of the evaluation set (:mod:`meta.evalset`): ``k`` sampled
   answers per item, graded by the frozen rubric judge (or answer equivalence for exact-answer
   items) exactly as :mod:`train.evaluate` does (mean@k, best@k, truncation rate; a truncated
   answer scores 0); an item's score is the mean of its graded answers (an item none of whose
   answers could be graded is left out, as in :mod:`train.evaluate`);
5. fitness = ``(public score - base score) / base score`` where the base score is the untrained
   student's on the same items, sampled with the same seed (computed once per run and cached in
   ``student/base-<id>.json``; ``meta.student.base_reps`` extra seeds measure its noise).

A harness with no accepted example has fitness 0 and reason ``insufficient valid samples`` (the
student is the base one; nothing is trained). The result is stored in
``student/<harness content>/<identity hash>/fitness.json`` (identity: harness content, evaluator
hash, generation documents, student settings, public items), so a resumed run never retrains a
finished candidate; the LoRA adapter is kept next to it for the private replay.

The loop (:func:`iterate`, called by :func:`meta.loop.run_iteration`)
---------------------------------------------------------------------
select a parent (``meta.selection``; DataAgent is ``greedy``) by public score; its fitness
(cached); the analyzer (``meta/prompts/analyzer_student.md``) sees the parent's public score,
its gain, the history, its generation trajectories and its student's ``meta.student.bad_cases``
worst answers on **public** items (never a private one); the implementer edits, as in
pass-rate runs (:func:`meta.loop.try_edit`); the candidate's fitness; admission
(:func:`student_decision`, the rules of :mod:`meta.admission` on per-item scores); commit.

When the run ends, :func:`replay_private` scores the base student and the students of the
starting and the best harness on the **private** items, the only time they are read: that is the
reported result (``student/private.json`` and ``summary.json``'s ``confirmation``).

Budgets: ``meta.max_iterations`` caps iterations (DataAgent: at most 30), ``meta.max_tokens``
the LLM tokens of all roles; ``history.jsonl`` records per iteration the calls and tokens of each
role (the teacher's roles and the judge), training seconds, examples accepted, generation
attempts per accepted example, training loss, public score and gain.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from inner.io import atomic_write_text
from inner.sdk.errors import ConfigError

if TYPE_CHECKING:
    from inner.engine.documents import Document
    from meta.evalset import EvalSplit
    from meta.loop import MetaRun
    from meta.select import ArchiveEntry

log = logging.getLogger(__name__)

#: ``meta.fitness`` values
FITNESS = ("pass_rate", "student_gain")
#: what the archive's score is under each ``meta.fitness``, in words (tables, reports, plots)
SCORE_LABELS = {"pass_rate": "validation pass rate", "student_gain": "student public score (mean@k)"}
#: ``meta.student.method`` values (``sft``: TRL's SFTTrainer with LoRA; ``grpo``: train.trainer's
#: GRPO with the rubric-judge and exact-answer rewards, LoRA)
METHODS = ("sft", "grpo")
#: LoRA target modules of GRPO (train.config.LoraSettings takes module names, not peft's
#: ``all-linear``): every linear layer of a Qwen2 block
QWEN2_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: the reason recorded when a harness yields no accepted example (DataAgent's dominant failure)
INSUFFICIENT = "insufficient valid samples"


@dataclass
class StudentConfig:
    """The student, its training and its scoring under ``meta.fitness=student_gain``.

    Attributes:
        eval_set: the fixed evaluation set (required): an ``autodata-export-dataset`` directory,
            or run directories (one, or a directory of them) exported into ``student/evalset/``.
        public_fraction: share of its documents in the public part, in (0, 1); DataAgent's
            public : private = 1 : 3 is 0.25.
        split_seed: seed of the public/private split by document.
        model: the base student: ``embedded`` (Qwen2.5-Coder-0.5B-Instruct, dequantized from the
            project's GGUF: :func:`train.policy.embedded_checkpoint`), a checkpoint directory or a
            Hugging Face model id.
        dtype: ``float32`` (CPU) or ``bfloat16`` (GPU).
        method: ``sft`` (LoRA SFT with TRL's ``SFTTrainer``: DataAgent's) or ``grpo`` (GRPO with
            :mod:`train.trainer` and its rewards: the frozen rubric judge through the run's
            endpoints, answer equivalence for exact-answer rows; LoRA on every linear layer of a
            Qwen2 block; ``num_generations`` completions per prompt of at most
            ``max_completion_length`` tokens).
        lora_r / lora_alpha / lora_dropout / target_modules: LoRA; DataAgent's recipe is r 8,
            alpha 16 on all linear layers (``all-linear``, peft's name for them).
        learning_rate / lr_scheduler_type / num_train_epochs: DataAgent's 1e-4, cosine, 3 epochs.
        max_steps: optimizer steps (> 0 overrides epochs; -1: epochs).
        per_device_train_batch_size / gradient_accumulation_steps: examples per optimizer step.
        max_length: tokens of one training example (prompt + answer); longer ones are cut.
        seed: training seed and the sampling seed of every scoring (base and trained alike).
        generation_docs: training documents each harness generates on (the first of the train
            split; ``null``: all of it).
        max_examples: train on at most this many accepted examples (``null``: all).
        k: answers sampled per evaluation item (mean@k).
        max_completion_length: tokens per answer; a longer answer is truncated and scores 0.
        temperature / top_p: answer sampling.
        batch_size: prompts per ``generate`` call.
        reward: ``judge`` (the frozen rubric judge; answer equivalence for exact-answer items)
            or ``overlap`` (judge-free word overlap; benchmarks only).
        bad_cases: the student's worst public answers shown to the analyzer.
        base_reps: scorings of the base student with seeds ``seed .. seed + base_reps - 1``
            (the first is the fitness's base; the spread is the noise between two base
            evaluations), >= 1.
    """

    eval_set: str | None = None
    public_fraction: float = 0.25
    split_seed: int = 0
    model: str = "embedded"
    dtype: str = "float32"
    method: str = "sft"
    num_generations: int = 4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"
    learning_rate: float = 1e-4
    lr_scheduler_type: str = "cosine"
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    seed: int = 0
    generation_docs: int | None = None
    max_examples: int | None = None
    k: int = 4
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 4
    reward: str = "judge"
    bad_cases: int = 5
    base_reps: int = 2

    def __post_init__(self) -> None:
        def check(cond: bool, key: str, value: object, fix: str) -> None:
            if not cond:
                raise ConfigError(f"meta.student.{key}={value!r} is invalid: {fix}")

        check(0.0 < self.public_fraction < 1.0, "public_fraction", self.public_fraction, "must be in (0, 1)")
        check(self.method in METHODS, "method", self.method, f"use one of {METHODS}")
        check(self.num_generations >= 2, "num_generations", self.num_generations, "must be >= 2 (a GRPO group)")
        check(self.reward in ("judge", "overlap"), "reward", self.reward, "use judge or overlap")
        check(self.lora_r >= 1, "lora_r", self.lora_r, "must be >= 1")
        check(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be > 0")
        check(self.k >= 1, "k", self.k, "must be >= 1")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        check(self.max_completion_length >= 1, "max_completion_length", self.max_completion_length, "must be >= 1")
        check(self.bad_cases >= 0, "bad_cases", self.bad_cases, "must be >= 0")
        check(self.base_reps >= 1, "base_reps", self.base_reps, "must be >= 1")
        check(self.generation_docs is None or self.generation_docs >= 1, "generation_docs", self.generation_docs,
              "must be >= 1 or null (all training documents)")  # fmt: skip
        check(self.max_examples is None or self.max_examples >= 1, "max_examples", self.max_examples,
              "must be >= 1 or null")  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """The settings that change a fitness (all but ``bad_cases``, ``base_reps`` and the
        set's path, which the public items' hash stands for)."""
        return {k: v for k, v in asdict(self).items() if k not in ("bad_cases", "base_reps", "eval_set")}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# -- the evaluation set ---------------------------------------------------------------------------
def eval_split(run: MetaRun) -> EvalSplit:
    """The run's evaluation set split by document (loaded once per run, kept on ``run``)."""
    cached = getattr(run, "_student_split", None)
    if cached is None:
        from meta.evalset import load_eval_split

        s = run.cfg.meta.student
        cached = load_eval_split(s.eval_set or "", public_fraction=s.public_fraction, seed=s.split_seed,
                                 export_dir=run.run_dir / "student" / "evalset")  # fmt: skip
        run._student_split = cached  # type: ignore[attr-defined]
    return cached


def generation_docs(run: MetaRun) -> list[Document]:
    """The training documents every harness generates on (the same ones for each)."""
    n = run.cfg.meta.student.generation_docs
    docs = sorted(run.train, key=lambda d: d.doc_id)
    return docs[:n] if n else docs


def check_eval_set(run: MetaRun) -> dict[str, Any]:
    """Load and split the evaluation set, refuse one that shares a document with the run's
    training or validation documents, and record the split in ``student/evalset.json``; on
    resume refuse a different split or student (``meta.allow_evaluator_change=true`` overrides).

    Raises:
        ConfigError: no set, a shared document, or a different recorded split / student.
        DatasetError: the set is not an export.
    """
    from meta.evalset import PRIVATE, PUBLIC, check_disjoint

    split = eval_split(run)
    ours = {d.doc_id for d in run.train} | {d.doc_id for d in run.val}
    check_disjoint(set(split.docs(PUBLIC)) | set(split.docs(PRIVATE)), ours, where=str(split.path))
    current = {"split": split.identity(), "student": run.cfg.meta.student.identity()}
    path = run.run_dir / "student" / "evalset.json"
    recorded = _read(path)
    if recorded is not None and recorded != current and not run.cfg.meta.allow_evaluator_change:
        keys = [f"{a}.{b}" for a in current for b in current[a] if recorded.get(a, {}).get(b) != current[a][b]]
        raise ConfigError(
            f"{run.run_dir} was evaluated with a different evaluation split or student; differing keys: "
            f"{', '.join(keys)}. Resume with the same meta.student settings, choose a new hydra.run.dir, or set "
            "meta.allow_evaluator_change=true"
        )
    atomic_write_text(path, json.dumps(current, indent=1, sort_keys=True) + "\n")
    return current


# -- training and scoring (CPU/GPU-bound; run in a worker thread) ---------------------------------
def _compute_lock(run: MetaRun) -> asyncio.Lock:
    """Student training and sampling are CPU/GPU-bound: one at a time per run, whatever
    ``meta.in_flight`` is (iterations still overlap their LLM calls)."""
    lock = getattr(run, "_student_lock", None)
    if lock is None:
        lock = run._student_lock = asyncio.Lock()  # type: ignore[attr-defined]
    return lock


def sft_rows(dataset_dir: Path, *, max_examples: int | None) -> list[dict[str, Any]]:
    """Prompt-completion rows for TRL's SFTTrainer from an export's train split: the frozen
    closed-book solver prompt and the reference answer as the assistant's turn."""
    from train.export import load_split

    rows = load_split(dataset_dir, "train").to_list()
    rows = rows[:max_examples] if max_examples else rows
    return [{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["reference_answer"]}]}
            for r in rows]  # fmt: skip


def train_student(s: StudentConfig, dataset_dir: Path, out_dir: Path) -> dict[str, Any]:
    """LoRA SFT of the base student on the export at ``dataset_dir``; the adapter is saved in
    ``out_dir/adapter``.

    Returns:
        ``{"examples", "steps", "train_loss" (mean over steps), "last_loss", "train_s",
        "adapter"}``.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from train.policy import load_policy, load_tokenizer

    t0 = time.perf_counter()
    rows = sft_rows(dataset_dir, max_examples=s.max_examples)
    tokenizer = load_tokenizer(s.model)
    tokenizer.padding_side = "right"  # training; sampling sets left padding again
    model = load_policy(s.model, dtype=s.dtype)
    args = SFTConfig(
        output_dir=str(out_dir / "trainer"),
        learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler_type,
        num_train_epochs=s.num_train_epochs,
        max_steps=s.max_steps,
        per_device_train_batch_size=s.per_device_train_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        max_length=s.max_length,
        seed=s.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=s.dtype == "bfloat16",
    )
    peft = LoraConfig(
        r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout, target_modules=s.target_modules,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=peft
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm's per-step prints: the loss is returned instead
    result = trainer.train()
    adapter = out_dir / "adapter"
    trainer.model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "examples": len(rows),
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "last_loss": losses[-1] if losses else None,
        "train_s": round(time.perf_counter() - t0, 2),
        "adapter": str(adapter),
    }


def train_student_grpo(
    s: StudentConfig, dataset_dir: Path, out_dir: Path, *, llm: Any, base_urls: dict[str, Any]
) -> dict[str, Any]:
    """GRPO of the base student on the export at ``dataset_dir`` with :func:`train.trainer.run_train`
    (its rewards and judge; ``base_urls``: the run's endpoints). The LoRA is merged into
    ``out_dir/grpo/final`` (a full checkpoint).

    Returns:
        The same keys as :func:`train_student`; ``adapter`` is the merged checkpoint.
    """
    from train.config import DataConfig, GRPOSettings, LoraSettings, PolicyConfig, TrainConfig
    from train.trainer import run_train

    t0 = time.perf_counter()
    batch = s.per_device_train_batch_size * s.gradient_accumulation_steps
    batch = max(s.num_generations, batch - batch % s.num_generations)  # a whole number of GRPO groups
    cfg = TrainConfig(
        data=DataConfig(dataset=str(dataset_dir), max_examples=s.max_examples),
        policy=PolicyConfig(model=s.model, dtype=s.dtype, lora=LoraSettings(
            enabled=True, r=s.lora_r, alpha=s.lora_alpha, dropout=s.lora_dropout, target_modules=list(QWEN2_LINEAR))),
        grpo=GRPOSettings(
            learning_rate=s.learning_rate, num_train_epochs=s.num_train_epochs, max_steps=s.max_steps,
            per_device_train_batch_size=batch, gradient_accumulation_steps=1, num_generations=s.num_generations,
            max_completion_length=s.max_completion_length, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
            save_steps=10**9, bf16=s.dtype == "bfloat16", extra={"lr_scheduler_type": s.lr_scheduler_type},
        ),
        llm=llm, resume="never",
    )  # fmt: skip
    summary = run_train(cfg, out_dir / "grpo", base_urls=base_urls)
    metrics = out_dir / "grpo" / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.is_file() else []
    losses = [r["loss"] for r in rows if isinstance(r.get("loss"), int | float)]
    last = summary.get("last_log") or {}
    return {
        "examples": summary["train_examples"], "steps": summary["global_step"],
        "train_loss": last.get("train_loss", last.get("loss")), "last_loss": losses[-1] if losses else None,
        "train_s": round(time.perf_counter() - t0, 2), "adapter": summary["final_model"],
        "judge_usage": summary.get("judge_usage", {}),
    }  # fmt: skip


def sample_student(s: StudentConfig, model_name: str, rows: list[dict[str, Any]], *, seed: int) -> Any:
    """``k`` answers per row from the student at ``model_name`` (the base, or an adapter
    directory merged onto it) with :func:`train.evaluate.sample_completions`.

    Returns:
        ``(samples, stop_ids, seconds)``.
    """
    from train.evaluate import sample_completions
    from train.policy import device_name, load_policy, load_tokenizer, stop_token_ids

    t0 = time.perf_counter()
    tokenizer = load_tokenizer(model_name)
    model = load_policy(model_name, dtype=s.dtype, device=device_name())
    stops = stop_token_ids(tokenizer, model)
    samples = sample_completions(
        model, tokenizer, [r["prompt"] for r in rows], k=s.k, max_new_tokens=s.max_completion_length,
        temperature=s.temperature, top_p=s.top_p, batch_size=s.batch_size, seed=seed, stop_ids=stops,
    )  # fmt: skip
    return samples, stops, time.perf_counter() - t0


async def score_student(
    run: MetaRun, model_name: str, rows: list[dict[str, Any]], *, seed: int, label: str
) -> dict[str, Any]:
    """Sample the student at ``model_name`` on ``rows`` and grade every answer with the frozen
    judge through the run's client (role ``judge``), as :mod:`train.evaluate` does.

    Returns:
        ``{"mean_at_k", "best_at_k", "truncation_rate", "judge_failures", "items":
        {example_id: item score in [0, 1], None when no answer could be graded}, "answers": {example_id: [{text, score, truncated}]},
        "sample_s", "score_s"}``.
    """
    from train.evaluate import score_samples, summarize
    from train.rewards import LocalOverlapReward, RubricReward, VerifiableReward

    s = run.cfg.meta.student
    async with _compute_lock(run):
        samples, stops, sample_s = await asyncio.to_thread(sample_student, s, model_name, rows, seed=seed)
    t0 = time.perf_counter()
    if s.reward == "overlap":
        rewards: list[Any] = [LocalOverlapReward(stop_token_ids=stops)]
    else:
        rewards = [RubricReward(run.client, stop_token_ids=stops, retries=1), VerifiableReward(stop_token_ids=stops)]
    scores = await score_samples(rows, samples, rewards=rewards)
    res = summarize(model_name, label, "public", samples, scores, k=s.k, generate_s=sample_s)
    items, answers = {}, {}
    for r, ss, sc in zip(rows, samples, scores, strict=True):
        valid = [x for x in sc if x is not None]
        items[r["example_id"]] = fmean(valid) if valid else None  # every grade unusable: left out
        answers[r["example_id"]] = [{"text": a.text, "score": x, "truncated": a.truncated} for a, x in zip(ss, sc, strict=True)]  # fmt: skip
    return {
        "mean_at_k": res.mean_at_k if res.mean_at_k is not None else 0.0, "best_at_k": res.best_at_k,
        "truncation_rate": res.truncation_rate, "judge_failures": res.judge_failures, "items": items,
        "answers": answers, "sample_s": round(sample_s, 2), "score_s": round(time.perf_counter() - t0, 2),
    }  # fmt: skip


def relative_gain(after: float, before: float) -> float:
    """DataAgent's fitness ``(after - before) / before``; ``after - before`` when ``before`` is 0
    (the relative gain is undefined; the sign is kept)."""
    return (after - before) / before if before > 0 else after - before


# -- cached results --------------------------------------------------------------------------------
def _public_identity(run: MetaRun) -> dict[str, Any]:
    split = eval_split(run)
    return {"student": run.cfg.meta.student.identity(), "public": split.identity()["public"]["hash"]}


async def base_score(run: MetaRun) -> dict[str, Any]:
    """The untrained student on the public items, computed once per run (``student/base-<id>.json``):
    the fitness's base (seed ``meta.student.seed``) and the spread over ``base_reps`` seeds."""
    from meta.evalset import PUBLIC

    s = run.cfg.meta.student
    path = run.run_dir / "student" / f"base-{_hash(_public_identity(run))}.json"
    cached = _read(path)
    if cached is not None:
        return cached
    rows = getattr(eval_split(run), PUBLIC)
    reps = [await score_student(run, s.model, rows, seed=s.seed + r, label="base") for r in range(s.base_reps)]
    means = [r["mean_at_k"] for r in reps]
    out = {**reps[0], "seeds": [s.seed + r for r in range(s.base_reps)], "means_by_seed": means,
           "noise": max(means) - min(means)}  # fmt: skip
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    return out


def _attempts(trajectories: list[Any]) -> int:
    return sum(len(t.rounds) for t in trajectories)


async def harness_fitness(run: MetaRun, harness_dir: Path) -> dict[str, Any]:
    """The fitness of the harness in ``harness_dir`` (module docstring), cached on disk.

    Returns:
        The ``fitness.json`` record: ``fitness`` (relative gain), ``reason`` (``insufficient valid
        samples`` or ``None``), ``public_score``, ``base_score``, ``examples_accepted``,
        ``attempts_per_example``, ``train`` (steps, loss, seconds, adapter), ``public``
        (mean@k, best@k, truncation, per-item scores), ``bad_cases``, ``seconds``.

    Raises:
        InfrastructureError: generation had documents that failed on infrastructure.
    """
    from inner.sandbox.files import harness_content_hash
    from meta.evalset import PUBLIC
    from train.export import DatasetError, export_dataset

    s = run.cfg.meta.student
    docs = generation_docs(run)
    content = harness_content_hash(harness_dir, **run.harness_caps)
    ident = {"harness_content": content, "evaluator": run.evaluator_hash,
             "docs": sorted(d.doc_id for d in docs), **_public_identity(run)}  # fmt: skip
    out = run.run_dir / "student" / content / _hash(ident)
    cached = _read(out / "fitness.json")
    if cached is not None:
        return cached
    base = await base_score(run)
    t0 = time.perf_counter()
    gen = await run.evaluate(harness_dir, docs, "train")
    gen.raise_on_errors("student generation")
    gen_s = time.perf_counter() - t0
    rec: dict[str, Any] = {
        "identity": ident, "harness_content": content, "examples_accepted": gen.accepted,
        "documents": len(docs), "generation_pass_rate": gen.pass_rate,
        "attempts": _attempts(gen.trajectories),
        "attempts_per_example": _attempts(gen.trajectories) / gen.accepted if gen.accepted else None,
        "base_score": base["mean_at_k"],
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    try:
        export_dataset([run.eval_dir(harness_dir, docs)], out / "dataset", test_fraction=0.0, overwrite=True)
    except DatasetError:
        rec |= {"fitness": 0.0, "gain": 0.0, "reason": INSUFFICIENT, "public_score": base["mean_at_k"],
                "public": {k: v for k, v in base.items() if k not in ("seeds", "means_by_seed", "noise")}, "train": None,
                "bad_cases": bad_cases(base, getattr(eval_split(run), PUBLIC), s.bad_cases),
                "seconds": {"generate": round(gen_s, 2), "train": 0.0, "score": 0.0}}  # fmt: skip
        atomic_write_text(out / "fitness.json", json.dumps(rec, indent=1) + "\n")
        return rec
    async with _compute_lock(run):
        if s.method == "grpo":
            train = await asyncio.to_thread(
                train_student_grpo, s, out / "dataset", out, llm=run.cfg.llm, base_urls=run.client.replica_urls()
            )
        else:
            train = await asyncio.to_thread(train_student, s, out / "dataset", out)
    rows = getattr(eval_split(run), PUBLIC)
    scored = await score_student(run, train["adapter"], rows, seed=s.seed, label=content)
    gain = relative_gain(scored["mean_at_k"], base["mean_at_k"])
    rec |= {
        "fitness": gain, "gain": gain, "reason": None, "public_score": scored["mean_at_k"],
        "public": scored, "train": train,
        "bad_cases": bad_cases(scored, rows, s.bad_cases),
        "seconds": {"generate": round(gen_s, 2), "train": train["train_s"],
                    "score": round(scored["sample_s"] + scored["score_s"], 2)},
    }  # fmt: skip
    atomic_write_text(out / "fitness.json", json.dumps(rec, indent=1) + "\n")
    return rec


def bad_cases(scored: dict[str, Any], rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The student's ``n`` worst items of ``rows`` (lowest item score; its worst answer), with
    the question, reference answer and rubric: DataAgent's bad cases, from public items only."""
    by_id = {r["example_id"]: r for r in rows}
    graded = [e for e, x in scored["items"].items() if x is not None]
    worst = sorted(graded, key=lambda e: (scored["items"][e], e))[:n]
    out = []
    for e in worst:
        r, answers = by_id[e], scored["answers"][e]
        a = min(answers, key=lambda x: -1.0 if x["score"] is None else x["score"])
        out.append({"example_id": e, "doc_id": r["doc_id"], "question": r["question"],
                    "reference_answer": r["reference_answer"], "rubric": r["rubric"], "item_score": scored["items"][e],
                    "answer": a["text"][:600], "answer_score": a["score"], "truncated": a["truncated"]})  # fmt: skip
    return out


# -- admission --------------------------------------------------------------------------------------
@dataclass
class StudentDecision:
    """Admission of a candidate by its student's per-item public scores.

    Attributes:
        rule: ``strict`` (candidate public score > parent's: DataAgent's best-by-public-score) or
            ``paired`` (:mod:`meta.admission`'s rule on per-item differences ``d_i`` = candidate
            item score - parent item score: admitted iff ``T = sum d_i >= meta.min_gain_docs``
            and the one-sided sign-flip p-value <= ``meta.alpha``).
        admitted / T / p_value / candidate_score / parent_score / n_items / reason.
    """

    rule: str
    admitted: bool
    T: float
    p_value: float
    candidate_score: float
    parent_score: float
    n_items: int
    reason: str = ""


def student_decision(run: MetaRun, candidate: dict[str, Any], parent: dict[str, Any]) -> StudentDecision:
    """Decide a candidate against its parent on the per-item public scores of their students
    (one scoring each: training is the expensive step, so there are no replicates; the p-value
    is recorded under both rules). A candidate with no accepted example is never admitted."""
    from meta.admission import sign_flip_pvalue

    m = run.cfg.meta
    c_items, p_items = candidate["public"]["items"], parent["public"]["items"]
    ids = sorted(e for e in set(c_items) & set(p_items) if c_items[e] is not None and p_items[e] is not None)
    diffs = [c_items[e] - p_items[e] for e in ids]
    T = sum(diffs)
    p = sign_flip_pvalue(diffs, seed=m.seed)
    c, pa = candidate["public_score"], parent["public_score"]
    if candidate.get("reason") == INSUFFICIENT:  # nothing was trained: never admitted
        return StudentDecision(m.admission, False, T, p, c, pa, len(ids), f"rejected: {INSUFFICIENT}")
    if m.admission == "strict":
        ok = c > pa
        why = f"public score {c:.3f} {'>' if ok else 'is not strictly greater than'} the parent's {pa:.3f}"
    else:
        ok = T >= m.min_gain_docs and p <= m.alpha
        why = (f"T={T:.2f} items {'>=' if T >= m.min_gain_docs else '<'} {m.min_gain_docs:g}, "
               f"p={p:.3f} {'<=' if p <= m.alpha else '>'} {m.alpha:g}")  # fmt: skip
    return StudentDecision(m.admission, ok, T, p, c, pa, len(ids), why + (": admitted" if ok else ": rejected"))


# -- the analyzer ----------------------------------------------------------------------------------
def render_bad_cases(cases: list[dict[str, Any]]) -> str:
    """The bad cases as text for the analyzer."""
    if not cases:
        return "(none)"
    parts = []
    for c in cases:
        rubric = "; ".join(f"{x['id']} w{x['weight']} {x['criterion'][:80]}" for x in c["rubric"])
        score = "n/a" if c["answer_score"] is None else f"{c['answer_score']:.2f}"
        parts.append(
            f"### item score {c['item_score']:.2f}\n  question: {c['question'][:300]}\n  reference: "
            f"{c['reference_answer'][:240]}\n  rubric: {rubric}\n  student answer [{score}"
            f"{', truncated' if c['truncated'] else ''}]: {c['answer'][:300]}"
        )
    return "\n\n".join(parts)


async def analyze_student(run: MetaRun, parent: ArchiveEntry, fit: dict[str, Any], trajectories: list[Any]) -> str:
    """The analyzer's root-cause analysis from the parent's student results and bad cases
    (public items only) and its generation trajectories (``meta/prompts/analyzer_student.md``).

    Raises:
        LLMCallError: the request failed after retries.
    """
    from inner.sdk.templates import render
    from meta.analyze import PROMPTS, history_summary, render_trajectories

    m = run.cfg.meta
    train = fit.get("train") or {}
    messages = render(
        PROMPTS / "analyzer_student.md",
        harness_id=parent.harness_id,
        public_score=f"{fit['public_score']:.3f}",
        base_score=f"{fit['base_score']:.3f}",
        gain=f"{fit['gain']:+.3f}",
        accepted=str(fit["examples_accepted"]),
        documents=str(fit["documents"]),
        reason=fit.get("reason") or "-",
        train_loss="n/a" if train.get("train_loss") is None else f"{train['train_loss']:.3f}",
        history=history_summary(run.history, last=m.history_lines),
        bad_cases=render_bad_cases(fit["bad_cases"]),
        trajectories=render_trajectories(trajectories, max_chars=m.analyzer_chars),
    )
    return (await run.client.complete("analyzer", messages)).text.strip()


# -- the loop's hooks ---------------------------------------------------------------------------------
async def evaluate_root(run: MetaRun, root_dir: Path) -> tuple[float, dict[str, Any]]:
    """Before the first iteration: the base student's score and the starting harness's fitness
    (the evaluation set was checked by :func:`check_eval_set`).

    Returns:
        ``(public score of the starting harness's student, curve fields)``.
    """
    fit = await harness_fitness(run, root_dir)
    base = await base_score(run)
    return fit["public_score"], {
        "fitness": fit["fitness"], "gain": fit["gain"], "public_score": fit["public_score"],
        "base_score": base["mean_at_k"], "base_noise": base["noise"], "examples_accepted": fit["examples_accepted"],
    }  # fmt: skip


def _fitness_fields(fit: dict[str, Any], prefix: str) -> dict[str, Any]:
    train = fit.get("train") or {}
    return {
        f"{prefix}_fitness": fit["fitness"], f"{prefix}_public_score": fit["public_score"],
        f"{prefix}_examples_accepted": fit["examples_accepted"],
        f"{prefix}_attempts_per_example": fit["attempts_per_example"],
        f"{prefix}_train_loss": train.get("train_loss"), f"{prefix}_train_steps": train.get("steps"),
        f"{prefix}_train_s": train.get("train_s", 0.0), f"{prefix}_truncation_rate": fit["public"]["truncation_rate"],
        **({f"{prefix}_reason": fit["reason"]} if fit.get("reason") else {}),
    }  # fmt: skip


async def iterate(run: MetaRun, i: int, rec: dict[str, Any]) -> dict[str, Any]:
    """One iteration under ``meta.fitness=student_gain`` (module docstring); returns the fields
    :func:`meta.loop.run_iteration` adds to the history line (``status``, ``reason``)."""
    from meta.loop import IterationStatus, propose_candidate
    from meta.select import ArchiveEntry, select_parent

    cfg = run.cfg.meta
    parent = select_parent(run.archive, strategy=cfg.selection, temperature=cfg.temperature, seed=cfg.seed, iteration=i)
    parent_dir = run.materialize(parent.commit)
    rec |= {"parent": parent.commit, "parent_harness_id": parent.harness_id, "parent_val": parent.val_pass_rate}
    parent_fit = await harness_fitness(run, parent_dir)  # cached: computed when it was admitted
    gen = await run.evaluate(parent_dir, generation_docs(run), "train")  # cached records
    rec["train_pass_rate"] = gen.pass_rate
    analysis = await analyze_student(run, parent, parent_fit, gen.trajectories)
    rec["analysis"] = analysis

    attempt = await propose_candidate(run, i, parent, parent_dir, analysis, rec)
    if isinstance(attempt, dict):
        return attempt
    scratch = run.run_dir / "scratch" / f"iter-{i:04d}"
    cand_id = attempt.harness_id
    rec["candidate_harness_id"] = cand_id

    fit = await harness_fitness(run, scratch)
    decision = student_decision(run, fit, parent_fit)
    rec |= {
        "candidate_val": fit["public_score"], "parent_val": parent_fit["public_score"], "gain": fit["gain"],
        "base_score": fit["base_score"], "T": decision.T, "p_value": decision.p_value,
        "admission": asdict(decision), **_fitness_fields(fit, "candidate"),
    }  # fmt: skip
    if decision.admitted:
        status, reason = IterationStatus.ADMITTED, None
    elif fit["examples_accepted"] == 0 and fit["attempts"] == 0:
        status, reason = IterationStatus.CRASHED, f"candidate produced nothing: {INSUFFICIENT}"
    else:
        status, reason = IterationStatus.REJECTED, decision.reason
    summary = analysis.strip().splitlines()[0][:120] if analysis.strip() else "(empty analysis)"
    message = (
        f"iter {i}: {status} (public {fit['public_score']:.3f} vs parent {parent_fit['public_score']:.3f})\n\n"
        f"iteration: {i}\nparent: {parent.commit}\npublic_score: {fit['public_score']:.4f}\n"
        f"parent_public_score: {parent_fit['public_score']:.4f}\ngain: {fit['gain']:.4f}\n"
        f"rule: {decision.rule}\nstatus: {status}\nchanged: {', '.join(attempt.changed)}\nanalysis: {summary}\n"
    )
    commit = run.lineage.add_candidate(scratch, parent=parent.commit, iteration=i, message=message)
    rec |= {"candidate": commit, "diff_summary": run.lineage.diff_stat(parent.commit, commit),
            "admitted": decision.admitted}  # fmt: skip
    if decision.admitted:
        run.lineage.admit(commit, i)
        run.archive.add(ArchiveEntry(commit, cand_id, i, parent.commit, fit["public_score"]))
    return {"status": status, "reason": reason}


def private_replay_text(conf: dict[str, Any], *, base: str = "base") -> str:
    """The result of :func:`replay_private` (``summary.json``'s ``confirmation`` under
    ``student_gain``) in words: the private mean@k of the base (called ``base``), start and best
    students, and the best's and start's gains relative to the base (DataAgent's fitness: a
    ratio, not points)."""
    priv = conf["private"]
    return (
        f"{base} {priv['base']:.3f}, start {priv['start']:.3f}, best {priv['best']:.3f} "
        f"(relative gain of best {conf['gain_best']:+.3f}, of start {conf['gain_start']:+.3f})"
    )


async def replay_private(run: MetaRun) -> dict[str, Any]:
    """When the run ends: the base student and the students of the starting and the best
    harness (by public score) on the **private** items, the only time they are read; cached in
    ``student/private.json``.

    Returns:
        ``{"private": {"base", "start", "best"} mean@k, "gain_start", "gain_best" (relative to
        the base), "best_vs_start", "public": {...}, "items": n, "best_commit", "start_commit"}``.
    """
    from meta.evalset import PRIVATE

    s = run.cfg.meta.student
    best, start = run.archive.best(), run.archive.entries[0]
    path = run.run_dir / "student" / "private.json"
    key = {"best": best.commit, "start": start.commit, **_public_identity(run)}
    cached = _read(path)
    if cached is not None and cached.get("key") == key:
        return cached
    rows = getattr(eval_split(run), PRIVATE)
    scores: dict[str, Any] = {"base": await score_student(run, s.model, rows, seed=s.seed, label="base")}
    public: dict[str, Any] = {}
    for side, entry in (("start", start), ("best", best)):
        fit = await harness_fitness(run, run.materialize(entry.commit))
        public[side] = fit["public_score"]
        adapter = (fit.get("train") or {}).get("adapter")
        if side == "best" and best.commit == start.commit:
            scores["best"] = scores["start"]
        elif adapter is None:  # nothing accepted: the student is the base one
            scores[side] = scores["base"]
        else:
            scores[side] = await score_student(run, adapter, rows, seed=s.seed, label=side)
    base = scores["base"]["mean_at_k"]
    out = {
        "key": key, "items": len(rows), "documents": len({r["doc_id"] for r in rows}),
        "private": {k: v["mean_at_k"] for k, v in scores.items()},
        "private_items": {k: v["items"] for k, v in scores.items()},
        "gain_start": relative_gain(scores["start"]["mean_at_k"], base),
        "gain_best": relative_gain(scores["best"]["mean_at_k"], base),
        "best_vs_start": scores["best"]["mean_at_k"] - scores["start"]["mean_at_k"],
        "public": {**public, "base": (await base_score(run))["mean_at_k"]},
        "best_commit": best.commit, "start_commit": start.commit,
    }  # fmt: skip
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    return out
