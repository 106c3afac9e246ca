"""The harness SDK: all that the sandbox sees of the project.

A private copy of this directory is mounted read-only in every sandbox
(:func:`inner.sandbox.process.sdk_dir`); harnesses import it under the names they have always
used, ``inner.contract``, ``inner.templates`` and ``inner.errors`` (the aliases in
:data:`HARNESS_MODULES`), so exported harnesses and existing lineages keep loading.

- ``contract``  the data types a harness exchanges with the parent (challenge, rubric, reports)
- ``protocol``  the typed messages of the sandbox protocol (one pydantic union per direction)
- ``templates`` prompt rendering
- ``errors``    the project's exception tree (harnesses catch ``BudgetExhausted``, ...)
- ``child``     the sandbox side: loads the harness and runs it against the parent
- ``forkserver`` the warm sandbox's server: imports the SDK once, forks each document into its
  own namespaces, limits and dropped capabilities, then runs ``child``
"""

from __future__ import annotations

from pathlib import Path

#: the SDK directory mounted in the sandbox
SDK_DIR = Path(__file__).resolve().parent

#: the harness-facing module names (``inner.<name>``) and the SDK module each one re-exports
HARNESS_MODULES = {"contract": "inner.sdk.contract", "templates": "inner.sdk.templates", "errors": "inner.sdk.errors"}
