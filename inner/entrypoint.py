"""What every console script shares: quiet library loggers, typed config conversion, and one
place that turns an :class:`~inner.errors.AutodataError` or Ctrl-C into a clean exit."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

from inner.errors import AutodataError

log = logging.getLogger("autodata")
T = TypeVar("T")

#: Libraries that log one INFO line per HTTP request or per plot call.
NOISY_LOGGERS = ("httpx", "httpx2", "matplotlib")


def to_config(dcfg: DictConfig, cls: type[T]) -> T:
    """Convert the composed Hydra config to the dataclass ``cls`` once, at the entry point.

    Raises:
        ConfigError: a value fails validation (the message names the key).
    """
    obj = OmegaConf.to_object(dcfg)
    assert isinstance(obj, cls), type(obj)
    return obj


@contextlib.contextmanager
def cli_guard(on_interrupt: str = "") -> Iterator[None]:
    """Quiet noisy loggers; exit 1 with the message (no traceback) on an AutodataError, and
    130 on Ctrl-C with ``on_interrupt`` (e.g. where the finished work is) in the warning."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    except AutodataError as exc:
        log.error("%s", exc)
        sys.exit(1)
    except KeyboardInterrupt:
        log.warning("interrupted%s", f": {on_interrupt}" if on_interrupt else "")
        sys.exit(130)
