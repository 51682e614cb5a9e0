"""Sanitizer leak rate, false-positive rate and worst-case time.

1. The hostile corpus (`tests/hostile_corpus.py`): planted secrets per category (leaks = planted strings still
   readable after sanitizing) and benign airline/AppWorld/BFCL transcripts (false positive = transcript changed).
2. ~1 MB hostile inputs (unclosed brackets/quotes/tags, key runs, base64-ish runs, high-entropy tokens): seconds per
   case and the worst case.

Usage: python benchmarks/sanitizer.py [--size BYTES] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import string
import sys
import time
from pathlib import Path

from trl_sgcd.references.sanitizer import Sanitizer


HOSTILE_UNITS = {
    "payment_brace": "payment_id={",
    "json_open": '{"payment_id": [',
    "token_quote": "token='",
    "token_call": "token=",
    "password_escape": 'password="\\',
    "escaped_json_key": 'password: \\"',
    "api_key_colon": "api_key: ",
    "fullwidth_colon": "token：",
    "yaml_next_line": "password:\n",
    "yaml_blocks": "a:\n  password:\n    x\n",
    "yaml_block_mark": "password: |-",
    "routing_number": "Routing number: ",
    "base64_run": "QUJDRGVmZ2hpams0NTY3ODkrLw",
    "jwt_run": "eyJ",
    "sk_run": "sk-",
    "private_key_begin": "-----BEGIN RSA PRIVATE KEY-----\n",
    "private_key_cut": "-----BEGIN PRIVATE KEY-----(",
    "gold_tag": "<gold>",
    "xml_open": "<password>x",
    "cli_flag": "--password ",
    "spaced_pin": "pin 482 ",
    "email_dots": "a@b.",
    "card_digits": "4111 ",
    "phone_digits": "+1 555 ",
    "iban_groups": "DE89 3704 ",
    "bearer": "Bearer ",
    "url_userinfo": "http://a:",
    "entropy_tokens": None,  # distinct random 24-character tokens
    "answer_numbers": "1,250.00 ",  # with the answer literal 1250
}
LITERALS = {"answer_numbers": ["1250"]}


def hostile_text(name: str, size: int) -> str:
    """`size` characters of the repeated unit `name` (the call-like case ends in `(`)."""
    unit = HOSTILE_UNITS[name]
    if unit is None:
        rng = random.Random(0)
        alphabet = string.ascii_letters + string.digits
        return " ".join("".join(rng.choice(alphabet) for _ in range(24)) for _ in range(size // 25))
    text = unit * (size // len(unit))
    return text + "(" if name == "token_call" else text


def _corpus():
    path = Path(__file__).parents[1] / "tests" / "hostile_corpus.py"
    spec = importlib.util.spec_from_file_location("hostile_corpus", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["hostile_corpus"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = parser.parse_args()
    sanitizer = Sanitizer()
    report = _corpus().leak_report(sanitizer)
    print("category     planted  leaks  leak rate")
    for category, n in report["planted"].items():
        leaks = len(report["leaks"].get(category, []))
        print(f"{category:12s} {n:7d} {leaks:6d} {leaks / n:9.1%}")
    print("style        benign  changed  false-positive rate")
    for style, n in report["benign"].items():
        fps = report["false_positives"].get(style, [])
        print(f"{style:12s} {n:6d} {len(fps):8d} {len(fps) / n:9.1%}  {'; '.join(fps[:3])}")
    planted, benign = sum(report["planted"].values()), sum(report["benign"].values())
    leaks = sum(len(v) for v in report["leaks"].values())
    fps = sum(len(v) for v in report["false_positives"].values())
    print(
        f"total: {leaks}/{planted} leaks ({leaks / planted:.1%}), {fps}/{benign} false positives ({fps / benign:.1%})"
    )
    # Wall time depends on what else runs on the machine; CPU time (this process) is close to the idle wall time.
    times, cpu = {}, {}
    print("hostile input         wall s   cpu s")
    for name in HOSTILE_UNITS:
        text = hostile_text(name, args.size)
        start, start_cpu = time.perf_counter(), time.process_time()
        sanitizer.sanitize_text(text, LITERALS.get(name, ()))
        times[name], cpu[name] = time.perf_counter() - start, time.process_time() - start_cpu
        print(f"{name:20s} {times[name]:7.3f} {cpu[name]:7.3f}")
    worst, worst_cpu = max(times, key=times.get), max(cpu, key=cpu.get)
    print(
        f"worst case: {times[worst]:.3f} s wall ({worst}), {cpu[worst_cpu]:.3f} s cpu ({worst_cpu}), {args.size} chars"
    )
    if args.json:
        figures = {"report": report, "wall_s": times, "cpu_s": cpu, "size": args.size}
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
