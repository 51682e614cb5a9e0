"""Worst-case sanitizer time on ~1 MB hostile inputs (unclosed brackets/quotes, key runs, base64-ish runs).

Usage: python benchmarks/sanitizer.py [--size BYTES]
"""

from __future__ import annotations

import argparse
import time

from trl_sgcd.references.sanitizer import Sanitizer


HOSTILE_UNITS = {
    "payment_brace": "payment_id={",
    "json_open": '{"payment_id": [',
    "token_quote": "token='",
    "token_call": "token=",
    "password_escape": 'password="\\',
    "api_key_colon": "api_key: ",
    "base64_run": "QUJDRGVmZ2hpams0NTY3ODkrLw",
    "email_dots": "a@b.",
    "card_digits": "4111 ",
    "phone_digits": "+1 555 ",
    "iban_groups": "DE89 3704 ",
    "bearer": "Bearer ",
    "url_userinfo": "http://a:",
}


def hostile_text(name: str, size: int) -> str:
    """`size` characters of the repeated unit `name` (the call-like case ends in `(`)."""
    unit = HOSTILE_UNITS[name]
    text = unit * (size // len(unit))
    return text + "(" if name == "token_call" else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1_000_000)
    args = parser.parse_args()
    sanitizer = Sanitizer()
    worst = 0.0
    for name in HOSTILE_UNITS:
        start = time.perf_counter()
        sanitizer.sanitize_text(hostile_text(name, args.size))
        elapsed = time.perf_counter() - start
        worst = max(worst, elapsed)
        print(f"{name:16s} {elapsed:7.3f} s")
    print(f"worst case: {worst:.3f} s for {args.size} characters")


if __name__ == "__main__":
    main()
