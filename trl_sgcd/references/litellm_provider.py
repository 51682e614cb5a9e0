"""`LiteLLMCreditReference`: the default credit-reference provider, an external LLM called through litellm.

Per group: sanitize (`Sanitizer`), build the Table 5 prompt with the long-context fallback (`prompt.py`), look the
sanitized evidence up in the on-disk cache (`cache.py`), otherwise call `litellm.acompletion` at temperature 0, reject
a reply over `max_reply_chars`, scrub API-key values from it (`keys.py`), parse it (`parse_credit_reference`), mask
anything sensitive it repeats, cap its length, and complete its literals (`finalize_reference`). The CPU work (all but
the HTTP call) runs on worker threads, off the event loop. The cache holds only the finalized, masked reference text.

Calls are bounded by the provider's own semaphore and a per-attempt timeout. Retries use exponential backoff (and
honour `Retry-After`) for rate limits (429), server errors (5xx, including malformed response bodies, which litellm
reports as 500), timeouts and connection errors only; client errors (400, 401, 404, context-window overflows) and
unparseable replies fail at once, since at temperature 0 a retry would get the same answer. litellm's own retries are
turned off so the counters are exact.

litellm is imported on first use, never at module import (it takes seconds and is an optional dependency), with
`LITELLM_LOCAL_MODEL_COST_MAP=True` unless the environment says otherwise, so no cost map is fetched. API keys come
from the environment (`api_key_env`, or litellm's own provider variables such as `OPENAI_API_KEY`); they are never
accepted as arguments, stored, cached or logged, and their values are scrubbed from the prompt, the replies and the
error messages whatever their format.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import time
import weakref
from collections import Counter
from typing import Any

from ..siblings import CreditReference, SiblingGroup
from .base import CreditReferenceError, CreditReferenceProvider, run_blocking
from .cache import ReferenceCache, cache_key
from .keys import is_key_name, known_keys, scrub_keys
from .prompt import (
    DEFAULT_MAX_OBSERVATION_CHARS,
    DEFAULT_MAX_PROMPT_CHARS,
    MIN_PROMPT_CHARS,
    PROMPT_VERSION,
    compose_credit_prompt,
    parse_credit_reference,
)
from .sanitizer import SanitizedGroup, Sanitizer, finalize_reference


logger = logging.getLogger(__name__)

RETRYABLE = frozenset({"rate_limit", "server", "timeout", "connection"})
METRIC_KEYS = (
    "calls",
    "http_calls",
    "cache_hits",
    "failures",
    "retries",
    "references",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_s",
    "sanitizer_hits",
    "reference_chars",
    "fallback_groups",
    "output_masks",
    "cache_errors",
)
_FORBIDDEN_EXTRA = frozenset({"api_key", "model", "messages"})
_litellm: Any = None


class ProviderCallError(CreditReferenceError):
    """An LLM call that failed for good (after retries where they apply); `kind` says why."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class LiteLLMLogFilter(logging.Filter):
    """On litellm's loggers: drops their DEBUG records, which print raw requests and replies, and scrubs API-key values
    from the others (message and traceback). To see litellm's debug output anyway (it will hold raw replies):
    `logging.getLogger("LiteLLM").removeFilter(LOG_FILTER)`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return False
        keys = known_keys(*_provider_key_sources())
        message, count = scrub_keys(record.getMessage(), keys)
        if count:
            record.msg, record.args = message, ()
        if record.exc_info:
            record.exc_text = scrub_keys(logging.Formatter().formatException(record.exc_info), keys)[0]
            record.exc_info = None
        return True


LOG_FILTER = LiteLLMLogFilter()
LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
_providers: weakref.WeakSet[LiteLLMCreditReference] = weakref.WeakSet()


def _provider_key_sources() -> tuple[list[str | None], list[str]]:
    providers = list(_providers)
    return [p.api_key_env for p in providers], [v for p in providers for v in p._extra_credentials()]


def import_litellm() -> Any:
    """Imports litellm once, without fetching its remote cost map, with its debug banner off and `LOG_FILTER` on its
    loggers."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.suppress_debug_info = True
        for name in LITELLM_LOGGERS:
            logging.getLogger(name).addFilter(LOG_FILTER)
        _litellm = litellm
    return _litellm


