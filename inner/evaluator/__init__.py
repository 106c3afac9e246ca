"""The frozen evaluator: everything that decides whether an example is accepted.

This directory is *the* definition of "frozen" (:data:`FROZEN_DIR`): the evaluation identity
hashes every file under it (:func:`frozen_files`), the hostile tests check that no harness can
reach it, and ``ARCHITECTURE.md`` draws it. Nothing here runs harness code.

- ``roles``    the quality check, the weak and strong solvers and the judge (LLM roles)
- ``answers``  final-answer extraction, normalization and equivalence (math-verify)
- ``scoring``  rubric policy and the rubric score
- ``gate``     the acceptance gate (rubric and verifiable)
- ``rounds``   the round rules: what a request to evaluate a challenge costs and runs
- ``prompts/`` the frozen prompts of the evaluator roles
"""

from __future__ import annotations

from pathlib import Path

#: the frozen directory: its files' bytes are part of every evaluation's identity
FROZEN_DIR = Path(__file__).resolve().parent

#: the frozen prompts of the evaluator roles (quality check, solver, judge)
INNER_PROMPTS = FROZEN_DIR / "prompts"


def frozen_files() -> list[Path]:
    """Every file under :data:`FROZEN_DIR` that defines behaviour (sources and prompts), sorted,
    caches (``__pycache__``) excluded."""
    return sorted(
        p for p in FROZEN_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix in {".py", ".md"}
    )
