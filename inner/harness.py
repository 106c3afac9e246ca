"""The harness contract and loader.

A harness is a directory with a ``harness.py`` (and usually ``prompts/*.md``). It owns the
challenger, the quality verifier and the main agent; it does not own the solvers, the judge
or the gate (those are the frozen evaluator). ``harness.py`` must define three coroutine
functions::

    async def propose(ctx: HarnessContext, feedback: str | None) -> Challenge | JSONResult[Challenge]
    async def verify(ctx: HarnessContext, challenge: Challenge) -> QVVerdict
    async def feedback(ctx: HarnessContext, history: list[RoundRecord]) -> str

``propose`` writes one challenge for ``ctx.doc`` (``feedback`` is ``None`` in round 1);
returning a :class:`~inner.llm.client.JSONResult` with ``value=None`` records an
INVALID_CHALLENGE round with the raw text kept. ``verify`` is the quality verifier.
``feedback`` turns the rounds so far into instructions for the next round. All LLM access goes
through ``ctx.llm`` (:class:`HarnessLLM`), which only allows the harness roles. An exception
raised by any of them becomes a HARNESS_ERROR round, never a crashed run.

The harness id is ``<dir name>@<12 hex of a sha256 over its files>``, recorded with every
example and trajectory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from pydantic import BaseModel

from inner.documents import Document
from inner.errors import HarnessError
from inner.llm.client import Completion, JSONResult, LLMClient, json_with_repair
from inner.paths import PROJECT_ROOT

T = TypeVar("T", bound=BaseModel)

CONTRACT = ("propose", "verify", "feedback")
HARNESS_ROLES = ("challenger", "quality_verifier", "main_agent")
HARNESSES_DIR = PROJECT_ROOT / "harnesses"


class HarnessLLM:
    """The LLM access a harness gets: only the challenger, quality-verifier and main-agent roles.

    Args:
        client: the shared client (cached, counted).
    """

    def __init__(self, client: LLMClient) -> None:
        self._client = client

    def _check(self, role: str) -> None:
        if role not in HARNESS_ROLES:
            raise HarnessError(f"a harness may only call roles {HARNESS_ROLES}, not {role!r}")

    async def complete(self, role: str, messages: list[dict[str, str]], *, sample_index: int = 0) -> str:
        """Text completion for a harness role."""
        return (await self.complete_raw(role, messages, sample_index=sample_index)).text

    async def complete_json(
        self, role: str, messages: list[dict[str, str]], model: type[T], *, sample_index: int = 0
    ) -> JSONResult[T]:
        """Structured completion for a harness role: schema-constrained where the endpoint
        supports it, one repair request on bad output, a typed failure with the raw text
        after that (:func:`inner.llm.client.json_with_repair`)."""

        async def send(convo: list[dict[str, str]], schema: dict[str, Any]) -> Completion:
            return await self.complete_raw(
                role, convo, sample_index=sample_index, json_schema=schema, schema_name=model.__name__
            )

        return await json_with_repair(send, messages, model)

    async def complete_raw(
        self,
        role: str,
        messages: list[dict[str, str]],
        *,
        sample_index: int = 0,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "output",
    ) -> Completion:
        """The full :class:`Completion` (text, finish reason, usage). The one method a
        subclass overrides to route calls elsewhere (the sandbox's proxy does)."""
        self._check(role)
        return await self._client.complete(
            role,
            messages,
            sample_index=sample_index,
            json_schema=json_schema,
            schema_name=schema_name,
        )

    def doc_chars(self, role: str) -> int:
        """The document budget (characters) of a harness role."""
        self._check(role)
        return self._client.cfg.role(role).doc_chars


@dataclass
class HarnessContext:
    """What a harness function sees.

    Attributes:
        doc: the source document.
        domain: the task's domain phrase, e.g. "computer-science research paper".
        round: 1-based round number.
        max_rounds: the round budget.
        llm: restricted LLM access.
    """

    doc: Document
    domain: str
    round: int
    max_rounds: int
    llm: HarnessLLM

    def document(self, role: str) -> str:
        """The document cut to ``role``'s budget (``llm.roles.<role>.doc_chars``)."""
        return self.doc.excerpt(self.llm.doc_chars(role))


def harness_id(path: Path) -> str:
    """``<dir name>@<12 hex>`` over every file's relative path and bytes (``__pycache__``,
    dot-files such as markers, and an export's ``MANIFEST.json`` excluded, so an exported
    harness keeps the content hash it had in the lineage)."""
    h = hashlib.sha256()
    files = (p for p in path.rglob("*") if p.is_file())
    for f in sorted(
        p
        for p in files
        if p.name != "MANIFEST.json"
        and not any(part == "__pycache__" or part.startswith(".") for part in p.relative_to(path).parts)
    ):
        h.update(str(f.relative_to(path)).encode())
        h.update(b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return f"{path.name}@{h.hexdigest()[:12]}"


def resolve_harness_dir(spec: str) -> Path:
    """A harness directory from a name under ``harnesses/`` or a path.

    Raises:
        HarnessError: neither exists, or the directory has no ``harness.py``.
    """
    candidates = [Path(spec).expanduser(), HARNESSES_DIR / spec]
    for c in candidates:
        if c.is_dir():
            if not (c / "harness.py").is_file():
                raise HarnessError(f"harness={spec!r}: {c} has no harness.py")
            return c.resolve()
    known = sorted(p.name for p in HARNESSES_DIR.iterdir() if p.is_dir()) if HARNESSES_DIR.is_dir() else []
    raise HarnessError(f"harness={spec!r} is neither a directory nor a harness under {HARNESSES_DIR} (known: {known})")


class Harness:
    """A loaded harness. Call its contract functions through this object."""

    def __init__(self, path: Path, module: ModuleType) -> None:
        self.path = path
        self.module = module
        self.harness_id = harness_id(path)

    async def propose(self, ctx: HarnessContext, feedback: str | None) -> Any:
        """The harness's ``propose`` (see the module docstring for the contract)."""
        return await self.module.propose(ctx, feedback)

    async def verify(self, ctx: HarnessContext, challenge: Any) -> Any:
        """The harness's quality verifier: a :class:`~inner.records.QVVerdict`."""
        return await self.module.verify(ctx, challenge)

    async def feedback(self, ctx: HarnessContext, history: list[Any]) -> str:
        """The harness's feedback for the next round, from ``history`` (earlier rounds)."""
        return await self.module.feedback(ctx, history)


def load_harness(spec: str) -> Harness:
    """Import ``<dir>/harness.py`` under a unique module name and check the contract.

    Args:
        spec: harness name (``baseline``) or directory path.

    Raises:
        HarnessError: missing directory, import failure (message carries the exception), or a
            contract function that is missing or not ``async def``.
    """
    path = resolve_harness_dir(spec)
    hid = harness_id(path)
    # the module is cached per (directory, content): a copy elsewhere runs its own files
    where = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    mod_name = f"autodata_harness_{where}_{hid.split('@')[1]}"
    if mod_name in sys.modules:
        return Harness(path, sys.modules[mod_name])
    file_spec = importlib.util.spec_from_file_location(mod_name, path / "harness.py")
    if file_spec is None or file_spec.loader is None:
        raise HarnessError(f"cannot import {path / 'harness.py'}")
    module = importlib.util.module_from_spec(file_spec)
    try:
        file_spec.loader.exec_module(module)
    except Exception as exc:
        raise HarnessError(f"{path / 'harness.py'} failed to import: {type(exc).__name__}: {exc}") from exc
    for name in CONTRACT:
        fn = getattr(module, name, None)
        if fn is None or not inspect.iscoroutinefunction(fn):
            raise HarnessError(f"{path / 'harness.py'} must define `async def {name}(...)` (the harness contract)")
    sys.modules[mod_name] = module
    return Harness(path, module)
