"""Autodata inner loop: Agentic Self-Instruct on one corpus with a frozen evaluator.

Packages, by trust zone (``ARCHITECTURE.md`` draws them):

- ``evaluator/`` FROZEN: quality check, solvers and judge (``roles``), answers (extraction and
  equivalence), rubric policy and scoring, the gate, the frozen prompts. Its files' hashes are
  part of every evaluation's identity (:func:`inner.evaluator.frozen_files`).
- ``sdk/``       all that the sandbox sees: the contract, the typed protocol, templates, the
  exception tree and the sandbox child. Harnesses import it as ``inner.contract``,
  ``inner.templates`` and ``inner.errors`` (the aliases beside this file).
- ``sandbox/``   parent side of the sandbox: bubblewrap, limits, cgroups, harness directories
  read as data (never following links).
- ``engine/``    the document session and round loop, the run, records, stats, documents,
  the harness loader and progress display.
- ``llm/``       the async OpenAI-compatible client, response cache, backends (local llama.cpp,
  vLLM, remote), model weights.
- ``config``     typed config dataclasses (the Hydra schema); ``cli`` is ``autodata-generate``;
  ``entrypoint`` turns errors and signals into exit codes; ``io`` holds atomic writes;
  ``paths`` and ``tracking`` are small helpers.

Dependency rule: nothing in ``inner`` imports ``meta``, ``train`` or ``analysis``
(``tests/test_layout.py``).
"""

__version__ = "0.1.0"
