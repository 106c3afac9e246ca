"""Harness-facing name of :mod:`inner.sdk.errors` (exported harnesses import ``inner.errors``).

Project code imports :mod:`inner.sdk.errors`; this alias exists for harnesses only.
"""

from inner.sdk.errors import *  # noqa: F401,F403
