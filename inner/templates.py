"""Harness-facing name of :mod:`inner.sdk.templates` (exported harnesses import ``inner.templates``).

Project code imports :mod:`inner.sdk.templates`; this alias exists for harnesses only.
"""

from inner.sdk.templates import *  # noqa: F401,F403
