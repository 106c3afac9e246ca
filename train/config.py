"""Typed configs of ``autodata-train`` and ``autodata-eval`` (values in ``conf/train.yaml`` and
``conf/eval.yaml``; these dataclasses are the schema, registered with Hydra's ConfigStore).

The GRPO settings keep TRL's field names (:class:`trl.GRPOConfig`) so that a value means the
same thing here and in TRL's documentation; ``grpo.extra`` passes any other ``GRPOConfig``
field through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inner.config import LLMConfig
from inner.sdk.errors import ConfigError
from inner.tracking import LoggerConfig

#: ``policy.model`` value that means the embedded Qwen2.5-Coder-0.5B-Instruct (the project's
#: GGUF, dequantized once with transformers; :func:`train.policy.embedded_checkpoint`).
EMBEDDED = "embedded"
DTYPES = ("float32", "bfloat16", "float16", "auto")
REWARD_KINDS = ("judge", "overlap")


def _check(cond: bool, key: str, value: object, fix: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r} is invalid: {fix}")


@dataclass
class DataConfig:
    """What to train on.

    Attributes:
        dataset: an ``autodata-export-dataset`` directory (its ``train`` split is used).
        runs: or run directories: exported first into ``<output dir>/dataset``.
        test_fraction / split_seed: the document split of that export.
        max_examples: use at most this many training examples (the first ones); ``None`` = all.
    """

    dataset: str | None = None
    runs: list[str] = field(default_factory=list)
    test_fraction: float = 0.2
    split_seed: int = 0
    max_examples: int | None = None

    def __post_init__(self) -> None:
        _check(
            self.max_examples is None or self.max_examples >= 1, "data.max_examples", self.max_examples, "must be >= 1"
        )


@dataclass
class LoraSettings:
    """LoRA through ``peft`` (off by default: full fine-tuning).

    Attributes:
        r / alpha / dropout: LoRA rank, scaling numerator and dropout.
        target_modules: module names to adapt (Qwen2 attention projections by default).
    """

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        _check(self.r >= 1, "policy.lora.r", self.r, "must be >= 1")


@dataclass
class PolicyConfig:
    """The model being trained or evaluated.

    Attributes:
        model: ``embedded`` (Qwen2.5-Coder-0.5B-Instruct from the project's GGUF), a local
            checkpoint directory, or a Hugging Face model id (GPU machines with the hub
            reachable; nothing is downloaded here).
        dtype: weights dtype: ``float32`` (CPU), ``bfloat16`` (GPU), ``float16`` or ``auto``.
        lora: LoRA adapter settings.
    """

    model: str = EMBEDDED
    dtype: str = "float32"
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        _check(self.dtype in DTYPES, "policy.dtype", self.dtype, f"use one of {DTYPES}")


@dataclass
class RewardConfig:
    """How completions are rewarded.

    Attributes:
        kind: ``judge`` (the frozen rubric judge for rubric rows and answer equivalence for
            exact-answer rows: :mod:`train.rewards`) or ``overlap`` (judge-free word overlap with
            the reference; benchmarks on machines without a judge server only).
        partial_credit: allow 0.5 judge verdicts (default binary, as the inner evaluator).
        judge_retries: further judge attempts when its output is unusable.
    """

    kind: str = "judge"
    partial_credit: bool = False
    judge_retries: int = 1

    def __post_init__(self) -> None:
        _check(self.kind in REWARD_KINDS, "reward.kind", self.kind, f"use one of {REWARD_KINDS}")
        _check(self.judge_retries >= 0, "reward.judge_retries", self.judge_retries, "must be >= 0")


@dataclass
class GRPOSettings:
    """TRL ``GRPOConfig`` fields (same names and meanings; see TRL's GRPO documentation).

    The effective batch in completions per optimizer step is ``per_device_train_batch_size *
    gradient_accumulation_steps * processes``; it must be divisible by ``num_generations`` (the
    group size of GRPO), and divided by it gives prompts per step.

    Attributes:
        learning_rate: AdamW learning rate (paper: 1e-6).
        num_train_epochs / max_steps: training length (``max_steps > 0`` wins).
        per_device_train_batch_size / gradient_accumulation_steps: completions per step.
        num_generations: completions per prompt (the GRPO group).
        max_completion_length: tokens a completion may have; longer ones are cut (truncated).
        temperature / top_p: rollout sampling.
        beta: KL coefficient (0 = no reference model; KL is logged only when > 0).
        mask_truncated_completions: leave truncated completions out of the loss (they still get
            reward 0 and count in the truncation rate).
        save_steps / save_total_limit: checkpoints every N steps, keep the last M.
        logging_steps: log metrics every N steps.
        seed: sampling and shuffling seed.
        gradient_checkpointing / bf16: memory and precision switches (GPU).
        use_vllm / vllm_mode / vllm_server_base_url / vllm_gpu_memory_utilization: rollouts with
            vLLM on GPU machines: ``colocate`` (vLLM in the training process, sharing the GPU) or
            ``server`` (a separate ``trl vllm-serve`` process at ``vllm_server_base_url``).
        extra: any other ``GRPOConfig`` field, passed through.
    """

    learning_rate: float = 1e-6
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    num_generations: int = 8
    max_completion_length: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0
    mask_truncated_completions: bool = False
    save_steps: int = 50
    save_total_limit: int | None = 2
    logging_steps: int = 1
    seed: int = 0
    gradient_checkpointing: bool = False
    bf16: bool = False
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_server_base_url: str | None = None
    vllm_gpu_memory_utilization: float = 0.3
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.learning_rate > 0, "grpo.learning_rate", self.learning_rate, "must be > 0")
        _check(self.num_generations >= 2, "grpo.num_generations", self.num_generations, "must be >= 2 (a GRPO group)")
        _check(
            self.max_completion_length >= 1, "grpo.max_completion_length", self.max_completion_length, "must be >= 1"
        )
        _check(self.vllm_mode in ("colocate", "server"), "grpo.vllm_mode", self.vllm_mode, "use colocate or server")
        _check(
            (self.per_device_train_batch_size * self.gradient_accumulation_steps) % self.num_generations == 0,
            "grpo.per_device_train_batch_size",
            self.per_device_train_batch_size,
            f"per_device_train_batch_size * gradient_accumulation_steps must be divisible by "
            f"grpo.num_generations={self.num_generations}",
        )


@dataclass
class TrainConfig:
    """Root config of ``autodata-train``.

    Attributes:
        resume: ``auto`` (continue from the last ``checkpoint-*`` in the output directory if
            there is one), ``never``, or a checkpoint directory.
        llm: the judge's endpoint and sampling (role ``judge``; the ``llm`` config group).
        logger: ``logger=wandb`` logs every step to W&B (offline by default).
    """

    data: DataConfig = field(default_factory=DataConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    reward: RewardConfig = field(default_factory=RewardConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    resume: str = "auto"


@dataclass
class EvalSet:
    """One evaluation set.

    Attributes:
        name: label in the table (e.g. ``in_domain``, ``ood_legal``).
        dataset: an ``autodata-export-dataset`` directory.
        split: ``test``, ``train`` or ``all`` (both; for an out-of-distribution domain).
    """

    name: str = "in_domain"
    dataset: str = ""
    split: str = "test"

    def __post_init__(self) -> None:
        _check(self.split in ("test", "train", "all"), f"sets.{self.name}.split", self.split, "use test, train or all")


@dataclass
class EvalConfig:
    """Root config of ``autodata-eval``.

    Attributes:
        models: models to compare (``embedded``, checkpoint directories, model ids).
        labels: a label per model (default: ``base`` for ``embedded``, else the directory name).
        sets: evaluation sets (in-distribution test split, out-of-distribution datasets).
        k: completions sampled per example (mean@k and best@k).
        max_examples: at most this many examples per set (the first ones); ``None`` = all.
        max_completion_length: tokens per completion; longer ones count as truncated (reward 0).
        temperature / top_p: sampling.
        batch_size: prompts generated together.
        seed: sampling seed (the same for every model).
        dtype: weights dtype.
    """

    models: list[str] = field(default_factory=lambda: [EMBEDDED])
    labels: list[str] = field(default_factory=list)
    sets: list[EvalSet] = field(default_factory=list)
    k: int = 4
    max_examples: int | None = None
    max_completion_length: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 4
    seed: int = 0
    dtype: str = "float32"
    reward: RewardConfig = field(default_factory=RewardConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)

    def __post_init__(self) -> None:
        _check(bool(self.models), "models", self.models, "name at least one model")
        _check(not self.labels or len(self.labels) == len(self.models), "labels", self.labels, "one label per model")
        _check(self.k >= 1, "k", self.k, "must be >= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        _check(self.dtype in DTYPES, "dtype", self.dtype, f"use one of {DTYPES}")


def register_configs() -> None:
    """Register ``train_schema`` and ``eval_schema`` with Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
