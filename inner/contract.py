"""Harness-facing name of :mod:`inner.sdk.contract` (exported harnesses import ``inner.contract``).

Project code imports :mod:`inner.sdk.contract`; this alias exists for harnesses only.
"""

from inner.sdk.contract import *  # noqa: F401,F403
from inner.sdk.contract import __all__  # noqa: F401
