"""Typed configuration of ``autodata-evolve`` (values in ``conf/evolve.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from inner.config import (
    ExecutorConfig,
    GateConfig,
    GenerateConfig,
    InnerConfig,
    LLMConfig,
    TaskConfig,
    _check,
)
from inner.evaluator.scoring import RubricPolicyConfig
from inner.sdk.errors import ConfigError
from inner.tracking import LoggerConfig
from meta.admission import AdmissionConfig
from meta.select import STRATEGIES
from meta.student import FITNESS, StudentConfig

#: how the implementer writes edits (``meta.edit_format``)
EDIT_FORMATS = ("auto", "blocks", "json")
#: admission rules (``meta.admission``; :mod:`meta.admission`)
ADMISSION_RULES = ("paired", "strict")


@dataclass
class SplitConfig:
    """Document splits. Sizes apply to the task's corpus shuffled with ``seed``; explicit file
    lists (names inside ``task.corpus``) override them. The test split is sealed: its files are
    recorded in ``splits.json`` but never opened by the meta loop.

    Attributes:
        train / val / test: split sizes in documents.
    """

    train: int = 50
    val: int = 25
    test: int = 0
    seed: int = 0
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(self.train >= 1 or bool(self.train_files), "split.train", self.train, "must be >= 1")
        _check(self.val >= 1 or bool(self.val_files), "split.val", self.val, "must be >= 1")
        _check(self.test >= 0, "split.test", self.test, "must be >= 0")


@dataclass
class MetaConfig:
    """The evolution loop.

    Attributes:
        start_harness: the root harness (name under ``harnesses/`` or a directory).
        selection: ``boltzmann`` (default), ``greedy`` or ``uniform``.
        temperature: Boltzmann T; 0.1 is the published Autodata setting.
        minibatch: training documents the parent is evaluated on per iteration (default 4).
        in_flight: iterations running concurrently (K, default 2).
        max_iterations / max_tokens / max_wall_s: budgets; the run stops at the first reached.
        seed: seeds parent selection and minibatch sampling.
        analyzer_chars: characters of trajectories shown to the analyzer.
        history_lines: the most recent iterations summarized for the analyzer and the
            implementer (0: none).
        edit_format: ``blocks`` (SEARCH/REPLACE text), ``json`` (schema-constrained edits,
            rendered as blocks) or ``auto`` (``json`` when the implementer's endpoint uses
            llama.cpp grammars, i.e. the small embedded model; ``blocks`` otherwise).
        editable: ``fnmatch`` patterns of the harness files the implementer sees and may edit
            (``*`` crosses ``/``; default ``["*"]``: every file). ``["prompts/*"]`` restricts
            mutation to the prompts, for implementers too small to write working code; an edit
            of any other file is an invalid edit (kind ``scope``).
        max_consecutive_errors: the run stops cleanly (circuit breaker) after this many
            consecutive iterations with status ``error`` (infrastructure failures, e.g. the
            endpoint down after retries); they are redone on resume.
        allow_evaluator_change: resume a run whose recorded evaluator config differs (the
            differing keys are logged; earlier evaluations stay keyed by the old config and are
            not reused). Off by default: a resumed run is refused, naming the keys.
        admission: the admission rule (:mod:`meta.admission`): ``paired`` (default: the
            candidate's fresh replicates against the parent's per-document tallies, admitted iff
            ``T >= min_gain_docs`` and the one-sided sign-flip p-value ``<= alpha``) or ``strict``
            (the paper's: one candidate evaluation's pass rate strictly greater than one fresh
            parent evaluation's).
        alpha: the paired rule's false-admission rate (0.10): its one test's level without
            racing; with racing the tests spend it (``first_look_share``, ``raced_look_share``).
        min_gain_docs: least gain ``T`` (sum over validation documents of the difference in
            pass fraction, in documents) to admit under ``paired`` (1).
        replicates: candidate replicates evaluated before the paired test (2).
        race_alpha: when a test's p-value is above its level but ``<= race_alpha`` one more
            candidate replicate is raced, up to ``max_replicates``; ``null`` disables racing.
        race_parent: each raced replicate also adds one fresh parent replicate (counted in the
            parent's tallies).
        first_look_share / raced_look_share: with racing, the first test is at
            ``alpha * first_look_share`` and each raced one at ``alpha * raced_look_share``
            (alpha spending; :meth:`meta.admission.AdmissionConfig.look_alphas`).
        max_replicates: most candidate replicates with racing (4).
        min_parent_runs: a parent's tallies are topped up (fresh replicates) to this many runs
            per validation document before a paired decision (3).
        stop_if_not_ahead: reject after the first candidate replicate when ``T <= 0``.
        noise_reps: replicates of the starting harness on the validation documents before the
            first iteration (the noise floor; they seed the root's tallies), >= 1 (3).
        confirm_reps: replicates of the best and the starting harness on the sealed test split
            when the run ends (confirmation); 0 skips it (2).
        fitness: what scores a harness: ``pass_rate`` (default: validation pass rate, the
            paper's) or ``student_gain`` (the relative gain of a student fine-tuned on the
            harness's accepted examples, on the public part of a fixed evaluation set: the
            DataAgent setting, :mod:`meta.student`).
        student: the student, its training and scoring under ``student_gain``.
    """

    start_harness: str = "baseline"
    selection: str = "boltzmann"
    temperature: float = 0.1
    minibatch: int = 4
    in_flight: int = 2
    max_iterations: int = 10
    max_tokens: int | None = None
    max_wall_s: float | None = None
    seed: int = 0
    analyzer_chars: int = 12000
    history_lines: int = 20
    edit_format: str = "auto"
    editable: list[str] = field(default_factory=lambda: ["*"])
    max_consecutive_errors: int = 3
    allow_evaluator_change: bool = False
    # the admission settings default to meta.admission.AdmissionConfig's (one source of truth,
    # measured by experiments/bench/admission.py); conf/evolve.yaml states the same values
    admission: str = AdmissionConfig.rule
    alpha: float = AdmissionConfig.alpha
    min_gain_docs: float = AdmissionConfig.min_gain_docs
    replicates: int = AdmissionConfig.replicates
    race_alpha: float | None = AdmissionConfig.race_alpha
    race_parent: bool = AdmissionConfig.race_parent
    first_look_share: float = AdmissionConfig.first_look_share
    raced_look_share: float = AdmissionConfig.raced_look_share
    max_replicates: int = AdmissionConfig.max_replicates
    min_parent_runs: int = AdmissionConfig.min_parent_runs
    stop_if_not_ahead: bool = AdmissionConfig.stop_if_not_ahead
    noise_reps: int = 3
    confirm_reps: int = 2
    fitness: str = "pass_rate"
    student: StudentConfig = field(default_factory=StudentConfig)

    def admission_config(self) -> AdmissionConfig:
        """The :class:`meta.admission.AdmissionConfig` of these settings (seeded by ``seed``)."""
        return AdmissionConfig(
            rule=self.admission, replicates=self.replicates, stop_if_not_ahead=self.stop_if_not_ahead,
            min_parent_runs=self.min_parent_runs, min_gain_docs=self.min_gain_docs, alpha=self.alpha,
            race_alpha=self.race_alpha, race_parent=self.race_parent, first_look_share=self.first_look_share,
            raced_look_share=self.raced_look_share, max_replicates=self.max_replicates, seed=self.seed,
        )  # fmt: skip

    def __post_init__(self) -> None:
        _check(
            self.selection in STRATEGIES,
            "meta.selection",
            self.selection,
            f"use one of {STRATEGIES}",
        )
        _check(self.temperature > 0, "meta.temperature", self.temperature, "must be > 0")
        _check(self.minibatch >= 1, "meta.minibatch", self.minibatch, "must be >= 1")
        _check(self.in_flight >= 1, "meta.in_flight", self.in_flight, "must be >= 1")
        _check(self.max_iterations >= 0, "meta.max_iterations", self.max_iterations, "must be >= 0")
        _check(self.history_lines >= 0, "meta.history_lines", self.history_lines, "must be >= 0 (0: no history)")
        _check(self.edit_format in EDIT_FORMATS, "meta.edit_format", self.edit_format, f"use one of {EDIT_FORMATS}")
        _check(
            bool(self.editable) and all(isinstance(p, str) and p.strip() for p in self.editable),
            "meta.editable",
            self.editable,
            "must be a non-empty list of file patterns (e.g. ['*'] or ['prompts/*'])",
        )
        _check(self.analyzer_chars >= 1, "meta.analyzer_chars", self.analyzer_chars, "must be >= 1")
        _check(
            self.max_consecutive_errors >= 1,
            "meta.max_consecutive_errors",
            self.max_consecutive_errors,
            "must be >= 1",
        )
        _check(self.admission in ADMISSION_RULES, "meta.admission", self.admission, f"use one of {ADMISSION_RULES}")
        _check(self.noise_reps >= 1, "meta.noise_reps", self.noise_reps, "must be >= 1")
        _check(self.fitness in FITNESS, "meta.fitness", self.fitness, f"use one of {FITNESS}")
        _check(self.confirm_reps >= 0, "meta.confirm_reps", self.confirm_reps, "must be >= 0 (0: no confirmation)")
        try:
            self.admission_config()
        except ValueError as exc:
            raise ConfigError(f"meta admission settings: {exc}") from exc


@dataclass
class EvolveConfig:
    """Root config of ``autodata-evolve``: the inner loop's sections plus ``split`` and ``meta``
    (and ``executor``: where the evaluations' documents run)."""

    llm: LLMConfig = field(default_factory=LLMConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    rubric: RubricPolicyConfig = field(default_factory=RubricPolicyConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    progress: bool = True
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def generate_config(self) -> GenerateConfig:
        """The config of one harness evaluation (Agentic Self-Instruct, same gate and solvers)."""
        return GenerateConfig(
            method="agentic_self_instruct",
            harness=self.meta.start_harness,
            llm=self.llm,
            gate=self.gate,
            rubric=self.rubric,
            task=self.task,
            inner=self.inner,
            progress=False,
            executor=self.executor,
        )


def register_configs() -> None:
    """Register ``evolve_schema`` with Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="evolve_schema", node=EvolveConfig)
