"""The sanitizer that runs on every sibling trace before a credit-reference provider sees it (paper App. B).

It masks, with typed placeholders such as `<MASKED:EMAIL>`:

- credentials: key formats found by detect-secrets' regex plugins (AWS, GitHub, GitLab, Slack, Stripe, JWTs, ...) and
  a few more, private-key blocks, high-entropy base64 strings, bearer/basic tokens, passwords in URLs, and values of
  password/secret/token fields (`detectors.py`);
- payment and account values: card numbers (Luhn-checked, any grouping), IBANs (mod-97-checked, any case or
  grouping), payment-method ids such as `credit_card_7815826`, and values under payment/account field names;
- e-mail addresses (any script) and phone numbers (international formats);
- evaluator/oracle reports and gold answers: values under oracle field names in any spelling, and `<gold>`-style tags;
- answer-bearing literals a benchmark adapter declares in `group.metadata["answer_literals"]`, numbers by value
  (`literals.py`).

Values under sensitive field names are found in parsed JSON and in text (`key: value`, `key=value`, escaped JSON,
YAML, headers, query strings, code; `keyed.py`), where prose after a key word is not taken for a value. Tool results
that are JSON (or a printed Python dict) are parsed, walked, masked and re-serialized; strings without any hit keep
their exact formatting. Every scan is linear in the input length. Masking is idempotent: placeholders are never
matched again.

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
