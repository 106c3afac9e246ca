"""Typed configuration: one dataclass per component, registered with Hydra's ConfigStore.

The YAML files under ``conf/`` hold the values; these dataclasses are the schema. The entry
point converts the composed config once with ``OmegaConf.to_object`` so code below it only
sees real dataclasses. Every ``__post_init__`` validates its values and raises
:class:`~inner.errors.ConfigError` naming the key, the bad value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from inner.errors import ConfigError
from inner.tracking import LoggerConfig

ROLES = ("challenger", "quality_verifier", "main_agent", "weak_solver", "strong_solver", "judge")
META_ROLES = ("analyzer", "implementer", "taxonomist")
METHODS = ("agentic_self_instruct", "cot_self_instruct")
BACKENDS = ("local", "vllm", "openai")
JSON_MODES = ("json_schema", "llama_cpp", "none")
VERIFIABLE_MODES = ("never", "auto", "always")


def _check(cond: bool, key: str, value: object, fix: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r} is invalid: {fix}")


def _fraction(key: str, value: float) -> None:
    _check(0.0 <= value <= 1.0, key, value, "must be a fraction in [0, 1]")


@dataclass
class EndpointConfig:
    """One OpenAI-compatible server.

    Attributes:
        base_url: e.g. ``http://127.0.0.1:8000/v1``. ``None`` means "the server the backend
            starts" (``llm=local`` or ``llm=vllm``).
        model: model name sent in each request.
        api_key_env: name of the environment variable that holds the key; ``None`` sends a
            placeholder key (local servers ignore it). Keys never live in config files.
        max_in_flight: concurrent requests allowed to this endpoint (asyncio semaphore).
        timeout_s: per-request timeout in seconds.
        max_retries: retries on 429, 5xx, timeouts and dropped connections (exponential
            backoff, done by the ``openai`` client).
        json_mode: how to ask for schema-constrained JSON: ``json_schema`` (OpenAI, vLLM),
            ``llama_cpp`` (llama-cpp-python's ``{"type": "json_object", "schema": ...}``,
            grammar-constrained) or ``none`` (parse the text, repair once).
    """

    base_url: str | None = None
    model: str = "qwen2.5-coder-0.5b-instruct"
    api_key_env: str | None = None
    max_in_flight: int = 8
    timeout_s: float = 600.0
    max_retries: int = 4
    json_mode: str = "json_schema"

    def validate(self, prefix: str) -> None:
        """Raise ConfigError for a bad value; ``prefix`` is e.g. ``llm.endpoints.default``
        (called by :class:`LLMConfig`, so messages name the full key)."""
        _check(self.max_in_flight >= 1, f"{prefix}.max_in_flight", self.max_in_flight, "must be >= 1")
        _check(self.timeout_s > 0, f"{prefix}.timeout_s", self.timeout_s, "must be > 0 seconds")
        _check(self.max_retries >= 0, f"{prefix}.max_retries", self.max_retries, "must be >= 0")
        _check(self.json_mode in JSON_MODES, f"{prefix}.json_mode", self.json_mode, f"use one of {JSON_MODES}")


@dataclass
class RoleConfig:
    """Sampling parameters of one role and the endpoint it uses.

    Attributes:
        endpoint: a key of ``llm.endpoints``.
        temperature: sampling temperature.
        top_p: nucleus sampling mass in (0, 1].
        max_tokens: completion budget in tokens.
        doc_chars: how many characters of the source document this role sees (clean
            truncation at a paragraph or sentence boundary); 0 means none.
    """

    endpoint: str = "default"
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    doc_chars: int = 6000

    def validate(self, prefix: str) -> None:
        """Raise ConfigError for a bad value; ``prefix`` is e.g. ``llm.roles.judge``."""
        _check(0.0 <= self.temperature <= 2.0, f"{prefix}.temperature", self.temperature, "must be in [0, 2]")
        _check(0.0 < self.top_p <= 1.0, f"{prefix}.top_p", self.top_p, "must be in (0, 1]")
        _check(self.max_tokens >= 1, f"{prefix}.max_tokens", self.max_tokens, "must be >= 1")
        _check(self.doc_chars >= 0, f"{prefix}.doc_chars", self.doc_chars, "must be >= 0")


@dataclass
class RolesConfig:
    """The six roles of the inner loop (DESIGN.md "Roles") and the two of the meta loop."""

    challenger: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=0.8, max_tokens=700))
    quality_verifier: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=0.0, max_tokens=200))
    main_agent: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=0.3, max_tokens=300, doc_chars=0))
    weak_solver: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=0.7, max_tokens=400, doc_chars=0))
    strong_solver: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=0.7, max_tokens=400))
    judge: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=0.0, max_tokens=300, doc_chars=0))
    #: meta-optimization roles; ``None`` = use the challenger's endpoint and sampling
    analyzer: RoleConfig | None = None
    implementer: RoleConfig | None = None
    #: the report's question-type taxonomy classifier; ``None`` = the challenger's
    taxonomist: RoleConfig | None = None


@dataclass
class BackendConfig:
    """The server the project starts (or not) before the run.

    Attributes:
        kind: ``local`` (embedded llama.cpp + Qwen2.5-Coder-0.5B GGUF from PyPI packages),
            ``vllm`` (``vllm serve MODEL``) or ``openai`` (nothing to start).
        model_cache_dir: where the assembled GGUF is kept; ``None`` = ``~/.cache/autodata``.
        n_ctx: context window of the local server, tokens.
        n_threads: CPU threads of the local server; ``None`` = all cores.
        vllm_model: model to serve with ``llm=vllm`` (defaults to the endpoint's model).
        extra_args: extra command-line arguments for the server.
        port: fixed port; ``None`` picks a free loopback port.
        startup_timeout_s: how long to wait for the server to answer, seconds.
    """

    kind: str = "local"
    model_cache_dir: str | None = None
    n_ctx: int = 8192
    n_threads: int | None = None
    vllm_model: str | None = None
    extra_args: list[str] = field(default_factory=list)
    port: int | None = None
    startup_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        _check(self.kind in BACKENDS, "llm.backend.kind", self.kind, f"use one of {BACKENDS}")
        _check(self.n_ctx >= 512, "llm.backend.n_ctx", self.n_ctx, "must be >= 512 tokens")
        _check(
            self.startup_timeout_s > 0,
            "llm.backend.startup_timeout_s",
            self.startup_timeout_s,
            "must be > 0",
        )


@dataclass
class LLMConfig:
    """All LLM access: the backend, the endpoints, the roles, and the response cache.

    Attributes:
        cache_dir: content-addressed response cache; ``None`` = ``<run_dir>/llm_cache``.
        seed: base sampling seed; attempt ``i`` of a call is sent with ``seed + i``.
    """

    backend: BackendConfig = field(default_factory=BackendConfig)
    endpoints: dict[str, EndpointConfig] = field(default_factory=lambda: {"default": EndpointConfig()})
    roles: RolesConfig = field(default_factory=RolesConfig)
    cache_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check(bool(self.endpoints), "llm.endpoints", self.endpoints, "define at least one endpoint")
        for name, ep in self.endpoints.items():
            ep.validate(f"llm.endpoints.{name}")
        for f in fields(self.roles):
            role: RoleConfig | None = getattr(self.roles, f.name)
            if role is None:
                continue
            role.validate(f"llm.roles.{f.name}")
            _check(
                role.endpoint in self.endpoints,
                f"llm.roles.{f.name}.endpoint",
                role.endpoint,
                f"must name one of llm.endpoints {sorted(self.endpoints)}",
            )

    def role(self, name: str) -> RoleConfig:
        """The :class:`RoleConfig` of ``name``; raises ConfigError for an unknown role."""
        if not hasattr(self.roles, name):
            raise ConfigError(f"role={name!r} is unknown: use one of {ROLES + META_ROLES}")
        return getattr(self.roles, name) or self.roles.challenger


@dataclass
class GateConfig:
    """The acceptance gate. Defaults are the deployed Autodata thresholds (DESIGN.md,
    "Acceptance gate"): weak_avg <= 0.65, max weak <= 0.75, no weak 0,
    0.60 <= strong_avg < 0.95, no strong 0, strong_avg - weak_avg >= 0.20."""

    weak_avg_max: float = 0.65
    weak_max: float = 0.75
    reject_weak_zero: bool = True
    strong_avg_min: float = 0.60
    strong_avg_max: float = 0.95
    reject_strong_zero: bool = True
    min_gap: float = 0.20

    def __post_init__(self) -> None:
        for name in ("weak_avg_max", "weak_max", "strong_avg_min", "strong_avg_max", "min_gap"):
            _fraction(f"gate.{name}", getattr(self, name))
        _check(
            self.strong_avg_min < self.strong_avg_max,
            "gate.strong_avg_min",
            self.strong_avg_min,
            f"must be below gate.strong_avg_max={self.strong_avg_max}",
        )


@dataclass
class TaskConfig:
    """Which documents to ground on, and how answers are checked.

    Attributes:
        name: task name recorded with every example.
        corpus: directory of ``.txt``/``.md``/``.tex``/``.pdf`` files (relative paths resolve
            against the working directory, then the project root).
        files: explicit file names inside ``corpus``; empty = every supported file.
        exclude: file names never loaded as documents (provenance files).
        limit: keep at most this many documents (after ``order``); ``None`` = all.
        order: ``name`` (sorted file names) or ``shortest`` (fewest characters first).
        domain: a short noun phrase for prompts, e.g. "computer-science research paper".
        verifiable: ``never`` (rubric + judge), ``always`` (majority vote against the
            reference), or ``auto`` (majority vote when the challenger marks the answer exact).
    """

    name: str = "cs_papers"
    corpus: str = "experiments/corpora/cs"
    files: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=lambda: ["SOURCES.md", "README.md", "LICENSE.md"])
    limit: int | None = None
    order: str = "name"
    domain: str = "research paper"
    verifiable: str = "never"

    def __post_init__(self) -> None:
        _check(self.limit is None or self.limit >= 1, "task.limit", self.limit, "must be >= 1 or null")
        _check(self.order in ("name", "shortest"), "task.order", self.order, "use 'name' or 'shortest'")
        _check(
            self.verifiable in VERIFIABLE_MODES,
            "task.verifiable",
            self.verifiable,
            f"use one of {VERIFIABLE_MODES}",
        )


@dataclass
class InnerConfig:
    """The round loop and the frozen evaluator.

    Attributes:
        max_rounds: challenger rounds per document before giving up (DESIGN.md default 5).
        n_weak / n_strong: solver attempts per round, run in parallel (default 3 each).
        weak_open_book / strong_open_book: whether the solver sees the source document
            (default: weak closed-book, strong open-book).
        max_concurrent_documents: documents in flight at once; the endpoints' ``max_in_flight``
            bounds the requests.
        skip_solvers_on_qv_fail: a challenge the quality verifier rejects is not sent to the
            solvers (it cannot pass the gate anyway; saves 2 x (n + n) calls).
    """

    max_rounds: int = 5
    n_weak: int = 3
    n_strong: int = 3
    weak_open_book: bool = False
    strong_open_book: bool = True
    max_concurrent_documents: int = 16
    skip_solvers_on_qv_fail: bool = True

    def __post_init__(self) -> None:
        _check(self.max_rounds >= 1, "inner.max_rounds", self.max_rounds, "must be >= 1")
        _check(self.n_weak >= 1, "inner.n_weak", self.n_weak, "must be >= 1")
        _check(self.n_strong >= 1, "inner.n_strong", self.n_strong, "must be >= 1")
        _check(
            self.max_concurrent_documents >= 1,
            "inner.max_concurrent_documents",
            self.max_concurrent_documents,
            "must be >= 1",
        )


@dataclass
class GenerateConfig:
    """Root config of ``autodata-generate``.

    Attributes:
        method: ``agentic_self_instruct`` (the round loop) or ``cot_self_instruct`` (one
            chain-of-thought pass per document, no feedback; same evaluator and gate).
        harness: a harness name under ``harnesses/`` or a path to a harness directory.
        progress: show the live progress bar.
        logger: optional experiment tracking (``logger=wandb``; off by default).
    """

    method: str = "agentic_self_instruct"
    harness: str = "baseline"
    llm: LLMConfig = field(default_factory=LLMConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)
    progress: bool = True
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self) -> None:
        _check(self.method in METHODS, "method", self.method, f"use one of {METHODS}")


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (``generate_schema``)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="generate_schema", node=GenerateConfig)
