"""The harness contract: a harness is the main agent, and the frozen evaluator is its tool.

A harness is a directory with ``harness.py`` (and usually ``prompts/*.md``) that defines one
coroutine::

    async def run(agent: Agent) -> None

It works on one document, inside the sealed sandbox (:mod:`inner.sandbox.process`; by default
forked from the run's warm fork server, :mod:`inner.sandbox.forkserver`), and may import
only the standard library, the installed third-party packages and the harness SDK
(:mod:`inner.sdk.contract`: ``Challenge``, ``RubricItem``, ``QVVerdict``, ``RoundRecord``,
``FailureMode``, ``JSONResult``, ``render``...). The ``agent`` (:class:`Agent`) offers:

- ``agent.doc``: the document: ``title``, ``text`` (cut to ``inner.harness_doc_chars``),
  ``excerpt(n)``, ``sections()``, ``search(phrase)``; ``agent.document("challenger")``: the
  text cut to a role's ``llm.roles.<role>.doc_chars``; ``agent.domain``: e.g. "research paper";
- ``await agent.llm(role, messages, json_schema=None, tools=None, sample=None)`` ->
  :class:`~inner.sdk.contract.Completion` for the harness roles ``challenger``, ``main_agent`` and
  ``self_check`` (each call a fresh sample unless ``sample`` pins it; OpenAI-style ``tools``
  where the endpoint supports them); ``await agent.llm_json(role, messages, Model)`` ->
  :class:`~inner.sdk.contract.JSONResult` (schema-constrained, one repair);
- ``await agent.evaluate(challenge, side="weak" | "both", self_check=None)`` ->
  :class:`~inner.sdk.contract.RoundRecord`: the frozen evaluator as a tool (frozen quality verdict,
  solver answers, per-criterion grades, scores, the gate's verdict and reasons). Each
  distinct challenge is one round of ``inner.max_rounds``; the same challenge again returns the
  recorded report (``side="both"`` after a passing ``side="weak"`` runs the strong side on the
  same round); the first ACCEPTED report is the document's example and ends the document;
- memory: ``agent.rounds`` (the reports so far) and ``await agent.note(text)``;
- budgets, enforced by the parent: ``inner.max_rounds``, ``inner.harness_max_calls``,
  ``inner.harness_max_tokens`` per document, ``inner.harness_wall_s`` (time inside
  ``evaluate`` and time its LLM calls are in flight excluded), CPU and memory limits;
  ``await agent.budget()`` says what is left.
  An exhausted budget raises :class:`~inner.sdk.errors.BudgetExhausted` in the harness and ends the
  document with the reason.

Errors: an LLM request that fails after retries raises :class:`~inner.sdk.errors.LLMCallError` in
the harness and the document is marked ``error`` (infrastructure: redone on the next run, never
counted against the harness). Anything else the harness does wrong (raises, exits, hangs,
exceeds a limit) ends the document as ``crashed`` with the reason; the run goes on.

``harness.py`` is imported afresh in each document's own process (never in the fork server,
never shared by two documents): module-level state lives for one document.

Every call the harness makes appears, in order, in ``trajectories/<doc>.json`` (``events``).
The harness id is ``<dir name>@<12 hex of a sha256 over its files>``; the content hash alone
identifies an evaluation (:func:`harness_content_hash`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from inner.paths import PROJECT_ROOT
from inner.sandbox.files import harness_content_hash
from inner.sdk.contract import Challenge, Completion, JSONResult, QVVerdict, RoundRecord
from inner.sdk.errors import HarnessError

HARNESSES_DIR = PROJECT_ROOT / "harnesses"


class Document(Protocol):
    """``agent.doc`` (:class:`inner.sdk.child.DocumentView`)."""

    doc_id: str
    title: str
    text: str

    def excerpt(self, max_chars: int) -> str:
        """The first ``max_chars`` characters, cut at a paragraph or sentence boundary."""
        ...

    def sections(self) -> list[tuple[str, str]]:
        """``(heading, body)`` pairs of the text the sandbox received."""
        ...

    def search(self, phrase: str, *, window: int = 300, limit: int = 5) -> list[str]:
        """Up to ``limit`` passages, ``window`` characters either side of each match of ``phrase``."""
        ...


class Agent(Protocol):
    """What a harness's ``run`` receives (implemented by :class:`inner.sdk.child.Agent`)."""

    doc: Document
    domain: str
    max_rounds: int
    rounds: list[RoundRecord]

    async def llm(
        self,
        role: str,
        messages: list[dict[str, Any]],
        *,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "output",
        tools: list[dict[str, Any]] | None = None,
        sample: int | None = None,
    ) -> Completion:
        """One completion of a harness role (fresh sample unless ``sample`` pins it).

        Raises:
            HarnessError: not a harness role, or the endpoint rejected the request (4xx).
            BudgetExhausted: the call or token budget is spent; the document ends.
            LLMCallError: the request failed after retries; the document is redone later.
        """
        ...

    async def llm_json(
        self, role: str, messages: list[dict[str, Any]], model: type[Any], *, sample: int | None = None
    ) -> JSONResult[Any]:
        """A reply parsed into ``model`` (schema-constrained, one repair), or a typed failure
        with the raw text; raises like :meth:`llm`. A failure is counted by the parent as an
        ``LLMSchemaError`` and its replies are not cached (a rerun asks again)."""
        ...

    async def evaluate(
        self, challenge: Challenge, *, side: str = "both", self_check: QVVerdict | None = None
    ) -> RoundRecord:
        """The frozen evaluator's report on ``challenge`` (one round per distinct challenge).

        Raises:
            BudgetExhausted: no round is left; the document ends.
        """
        ...

    async def note(self, text: str) -> None:
        """Keep ``text`` (cut to 4,000 characters) in the trajectory's events."""
        ...

    async def budget(self) -> dict[str, float]:
        """What is left: ``rounds``, ``calls``, ``tokens``, ``seconds``."""
        ...

    def document(self, budget: str | int | None = None) -> str:
        """The document, cut to a harness role's ``doc_chars`` or to a number of characters."""
        ...


class Harness(Protocol):
    """A harness module: one coroutine ``run(agent)``."""

    async def run(self, agent: Agent) -> None:
        """Work on ``agent.doc`` until accepted, out of rounds or budget (see the module docstring)."""
        ...


def harness_id(path: Path) -> str:
    """``<dir name>@<content hash>`` (:func:`harness_content_hash`)."""
    return f"{path.name}@{harness_content_hash(path)}"


def resolve_harness_dir(spec: str) -> Path:
    """A harness directory from a name under ``harnesses/`` or a path.

    Raises:
        HarnessError: neither exists, or the directory has no ``harness.py``.
    """
    for c in (Path(spec).expanduser(), HARNESSES_DIR / spec):
        if c.is_dir():
            if not (c / "harness.py").is_file():
                raise HarnessError(f"harness={spec!r}: {c} has no harness.py")
            return c.resolve()
    known = sorted(p.name for p in HARNESSES_DIR.iterdir() if p.is_dir()) if HARNESSES_DIR.is_dir() else []
    raise HarnessError(f"harness={spec!r} is neither a directory nor a harness under {HARNESSES_DIR} (known: {known})")
