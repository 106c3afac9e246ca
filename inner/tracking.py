"""Optional experiment tracking (Weights & Biases), off by default.

``logger=wandb`` logs the inner loop's progress (documents done, accepted, pass rate) and
final statistics, and the meta loop's per-iteration scores (candidate and parent validation
pass rate, best so far, admitted, tokens). The default W&B mode is ``offline``: runs are
written under ``<run_dir>/wandb/`` and need no network (``wandb sync`` uploads them later).
``wandb`` is imported only when enabled (``pip install wandb``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from inner.sdk.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class LoggerConfig:
    """Attributes:
    kind: ``none`` or ``wandb``.
    project / entity / tags: W&B run metadata.
    mode: ``offline`` (default, no network), ``online`` or ``disabled``.
    """

    kind: str = "none"
    project: str = "autodata"
    entity: str | None = None
    mode: str = "offline"
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in ("none", "wandb"):
            raise ConfigError(f"logger.kind={self.kind!r} is invalid: use 'none' or 'wandb'")
        if self.mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"logger.mode={self.mode!r} is invalid: use offline, online or disabled")


class Tracker(Protocol):
    """What a run logs to: per-step metrics (``step`` = documents done or iteration), a final
    summary (nested dicts are flattened to ``a/b`` keys), and ``finish`` once at the end."""

    def log(self, metrics: dict[str, Any], *, step: int | None = None) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def finish(self) -> None: ...


class NullTracker:
    """Tracks nothing (``logger=none``)."""

    def log(self, metrics: dict[str, Any], *, step: int | None = None) -> None:
        return None

    def summary(self, values: dict[str, Any]) -> None:
        return None

    def finish(self) -> None:
        return None


class WandbTracker:
    """A W&B run in ``<run_dir>/wandb``."""

    def __init__(self, cfg: LoggerConfig, *, run_dir: Path, config: dict[str, Any], job: str) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError("logger=wandb needs the wandb package: pip install wandb") from exc
        self._run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            mode=cfg.mode,
            dir=str(run_dir),
            config=config,
            name=f"{job}-{run_dir.name}",
            tags=list(cfg.tags),
            job_type=job,
            reinit="create_new",
        )

    def log(self, metrics: dict[str, Any], *, step: int | None = None) -> None:
        self._run.log(
            {k: v for k, v in metrics.items() if isinstance(v, int | float | bool) or v is None},
            step=step,
        )

    def summary(self, values: dict[str, Any]) -> None:
        for k, v in flatten(values).items():
            self._run.summary[k] = v

    def finish(self) -> None:
        self._run.finish()


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a/b": number}`` (numbers and booleans only)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, key + "/")
        elif isinstance(v, int | float | bool):
            out[key] = v
    return out


def build_tracker(cfg: LoggerConfig, *, run_dir: Path, config: dict[str, Any], job: str) -> Tracker:
    """A :class:`WandbTracker` for ``logger=wandb``, else a :class:`NullTracker`.

    Raises:
        ConfigError: ``wandb`` is requested but not installed.
    """
    if cfg.kind == "wandb":
        return WandbTracker(cfg, run_dir=run_dir, config=config, job=job)
    return NullTracker()
