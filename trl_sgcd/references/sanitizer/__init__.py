"""The sanitizer that runs on every sibling trace before a credit-reference provider sees it (paper App. B).

It masks, with typed placeholders such as `<MASKED:EMAIL>`:

- credentials: API keys (`sk-...`, `AKIA...`, `ghp_...`, `hf_...`, JWTs, private-key blocks), bearer tokens, and values
  of password/secret/token fields (JSON fields, `key=value` and `key: value` text, Python keyword arguments);
- payment and account values: card numbers (Luhn-checked), IBANs (mod-97-checked), payment-method ids such as
  `credit_card_7815826`, and values under configurable field names (`payment_id`, `card_number`, `account_number`...);
- e-mail addresses and phone numbers;
- evaluator/oracle reports and gold actions: values under configurable keys (`evaluation`, `gold_actions`,
  `expected_answer`, `oracle`, ...) and free-text reports matched by configurable regexes;
- answer-bearing literals a benchmark adapter declares in `group.metadata["answer_literals"]`.

Tool results are often JSON (sometimes JSON inside JSON, or a printed Python dict): such strings are parsed, walked,
masked and re-serialized; strings without any hit keep their exact formatting. Simplifications: detection is
pattern-based (no NER), so a person's name or a free-text address is not masked, and re-serialized JSON loses its
original whitespace. Masking is idempotent: placeholders are never matched again.

The original values that were masked are returned (`SanitizedGroup.masked_values`) so providers can list them as
literals that receive no credit; they stay in memory and must never be logged or cached.
"""

from .config import SanitizedGroup, SanitizerConfig
from .core import Sanitizer
from .dumps import mask_credit_record, mask_tokens
from .providers import SanitizingProvider, ensure_sanitized, finalize_reference
from .rules import CATEGORIES, PLACEHOLDER_RE, iban_valid, luhn_valid


__all__ = [
    "CATEGORIES",
    "PLACEHOLDER_RE",
    "SanitizedGroup",
    "Sanitizer",
    "SanitizerConfig",
    "SanitizingProvider",
    "ensure_sanitized",
    "finalize_reference",
    "iban_valid",
    "luhn_valid",
    "mask_credit_record",
    "mask_tokens",
]