def classify_error(exc: BaseException) -> str:
    """Maps an exception to `rate_limit`, `server`, `timeout`, `connection`, `client`, `parse` or `other` (or the
    `kind` of a `ProviderCallError`: `config`, `oversize`, ...)."""
    if isinstance(exc, ProviderCallError):
        return exc.kind
    if isinstance(exc, CreditReferenceError):
        return "parse"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "Timeout" in names or "APITimeoutError" in names:
        return "timeout"
    status = getattr(exc, "status_code", None)
    if status == 429 or "RateLimitError" in names:
        return "rate_limit"
    if status == 408:
        return "timeout"
    if "APIConnectionError" in names:
        return "connection"
    if isinstance(status, int) and status >= 500:
        return "server"
    if isinstance(status, int) and 400 <= status < 500:
        return "client"
    if isinstance(exc, (ConnectionError, OSError)):
        return "connection"
    return "other"


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        value = headers.get("retry-after")
        return float(value) if value is not None else None
    except (TypeError, ValueError, AttributeError):
        return None


class LiteLLMCreditReference(CreditReferenceProvider):
    """Credit references written by an external LLM through litellm (paper §4.2, App. B, Table 5).

    Args:
        model: a litellm model string, e.g. `"openai/gpt-4.1-mini"` or `"anthropic/claude-sonnet-4-5"`.
        api_base: endpoint override (an OpenAI-compatible server, a proxy, a local vLLM).
        api_key_env: name of the environment variable holding the API key; `None` lets litellm use its provider's
            standard variable (`OPENAI_API_KEY`, ...).
        max_concurrency: most requests in flight at once (this provider's own semaphore).
        timeout: seconds per HTTP attempt.
        num_retries: retries after the first attempt, for rate limits, 5xx, timeouts and connection errors.
        backoff: first retry delay in seconds; doubles at each retry.
        max_backoff: longest retry delay (also caps `Retry-After`).
        max_reference_chars: cap on the reference text (≈ 1.5k tokens by default, so the teacher prefix stays cheap).
        max_reply_chars: longest reply accepted; a longer one fails the group (`failures_oversize`) unparsed and
            uncached.
        max_prompt_chars: character budget of the prompt; the long-context fallback keeps it under this.
        max_observation_chars: cap on each tool observation when all siblings fit.
        max_tokens: completion token limit sent to the model (`None` for the provider default).
        temperature: sampling temperature (0 for reproducible references).
        cache_dir: directory of the on-disk reference cache; `None` disables caching.
        sanitizer: the sanitizer run before the prompt is built (defaults to `Sanitizer()`).
        extra_kwargs: extra keyword arguments for `litellm.acompletion` (e.g. `drop_params`, `mock_response`);
            they cannot carry `api_key`, and the values of credential-named ones (`aws_secret_access_key`, ...) are
            scrubbed like the key.
    """

    name = "litellm"
    sanitizes_input = True

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key_env: str | None = None,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        num_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_reference_chars: int = 6_000,
        max_reply_chars: int = 100_000,
        max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
        max_observation_chars: int = DEFAULT_MAX_OBSERVATION_CHARS,
        max_tokens: int | None = 2_048,
        temperature: float = 0.0,
        cache_dir: str | os.PathLike[str] | None = None,
        sanitizer: Sanitizer | None = None,
        extra_kwargs: dict[str, Any] | None = None,
    ):
        if not model or not isinstance(model, str):
            raise ValueError(f"model must be a non-empty litellm model string, got {model!r}.")
        if max_prompt_chars < MIN_PROMPT_CHARS:
            raise ValueError(f"max_prompt_chars must be at least {MIN_PROMPT_CHARS}, got {max_prompt_chars}.")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}.")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}.")
        if isinstance(max_reply_chars, bool) or not isinstance(max_reply_chars, int) or max_reply_chars < 1:
            raise ValueError(f"max_reply_chars must be a positive int, got {max_reply_chars!r}.")
        if num_retries < 0:
            raise ValueError(f"num_retries must be >= 0, got {num_retries}.")
        if backoff < 0 or max_backoff < 0:
            raise ValueError(f"backoff and max_backoff must be >= 0, got {backoff} and {max_backoff}.")
        extra_kwargs = dict(extra_kwargs or {})
        forbidden = sorted(_FORBIDDEN_EXTRA & set(extra_kwargs))
        if forbidden:
            raise ValueError(
                f"extra_kwargs may not set {forbidden}: pass the model as `model` and the API key through the "
                "environment (`api_key_env`)."
            )
        if importlib.util.find_spec("litellm") is None:
            raise ImportError("LiteLLMCreditReference needs litellm: `pip install 'trl-sgcd[litellm]'`.")
        if api_key_env is not None and not os.environ.get(api_key_env):
            logger.warning("Environment variable %s is not set; credit-reference calls will fail.", api_key_env)
        self.model = model
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.num_retries = int(num_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_reference_chars = max_reference_chars
        self.max_reply_chars = max_reply_chars
        self.max_prompt_chars = max_prompt_chars
        self.max_observation_chars = max_observation_chars
        self.max_tokens = max_tokens
        self.temperature = float(temperature)
        self.cache = ReferenceCache(cache_dir) if cache_dir is not None else None
        self.sanitizer = sanitizer or Sanitizer()
        self.extra_kwargs = extra_kwargs
        self._metrics: Counter[str] = Counter()
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None
        self._unpriced = False
        _providers.add(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, api_base={self.api_base!r})"

    # ---------------------------------------------------------------- provider API

    def pop_metrics(self) -> dict[str, float]:
        """Per-step accounting (summed over the step's calls), reset on read. Failure kinds appear as `failures_<kind>`."""
        if self.cache is not None:
            self._metrics["cache_errors"] += self.cache.errors
            self.cache.errors = 0
        metrics = {key: 0.0 for key in METRIC_KEYS}
        metrics.update({k: float(v) for k, v in self._metrics.items()})
        self._metrics.clear()
        return metrics

    async def abuild(self, group: SiblingGroup) -> CreditReference:
        start = time.perf_counter()
        self._metrics["calls"] += 1
        try:
            reference = await self._build(group)
        except BaseException as exc:
            self._metrics["failures"] += 1
            kind = "cancelled" if isinstance(exc, asyncio.CancelledError) else classify_error(exc)
            self._metrics[f"failures_{kind}"] += 1
            raise
        finally:
            self._metrics["latency_s"] += time.perf_counter() - start
        self._metrics["references"] += 1
        self._metrics["reference_chars"] += len(reference.text)
        return reference

    # ---------------------------------------------------------------- internals

    async def _build(self, group: SiblingGroup) -> CreditReference:
        sanitized, prompt, scrubbed, key, record = await run_blocking(self._prepare, group)
        self._metrics["sanitizer_hits"] += sanitized.total + scrubbed
        if prompt.selection.fallback:
            self._metrics["fallback_groups"] += 1
        usage: dict[str, Any] = {}
        if record is not None:
            self._metrics["cache_hits"] += 1
            parsed = CreditReference(record["reference"], list(record["literals"]), dict(record["metadata"]))
        else:
            reply, usage = await self._complete(prompt.messages)
            parsed, scrubbed = await run_blocking(self._parse, reply)
            self._metrics["output_masks"] += scrubbed
        parsed.metadata.update(
            provider=self.name,
            model=self.model,
            cache_hit=record is not None,
            prompt_chars=prompt.chars,
            fallback=prompt.selection.fallback,
            siblings_shown=len(prompt.selection.indices),
            **usage,
        )
        reference, masks = await run_blocking(
            finalize_reference, parsed, group, sanitized, self.sanitizer, self.max_reference_chars
        )
        self._metrics["output_masks"] += masks
        if record is None and self.cache is not None:
            try:
                await run_blocking(self._store, key, reference, group, sanitized, usage)
            except OSError as exc:  # a full or read-only disk must not cost the reference
                self._metrics["cache_errors"] += 1
                logger.warning("Could not write the credit-reference cache: %s", type(exc).__name__)
        return reference

    def _keys(self) -> list[str]:
        """API-key values to scrub: the environment's credential variables, `api_key_env`'s value, and the values of
        credential-named `extra_kwargs`."""
        return known_keys([self.api_key_env], self._extra_credentials())

    def _extra_credentials(self) -> list[str]:
        return [v for k, v in self.extra_kwargs.items() if is_key_name(k) and isinstance(v, str)]

    def _prepare(self, group: SiblingGroup) -> tuple[SanitizedGroup, Any, int, str, dict[str, Any] | None]:
        """Worker thread: sanitizes, builds the prompt (API-key values scrubbed), keys it and looks it up."""
        sanitized = self.sanitizer.sanitize(group)
        prompt = compose_credit_prompt(
            sanitized.group, max_chars=self.max_prompt_chars, max_observation_chars=self.max_observation_chars
        )
        keys, scrubbed = self._keys(), 0
        for message in prompt.messages:
            message["content"], count = scrub_keys(message["content"], keys)
            scrubbed += count
        key = cache_key(
            prompt.messages, self.model, PROMPT_VERSION, temperature=self.temperature, max_tokens=self.max_tokens
        )
        record = self.cache.get(key) if self.cache is not None else None
        if record is not None and not (
            isinstance(record.get("literals"), list) and isinstance(record.get("metadata"), dict)
        ):
            self.cache.errors += 1
            record = None
        return sanitized, prompt, scrubbed, key, record

    def _parse(self, reply: str) -> tuple[CreditReference, int]:
        """Worker thread: the reply with API-key values scrubbed, parsed (raises `CreditReferenceError` if unusable)."""
        text, scrubbed = scrub_keys(reply, self._keys())
        return parse_credit_reference(text), scrubbed

    def _store(
        self,
        key: str,
        reference: CreditReference,
        group: SiblingGroup,
        sanitized: SanitizedGroup,
        usage: dict[str, Any],
    ) -> None:
        """Worker thread: caches the finalized reference text and the reply's own literals, never the raw reply, the
        answer literals or the values the sanitizer masked (a hit recomputes those for its own group)."""
        private = {*self.sanitizer.answer_literals(group), *sanitized.masked_values}
        self.cache.put(
            key,
            reference.text,
            literals=[literal for literal in reference.masked_literals if literal not in private],
            metadata={k: reference.metadata[k] for k in ("sections", "format") if k in reference.metadata},
            model=self.model,
            prompt_version=PROMPT_VERSION,
            usage=usage,
        )

    def _get_semaphore(self) -> asyncio.Semaphore:
        # A semaphore is bound to its event loop, and the provider loop is replaced if a provider ever blocks it.
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._semaphore_loop = loop
        return self._semaphore

    def _request_kwargs(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "timeout": self.timeout,
            "num_retries": 0,  # retries are ours, so they are counted and limited to transient errors
        }
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.api_base is not None:
            kwargs["api_base"] = self.api_base
        if self.api_key_env is not None:
            api_key = os.environ.get(self.api_key_env)
            if not api_key:
                raise ProviderCallError(f"environment variable {self.api_key_env} is not set", kind="config")
            kwargs["api_key"] = api_key
        kwargs.update(self.extra_kwargs)
        return kwargs

    async def _complete(self, messages: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
        # The first import takes seconds: keep it off the event loop so a notebook's loop is not frozen.
        litellm = _litellm if _litellm is not None else await run_blocking(import_litellm)
        semaphore = self._get_semaphore()
        attempt = 0
        while True:
            try:
                async with semaphore:
                    self._metrics["http_calls"] += 1
                    kwargs = self._request_kwargs(messages)
                    response = await asyncio.wait_for(litellm.acompletion(**kwargs), timeout=self.timeout + 5.0)
                return self._read_response(litellm, response)
            except CreditReferenceError:
                raise
            except Exception as exc:
                kind = classify_error(exc)
                if kind not in RETRYABLE or attempt >= self.num_retries:
                    raise self._public_error(exc, kind, attempt + 1) from None
                delay = min(self.max_backoff, self.backoff * (2**attempt))
                retry_after = _retry_after(exc)
                if retry_after is not None:
                    delay = min(self.max_backoff, max(delay, retry_after))
                attempt += 1
                self._metrics["retries"] += 1
                await asyncio.sleep(delay)

    def _read_response(self, litellm: Any, response: Any) -> tuple[str, dict[str, Any]]:
        try:
            content = response.choices[0].message.content
        except (AttributeError, IndexError, KeyError, TypeError):
            raise CreditReferenceError("malformed completion: no message content") from None
        content = "" if content is None else str(content)
        if not content.strip():
            raise CreditReferenceError("empty credit-reference reply")
        if len(content) > self.max_reply_chars:
            raise ProviderCallError(
                f"a reply of {len(content)} characters is over max_reply_chars={self.max_reply_chars}", kind="oversize"
            )
        usage: dict[str, Any] = {}
        raw_usage = getattr(response, "usage", None)
        for field in ("prompt_tokens", "completion_tokens"):
            value = getattr(raw_usage, field, None)
            if isinstance(value, (int, float)):
                usage[field] = int(value)
                self._metrics[field] += int(value)
        cost = None
        hidden = getattr(response, "_hidden_params", None)
        if isinstance(hidden, dict) and isinstance(hidden.get("response_cost"), (int, float)):
            cost = float(hidden["response_cost"])
        if cost is None and not self._unpriced:
            try:
                cost = float(litellm.completion_cost(completion_response=response))
            except Exception:  # noqa: BLE001 - unknown or self-hosted models have no price
                # A price lookup costs about a millisecond of the event loop per reply; a model without a price
                # will not get one during the run, so it is looked up once.
                self._unpriced = True
        if cost is not None:
            usage["cost_usd"] = cost
            self._metrics["cost_usd"] += cost
        return content, usage

    def _public_error(self, exc: BaseException, kind: str, attempts: int) -> BaseException:
        """An exception safe to log: type and a scrubbed, short message, never an API key."""
        message, _ = scrub_keys(f"{type(exc).__name__}: {exc}", self._keys())
        message, _ = self.sanitizer.sanitize_text(message[:1_000])
        text = f"credit-reference call failed ({kind}) after {attempts} attempt(s): {message[:300]}"
        if kind == "timeout":
            return TimeoutError(text)
        return ProviderCallError(text, kind=kind)
