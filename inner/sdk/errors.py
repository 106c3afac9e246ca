"""The exception tree of Autodata.

::

    AutodataError                 base of every error this project raises on purpose
    ├── ConfigError               a bad config value or an unknown key; the message names the key and the fix
    ├── DocumentError             a missing path, or a corpus with no readable document
    ├── BackendError              an LLM server could not be started or reached
    │   └── ModelWeightsError     the embedded GGUF is missing or has the wrong sha256
    ├── LLMCallError              one LLM call failed after all retries (role, endpoint, kind, status, cause)
    │   ├── LLMStatusError        an HTTP error status (429, 5xx, 4xx) after the retries
    │   ├── LLMTimeoutError       no reply within the endpoint's timeout_s, every attempt
    │   ├── LLMConnectionError    connection refused or dropped before a reply
    │   ├── LLMBadResponseError   a 200 whose body is not JSON, or has no choices
    │   ├── LLMEmptyError         a 200 whose message content is empty
    │   └── LLMSchemaError        structured output still invalid after one repair
    ├── HarnessError              a harness directory does not honour the contract
    │   └── BudgetExhausted       (in the sandbox) a per-document budget of the harness ran out
    └── SandboxError              the sandbox cannot be set up (bubblewrap missing or unusable)

Every :class:`LLMCallError` is counted in the role's usage (``failures``, and by ``kind`` in
``failure_kinds``) and logged as one ``calls.jsonl`` line with its ``error`` kind; a reply
that ends in one is never cached, so a rerun asks again.

Malformed LLM *output* is not an exception for callers of ``complete_json``: it becomes a
typed failure record with the raw text kept (see :class:`inner.sdk.contract.JSONResult`; its
kind is ``schema``), so one bad completion never kills a run.
"""

from __future__ import annotations


class AutodataError(Exception):
    """Base class of every error raised on purpose by Autodata."""


class ConfigError(AutodataError, ValueError):
    """A config value is invalid. The message names the key, the value and the fix."""


class DocumentError(AutodataError):
    """The corpus path is missing, or it holds no readable document."""


class BackendError(AutodataError):
    """An LLM backend could not be started, or did not become healthy in time."""


class ModelWeightsError(BackendError):
    """The embedded model's weight packages are missing or assemble to a wrong hash."""


class LLMCallError(AutodataError):
    """One LLM call failed after all retries. Subclasses say how (their ``kind``).

    Attributes:
        role: the role that made the call (e.g. ``"weak_solver"``).
        endpoint: the ``llm.endpoints`` name it was sent to (``None`` if unknown, e.g. when
            re-raised in the harness sandbox).
        status: HTTP status code, or ``None`` for timeouts, dropped connections and bad bodies.
        cause: a short description of the underlying failure (exception type and message).
        kind: ``status``, ``timeout``, ``connection``, ``bad_response``, ``empty``,
            ``schema``; ``error`` for the base class.
    """

    kind = "error"

    def __init__(
        self,
        message: str,
        *,
        role: str,
        status: int | None = None,
        endpoint: str | None = None,
        cause: str | None = None,
    ) -> None:
        super().__init__(message)
        self.role = role
        self.status = status
        self.endpoint = endpoint
        self.cause = cause


class LLMStatusError(LLMCallError):
    """The endpoint answered with an HTTP error status (after retrying 408/409/429/5xx)."""

    kind = "status"


class LLMTimeoutError(LLMCallError):
    """No reply within ``timeout_s`` on every attempt."""

    kind = "timeout"


class LLMConnectionError(LLMCallError):
    """The connection was refused or dropped before a reply, on every attempt."""

    kind = "connection"


class LLMBadResponseError(LLMCallError):
    """A 200 reply that is not a chat completion: a body that is not JSON (e.g. a gateway's
    HTML error page) or has no ``choices``."""

    kind = "bad_response"


class LLMEmptyError(LLMCallError):
    """A 200 chat completion whose message content is empty."""

    kind = "empty"


class LLMSchemaError(LLMCallError):
    """Structured output that still fails to parse or validate after one repair.

    ``LLMClient.complete_json`` returns this failure as ``JSONResult(value=None, error=...)``
    rather than raising it; it is still counted and logged with kind ``schema``.
    """

    kind = "schema"


class HarnessError(AutodataError):
    """A harness directory is missing, does not import, or lacks a contract function."""


class BudgetExhausted(HarnessError):
    """Raised inside the sandbox when a per-document budget (rounds, LLM calls, tokens) is
    spent; the parent ends the document with the reason."""


class SandboxError(AutodataError):
    """The harness sandbox cannot be set up: bubblewrap is missing or cannot create namespaces
    here. The message says what to install."""
