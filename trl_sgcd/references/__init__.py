"""Credit-reference providers: what turns a mixed sibling group into a training-only credit reference.

- `ContrastCreditReference`: deterministic and LLM-free, the offline default.
- `LiteLLMCreditReference`: an external LLM through litellm with the paper's Table 5 prompt (litellm is imported on
  first use only).
- `SiblingContextReference`: the `sibling_context` ablation (sanitized successful traces as the teacher context).
- Any callable `(SiblingGroup) -> CreditReference | str | None` via `as_provider`; wrap it with `ensure_sanitized` so
  it only sees sanitized evidence.
"""

from ..siblings import CreditReference
from .alignment import tool_sequence
from .base import (
    CallableCreditReference,
    CreditReferenceError,
    CreditReferenceProvider,
    ProviderOutcome,
    aresolve_references,
    as_provider,
    resolve_references,
    run_blocking,
    run_sync,
    stage_deadline,
)
from .cache import ReferenceCache, cache_key
from .contrast import ContrastCreditReference, SiblingContextReference
from .litellm_provider import LiteLLMCreditReference, ProviderCallError
from .oracle import OracleCreditReference
from .prompt import (
    PROMPT_VERSION,
    ROLE,
    SECTION_KEYS,
    SECTION_TITLES,
    CreditPrompt,
    SiblingSelection,
    build_credit_prompt,
    compose_credit_prompt,
    format_credit_reference,
    parse_credit_reference,
    render_sibling,
    select_siblings,
)
from .sanitizer import (
    SanitizedGroup,
    Sanitizer,
    SanitizerConfig,
    SanitizingProvider,
    ensure_sanitized,
    finalize_reference,
    mask_credit_record,
    mask_tokens,
)


__all__ = [
    "PROMPT_VERSION",
    "ROLE",
    "SECTION_KEYS",
    "SECTION_TITLES",
    "CallableCreditReference",
    "ContrastCreditReference",
    "CreditPrompt",
    "CreditReference",
    "CreditReferenceError",
    "CreditReferenceProvider",
    "LiteLLMCreditReference",
    "OracleCreditReference",
    "ProviderCallError",
    "ProviderOutcome",
    "ReferenceCache",
    "SanitizedGroup",
    "Sanitizer",
    "SanitizerConfig",
    "SanitizingProvider",
    "SiblingContextReference",
    "SiblingSelection",
    "aresolve_references",
    "as_provider",
    "build_credit_prompt",
    "cache_key",
    "compose_credit_prompt",
    "ensure_sanitized",
    "mask_credit_record",
    "mask_tokens",
    "finalize_reference",
    "format_credit_reference",
    "parse_credit_reference",
    "render_sibling",
    "resolve_references",
    "run_blocking",
    "run_sync",
    "select_siblings",
    "stage_deadline",
    "tool_sequence",
]
