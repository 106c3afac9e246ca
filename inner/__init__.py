"""Autodata inner loop: Agentic Self-Instruct on one corpus with a frozen evaluator.

Modules, by role:

- ``config``     typed config dataclasses (the Hydra schema)
- ``errors``     the exception tree
- ``llm``        the async OpenAI-compatible client, cache, backends (local llama.cpp, vLLM, remote)
- ``documents``  loading a corpus into :class:`~inner.documents.Document` objects
- ``records``    pydantic records written to the run directory
- ``harness``    the harness contract and loader
- ``evaluator``  weak/strong solvers and the judge (frozen: no harness can change them)
- ``gate``       the acceptance gate
- ``loop``       the round loop over documents; ``baselines`` holds CoT Self-Instruct
- ``cli``        ``autodata-generate``
"""

__version__ = "0.1.0"
