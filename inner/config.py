"""Typed configuration: one dataclass per component, registered with Hydra's ConfigStore.

The YAML files under ``conf/`` hold the values; these dataclasses are the schema. The entry
point converts the composed config once with ``OmegaConf.to_object`` so code below it only
sees real dataclasses. Every ``__post_init__`` validates its values and raises
:class:`~inner.sdk.errors.ConfigError` naming the key, the bad value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from inner.evaluator.scoring import RubricPolicyConfig
from inner.sdk.errors import ConfigError
from inner.tracking import LoggerConfig

ROLES = ("challenger", "main_agent", "self_check", "quality_verifier", "weak_solver", "strong_solver", "judge")
#: the roles a harness may call (through the parent, within its budget); the rest are frozen
HARNESS_ROLES = ("challenger", "main_agent", "self_check")
META_ROLES = ("analyzer", "implementer", "taxonomist")
METHODS = ("agentic_self_instruct", "cot_self_instruct")
BACKENDS = ("local", "vllm", "openai")
#: the embedded (``llm=local``) server: upstream llama.cpp's, llama-cpp-python's, or the first if built
LOCAL_SERVERS = ("auto", "llama-server", "llama-cpp-python")
JSON_MODES = ("json_schema", "llama_cpp", "none")
VERIFIABLE_MODES = ("never", "auto", "always")
#: how a document's sandbox starts (``inner.sandbox_mode``): warm fork server, or a fresh bubblewrap sandbox
SANDBOX_MODES = ("fork", "fresh")
#: where documents run (``executor=``; :mod:`inner.engine.executor`)
EXECUTORS = ("local", "ray")


def _check(cond: bool, key: str, value: object, fix: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r} is invalid: {fix}")


def _fraction(key: str, value: float) -> None:
    _check(0.0 <= value <= 1.0, key, value, "must be a fraction in [0, 1]")


@dataclass
class EndpointConfig:
    """One OpenAI-compatible server.

    Attributes:
        base_url: e.g. ``http://127.0.0.1:8000/v1``. ``None`` (and no ``base_urls``) means
            "the server the backend starts" (``llm=local`` or ``llm=vllm``).
        base_urls: several replicas of one server (same model, same API key), instead of
            ``base_url``: each request goes to the replica with the fewest requests in flight,
            and a failing replica is taken out for a cool-down while the request is re-sent to
            another (:mod:`inner.llm.replicas`). Set ``base_url`` or ``base_urls``, not both.
        model: model name sent in each request.
        api_key_env: name of the environment variable that holds the key; ``None`` sends a
            placeholder key (local servers ignore it). Keys never live in config files.
        max_in_flight: concurrent requests allowed to each replica of this endpoint (one
            replica with ``base_url``; the endpoint takes ``max_in_flight x replicas``).
        timeout_s: per-request timeout in seconds.
        max_retries: retries on 429, 5xx, timeouts and dropped connections (exponential
            backoff, done by the ``openai`` client).
        json_mode: how to ask for schema-constrained JSON: ``json_schema`` (OpenAI, vLLM),
            ``llama_cpp`` (llama-cpp-python's ``{"type": "json_object", "schema": ...}``,
            grammar-constrained) or ``none`` (parse the text, repair once).
        replica_cooldown_s: seconds a failing replica stays out (a connection error, a
            timeout, or HTTP 408/409/429/5xx after ``max_retries``) before it gets one probe
            request; the cool-down doubles with each consecutive take-out, up to
            ``replica_cooldown_max_s``. Unused with a single replica.
        replica_cooldown_max_s: the longest cool-down, seconds.
    """

    base_url: str | None = None
    base_urls: list[str] = field(default_factory=list)
    model: str = "qwen2.5-coder-0.5b-instruct"
    api_key_env: str | None = None
    max_in_flight: int = 8
    timeout_s: float = 600.0
    max_retries: int = 4
    json_mode: str = "json_schema"
    replica_cooldown_s: float = 5.0
    replica_cooldown_max_s: float = 120.0

    @property
    def urls(self) -> list[str]:
        """The configured replica URLs: ``base_urls``, or ``[base_url]``, or ``[]`` (the
        backend starts the server)."""
        return list(self.base_urls) if self.base_urls else [self.base_url] if self.base_url else []

    def validate(self, prefix: str) -> None:
        """Raise ConfigError for a bad value; ``prefix`` is e.g. ``llm.endpoints.default``
        (called by :class:`LLMConfig`, so messages name the full key)."""
        if self.base_url and self.base_urls:
            raise ConfigError(
                f"{prefix}.base_url={self.base_url!r} and {prefix}.base_urls={self.base_urls!r} are both set: "
                f"use base_url for one server or base_urls for its replicas (set {prefix}.base_url=null)"
            )
        for i, url in enumerate(self.base_urls):
            _check(isinstance(url, str) and url.strip() != "", f"{prefix}.base_urls[{i}]", url, "must be a URL")
            _check(
                url not in self.base_urls[:i],
                f"{prefix}.base_urls[{i}]",
                url,
                f"is listed twice (also at index {self.base_urls.index(url)}); list each replica once",
            )
        _check(self.max_in_flight >= 1, f"{prefix}.max_in_flight", self.max_in_flight, "must be >= 1")
        _check(self.timeout_s > 0, f"{prefix}.timeout_s", self.timeout_s, "must be > 0 seconds")
        _check(self.max_retries >= 0, f"{prefix}.max_retries", self.max_retries, "must be >= 0")
        _check(self.json_mode in JSON_MODES, f"{prefix}.json_mode", self.json_mode, f"use one of {JSON_MODES}")
        _check(self.replica_cooldown_s > 0, f"{prefix}.replica_cooldown_s", self.replica_cooldown_s, "must be > 0 s")
        _check(
            self.replica_cooldown_max_s >= self.replica_cooldown_s,
            f"{prefix}.replica_cooldown_max_s",
            self.replica_cooldown_max_s,
            f"must be >= {prefix}.replica_cooldown_s={self.replica_cooldown_s}",
        )


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
    """The roles of the inner loop (arXiv 2606.25996; ARCHITECTURE.md, "The frozen evaluator")
    and of the meta loop.

    Harness roles (called by harness code, through the parent, within its budget):
    ``challenger``, ``main_agent``, ``self_check``. Frozen evaluator roles: ``quality_verifier``,
    ``weak_solver``, ``strong_solver``, ``judge``. Solvers sample at temperature 1.0 by default
    (arXiv 2606.25996), each attempt with its own seed.
    """

    # The defaults are the default backend's (conf/llm/local.yaml, the source of backend-specific
    # values; every conf/llm/*.yaml sets all of them): equal numbers, checked by tests/test_defaults.py.
    challenger: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=0.8, max_tokens=600, doc_chars=5000))
    main_agent: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=0.3, max_tokens=160, doc_chars=0))
    #: a harness's own checks; ``None`` = the challenger's endpoint and sampling
    self_check: RoleConfig | None = None
    quality_verifier: RoleConfig = field(
        default_factory=lambda: RoleConfig(temperature=0.0, max_tokens=160, doc_chars=5000)
    )
    weak_solver: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=1.0, max_tokens=300, doc_chars=0))
    strong_solver: RoleConfig = field(
        default_factory=lambda: RoleConfig(temperature=1.0, max_tokens=300, doc_chars=5000)
    )
    judge: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=0.0, max_tokens=200, doc_chars=0))
    #: meta-optimization roles; ``None`` = use the challenger's endpoint and sampling
    analyzer: RoleConfig | None = None
    implementer: RoleConfig | None = None
    #: the report's question-type taxonomy classifier; ``None`` = the challenger's
    taxonomist: RoleConfig | None = None


@dataclass
class LocalModelConfig:
    """One model of the local backend (``llm.backend.models.<key>``, the key a short name
    without dots such as ``small``): one llama-server of its own, serving the endpoints whose
    ``model`` is its weights' served name (e.g. ``qwen2.5-coder-1.5b-instruct``). Every setting
    left ``None`` is the backend's (``llm.backend.<same key>``), so the backend's values are the
    one source of the defaults.

    Attributes:
        weights: which GGUF (an id of :data:`inner.llm.weights.WEIGHTS`; its ``model`` is the
            served name).
        slots: requests decoded at once (``--parallel``).
        n_ctx: context window of each request, tokens.
        n_threads: generation threads (``--threads``).
        n_threads_batch: prompt-processing threads (``--threads-batch``).
        poll: llama.cpp's busy-wait level of its worker threads, 0-100 (``--poll``).
    """

    weights: str | None = None
    slots: int | None = None
    n_ctx: int | None = None
    n_threads: int | None = None
    n_threads_batch: int | None = None
    poll: int | None = None

    def validate(self, prefix: str) -> None:
        """Raise ConfigError for a bad value; ``prefix`` is e.g. ``llm.backend.models.small``."""
        from inner.llm.weights import WEIGHTS

        if self.weights is not None:
            _check(self.weights in WEIGHTS, f"{prefix}.weights", self.weights, f"use one of {sorted(WEIGHTS)}")
        for key in ("slots", "n_threads", "n_threads_batch"):
            value = getattr(self, key)
            _check(value is None or value >= 1, f"{prefix}.{key}", value, "must be >= 1 (or null)")
        _check(self.n_ctx is None or self.n_ctx >= 512, f"{prefix}.n_ctx", self.n_ctx, "must be >= 512 tokens")
        _check(self.poll is None or 0 <= self.poll <= 100, f"{prefix}.poll", self.poll, "must be in [0, 100]")


@dataclass
class BackendConfig:
    """The server the project starts (or not) before the run.

    Attributes:
        kind: ``local`` (embedded llama.cpp + Qwen2.5-Coder-0.5B GGUF from PyPI packages),
            ``vllm`` (``vllm serve MODEL``) or ``openai`` (nothing to start).
        model_cache_dir: where the assembled GGUF is kept; ``None`` = ``~/.cache/autodata``.
        n_ctx: context window of each request to the local server, tokens (llama-server gets
            ``n_ctx * slots`` in all, split evenly across its slots).
        weights: the GGUF of the local server when ``models`` is empty (an id of
            :data:`inner.llm.weights.WEIGHTS`; default the embedded Qwen2.5-Coder-0.5B).
        n_threads: CPU threads of each local server (``--threads``); ``None`` = the cores
            divided evenly among the servers (all cores for one server).
        n_threads_batch: prompt-processing threads (``--threads-batch``); ``None`` = ``n_threads``.
        poll: busy-wait level of llama-server's worker threads, 0-100 (``--poll``); ``None`` =
            llama.cpp's default (50) for one server, 0 when several share the cores
            (experiments/bench/README.md, "Two servers on 2 cores").
        models: several local models, one llama-server each, by a short key (``small``,
            ``large``); an endpoint without ``base_url`` goes to the model whose weights' served
            name is its ``model``. Empty = one server for the endpoints' one model with the
            settings above. Each :class:`LocalModelConfig` falls back to the settings above.
        server: the local server: ``llama-server`` (upstream llama.cpp, continuous batching over
            ``slots``; built by ``make install``), ``llama-cpp-python`` (answers one request at
            a time) or ``auto`` (llama-server if built, else llama-cpp-python with a warning).
        slots: requests llama-server decodes at once (``--parallel``); the local endpoint's
            ``max_in_flight`` follows it (``conf/llm/local.yaml``).
        vllm_model: model to serve with ``llm=vllm`` (defaults to the endpoint's model).
        replicas: ``llm=vllm`` only: how many ``vllm serve`` processes to start, each on its
            own port and its own GPUs; the served endpoints balance over them (their
            ``base_urls``).
        gpus_per_replica: ``llm=vllm`` only: GPUs per replica (``CUDA_VISIBLE_DEVICES``;
            ``--tensor-parallel-size`` when above 1). Replica ``i`` gets devices
            ``i * gpus_per_replica`` to ``(i + 1) * gpus_per_replica - 1``, counted within the
            parent's ``CUDA_VISIBLE_DEVICES`` when that is set (a single replica sees the
            parent's devices unchanged).
        extra_args: extra command-line arguments for the server.
        port: fixed port (replica ``i`` of ``llm=vllm`` gets ``port + i``); ``None`` picks
            free loopback ports.
        startup_timeout_s: how long to wait for the server to answer, seconds.
    """

    kind: str = "local"
    model_cache_dir: str | None = None
    n_ctx: int = 8192
    weights: str = "qwen2.5-coder-0.5b-instruct-q4_k_m"
    n_threads: int | None = None
    n_threads_batch: int | None = None
    poll: int | None = None
    models: dict[str, LocalModelConfig] = field(default_factory=dict)
    server: str = "auto"
    slots: int = 4
    vllm_model: str | None = None
    replicas: int = 1
    gpus_per_replica: int = 1
    extra_args: list[str] = field(default_factory=list)
    port: int | None = None
    startup_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        _check(self.kind in BACKENDS, "llm.backend.kind", self.kind, f"use one of {BACKENDS}")
        _check(self.n_ctx >= 512, "llm.backend.n_ctx", self.n_ctx, "must be >= 512 tokens")
        _check(self.server in LOCAL_SERVERS, "llm.backend.server", self.server, f"use one of {LOCAL_SERVERS}")
        _check(self.slots >= 1, "llm.backend.slots", self.slots, "must be >= 1")
        _check(self.replicas >= 1, "llm.backend.replicas", self.replicas, "must be >= 1")
        _check(self.gpus_per_replica >= 1, "llm.backend.gpus_per_replica", self.gpus_per_replica, "must be >= 1")
        _check(
            self.replicas == 1 or self.kind == "vllm",
            "llm.backend.replicas",
            self.replicas,
            f"only llm=vllm starts replicas (llm.backend.kind={self.kind!r}); "
            "list running servers in llm.endpoints.<name>.base_urls instead",
        )
        LocalModelConfig(
            weights=self.weights, n_threads=self.n_threads, n_threads_batch=self.n_threads_batch, poll=self.poll
        ).validate("llm.backend")
        served: dict[str, str] = {}
        for key, model in self.models.items():
            model.validate(f"llm.backend.models.{key}")
            name = self.served_name(model)
            _check(
                name not in served,
                f"llm.backend.models.{key}.weights",
                model.weights or self.weights,
                f"llm.backend.models.{served.get(name)} serves {name!r} already (one server per model)",
            )
            served[name] = key
        _check(
            self.startup_timeout_s > 0,
            "llm.backend.startup_timeout_s",
            self.startup_timeout_s,
            "must be > 0",
        )

    def served_name(self, model: LocalModelConfig) -> str:
        """The served name (``--alias``) of a model of ``models``: its weights' model name."""
        from inner.llm.weights import WEIGHTS

        return WEIGHTS[model.weights or self.weights].model


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
            if self.backend.kind == "local" and self.backend.models and not ep.base_url:
                served = sorted(self.backend.served_name(m) for m in self.backend.models.values())
                _check(
                    ep.model in served,
                    f"llm.endpoints.{name}.model",
                    ep.model,
                    f"the local backend serves {served} (llm.backend.models): name one of them, or give "
                    "the endpoint a base_url",
                )
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

    def max_connections(self) -> int:
        """Requests in flight at once over all endpoints, at most: each endpoint's
        ``max_in_flight`` times its replicas (its ``base_urls``, or the ``llm=vllm`` backend's
        ``replicas`` for an endpoint the backend serves)."""
        started = self.backend.replicas if self.backend.kind == "vllm" else 1
        return sum(ep.max_in_flight * (len(ep.urls) or started) for ep in self.endpoints.values())

    def role(self, name: str) -> RoleConfig:
        """The :class:`RoleConfig` of ``name``; raises ConfigError for an unknown role."""
        if not hasattr(self.roles, name):
            raise ConfigError(f"role={name!r} is unknown: use one of {ROLES + META_ROLES}")
        return getattr(self.roles, name) or self.roles.challenger


@dataclass
class GateConfig:
    """The acceptance gate. Rubric defaults are the deployed Autodata thresholds (ARCHITECTURE.md,
    "The frozen evaluator"; arXiv 2606.25996): weak_avg <= 0.65, max weak <= 0.75, no weak 0,
    0.60 <= strong_avg < 0.95, no strong 0, strong_avg - weak_avg >= 0.20.

    Verifiable tasks follow the paper's scientific-reasoning setting (arXiv 2606.25996):
    ``inner.n_verifiable`` attempts per solver (default 4); accept iff at most
    ``verifiable_weak_max_correct`` (1) weak answers and at least
    ``verifiable_strong_min_correct`` (3) strong answers are equivalent to the reference.
    """

    weak_avg_max: float = 0.65
    weak_max: float = 0.75
    reject_weak_zero: bool = True
    strong_avg_min: float = 0.60
    strong_avg_max: float = 0.95
    reject_strong_zero: bool = True
    min_gap: float = 0.20
    verifiable_weak_max_correct: int = 1
    verifiable_strong_min_correct: int = 3

    def __post_init__(self) -> None:
        for name in ("weak_avg_max", "weak_max", "strong_avg_min", "strong_avg_max", "min_gap"):
            _fraction(f"gate.{name}", getattr(self, name))
        _check(
            self.strong_avg_min < self.strong_avg_max,
            "gate.strong_avg_min",
            self.strong_avg_min,
            f"must be below gate.strong_avg_max={self.strong_avg_max}",
        )
        _check(
            self.verifiable_weak_max_correct >= 0,
            "gate.verifiable_weak_max_correct",
            self.verifiable_weak_max_correct,
            "must be >= 0",
        )
        _check(
            self.verifiable_strong_min_correct > self.verifiable_weak_max_correct,
            "gate.verifiable_strong_min_correct",
            self.verifiable_strong_min_correct,
            f"must exceed gate.verifiable_weak_max_correct={self.verifiable_weak_max_correct}",
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
        verifiable: ``never`` (rubric + judge), ``always`` (answers checked for equivalence
            with the reference), or ``auto`` (equivalence when the frozen rule
            :func:`inner.evaluator.answers.is_exact_reference` finds the reference answer exact;
            never a flag the challenger sets).
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
    """The document loop, the frozen evaluator's attempts, and the harness's budgets.

    Attributes:
        max_rounds: distinct challenges evaluated per document (default 5).
        n_weak / n_strong: solver attempts per rubric round, run in parallel (default 3 each).
        n_verifiable: solver attempts per side in verifiable rounds (the paper's k = 4).
        weak_open_book / strong_open_book: whether the solver sees the source document
            (default: weak closed-book, strong open-book).
        max_concurrent_documents: documents in flight at once; the endpoints' ``max_in_flight``
            bounds the requests. Each holds about 8 open files in the parent (its sandbox's
            pipes): a value the open-file limit cannot hold, once the soft limit is raised to
            the hard one, is refused before any document (``inner.entrypoint.check_open_files``).
        skip_solvers_on_qv_fail: a challenge the frozen quality check rejects is not sent to
            the solvers (it cannot pass the gate anyway; saves 2 x (n + n) calls).
        harness_max_calls: LLM calls a harness may make per document (its own roles).
        harness_max_tokens: prompt + completion tokens of those calls per document.
        harness_wall_s: wall-clock seconds a harness may run per document, time the parent
            works for it excluded: inside ``agent.evaluate`` (the evaluator's work) and while
            any of its own LLM calls is in flight (queued in or decoded by the server).
        harness_cpu_s: CPU seconds of the harness process (RLIMIT_CPU).
        harness_memory_mb: address-space limit of each harness process, MiB (RLIMIT_AS).
        harness_max_files: most files (and links) a harness directory may hold; checked before
            any is read (:mod:`inner.sandbox.files`).
        harness_max_mb: most MiB its files may hold in total; checked the same way.
        harness_max_procs: processes and threads the harness may run at once (pids cgroup
            where available).
        harness_doc_chars: characters of the document the sandbox receives (the largest
            excerpt any harness role gets); the rest never leaves the parent.
        sandbox_mode: how each document's sandbox starts (:data:`SANDBOX_MODES`): ``fork``
            (default) from the run's warm fork server (:mod:`inner.sandbox.forkserver`: a few ms
            of CPU), ``fresh`` as a new bubblewrap sandbox and Python interpreter
            (:class:`inner.sandbox.process.SandboxProcess`: 0.2-0.4 s of CPU). Both seal the
            harness the same way (README, "Evaluator integrity").
    """

    max_rounds: int = 5
    n_weak: int = 3
    n_strong: int = 3
    n_verifiable: int = 4
    weak_open_book: bool = False
    strong_open_book: bool = True
    max_concurrent_documents: int = 16
    skip_solvers_on_qv_fail: bool = True
    harness_max_calls: int = 60
    harness_max_tokens: int = 200_000
    harness_wall_s: float = 900.0
    harness_cpu_s: int = 120
    harness_memory_mb: int = 2048
    harness_max_files: int = 2000
    harness_max_mb: int = 64
    harness_max_procs: int = 32
    harness_doc_chars: int = 20_000
    sandbox_mode: str = "fork"

    def __post_init__(self) -> None:
        for key in (
            "max_rounds",
            "n_weak",
            "n_strong",
            "n_verifiable",
            "max_concurrent_documents",
            "harness_max_calls",
            "harness_max_tokens",
            "harness_cpu_s",
            "harness_max_procs",
        ):
            _check(getattr(self, key) >= 1, f"inner.{key}", getattr(self, key), "must be >= 1")
        _check(self.harness_wall_s > 0, "inner.harness_wall_s", self.harness_wall_s, "must be > 0 seconds")
        _check(self.harness_memory_mb >= 256, "inner.harness_memory_mb", self.harness_memory_mb, "must be >= 256")
        _check(self.harness_max_files >= 1, "inner.harness_max_files", self.harness_max_files, "must be >= 1")
        _check(self.harness_max_mb >= 1, "inner.harness_max_mb", self.harness_max_mb, "must be >= 1 MiB")
        _check(self.harness_doc_chars >= 0, "inner.harness_doc_chars", self.harness_doc_chars, "must be >= 0")
        _check(
            self.sandbox_mode in SANDBOX_MODES, "inner.sandbox_mode", self.sandbox_mode, f"use one of {SANDBOX_MODES}"
        )


@dataclass
class ExecutorConfig:
    """Where the documents of a run (and of the meta loop's evaluations) run: ``executor=local``
    (the default: this process, asyncio; Ray is never imported) or ``executor=ray`` (Ray Core
    actors, :mod:`inner.engine.ray_executor`). Neither changes what is generated: the inner loop,
    the evaluator and the records are the same.

    Attributes:
        kind: ``local`` or ``ray``.
        address: the Ray cluster to join (``ray://host:10001`` or ``host:6379``); ``None`` =
            the ``RAY_ADDRESS`` environment variable if set, else a Ray instance started by
            this process on this machine (stopped when the run ends).
        num_cpus: CPUs of a Ray instance this process starts; ``None`` = every core. Ignored
            when joining a cluster.
        workers: Ray actors, each with its own LLM client, response-cache segment and
            sandboxes.
        cpus_per_worker: CPUs Ray reserves per actor (placement only; the sandboxes are not
            Ray tasks).
        documents_per_worker: documents in flight per actor; ``None`` =
            ``ceil(inner.max_concurrent_documents / workers)``. Each endpoint's
            ``max_in_flight`` is split the same way (``ceil(max_in_flight / workers)`` per
            actor), so the endpoint's ceiling holds across the cluster.
        max_retries: how often a document is redone after its actor died (the actor is
            restarted as often); a typed failure (a config, harness or sandbox error) is never
            retried. Beyond it the run stops with :class:`~inner.engine.executor.ExecutorError`.
    """

    kind: str = "local"
    address: str | None = None
    num_cpus: int | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    documents_per_worker: int | None = None
    max_retries: int = 2

    def __post_init__(self) -> None:
        _check(self.kind in EXECUTORS, "executor.kind", self.kind, f"use one of {EXECUTORS}")
        _check(self.workers >= 1, "executor.workers", self.workers, "must be >= 1")
        _check(self.num_cpus is None or self.num_cpus >= 1, "executor.num_cpus", self.num_cpus, "must be >= 1 or null")
        _check(self.cpus_per_worker >= 0, "executor.cpus_per_worker", self.cpus_per_worker, "must be >= 0")
        _check(
            self.documents_per_worker is None or self.documents_per_worker >= 1,
            "executor.documents_per_worker",
            self.documents_per_worker,
            "must be >= 1 or null",
        )
        _check(self.max_retries >= 0, "executor.max_retries", self.max_retries, "must be >= 0")


@dataclass
class GenerateConfig:
    """Root config of ``autodata-generate``.

    Attributes:
        method: ``agentic_self_instruct`` (the harness drives the rounds) or
            ``cot_self_instruct`` (the one-shot harness ``harnesses/cot_self_instruct``; same
            evaluator and gate).
        harness: a harness name under ``harnesses/`` or a path to a harness directory.
        rubric: the rubric policy the evaluator enforces (``conf/rubric/``).
        progress: show the live progress bar.
        logger: optional experiment tracking (``logger=wandb``; off by default).
        executor: where the documents run (``executor=local|ray``).
    """

    method: str = "agentic_self_instruct"
    harness: str = "baseline"
    llm: LLMConfig = field(default_factory=LLMConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    rubric: RubricPolicyConfig = field(default_factory=RubricPolicyConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)
    progress: bool = True
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def __post_init__(self) -> None:
        _check(self.method in METHODS, "method", self.method, f"use one of {METHODS}")


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (``generate_schema``)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="generate_schema", node=GenerateConfig)
