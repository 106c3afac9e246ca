"""LLM access: the async client, the response cache and the backends."""

from inner.llm.cache import ResponseCache
from inner.llm.client import Completion, JSONResult, LLMClient, UsageMeter

__all__ = ["Completion", "JSONResult", "LLMClient", "ResponseCache", "UsageMeter"]
