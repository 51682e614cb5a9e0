"""The sanitizer runs in linear time on hostile input and still masks what follows it."""

import importlib.util
import time
from pathlib import Path

import pytest
import torch

from trl_sgcd.references.sanitizer import Sanitizer


torch.set_num_threads(1)
_spec = importlib.util.spec_from_file_location(
    "bench_sanitizer", Path(__file__).parents[1] / "benchmarks/sanitizer.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("name", list(bench.HOSTILE_UNITS))
def test_one_megabyte_hostile_input_is_fast(name):
    # At most about 0.7 s of CPU per case (see docs/LOG.md). CPU time, not wall time, so other work on the machine does
    # not decide the outcome; the bound still fails any quadratic scan by far: before the linear scan,
    # "payment_brace" took 16 s at 50 kB and "token_call" 188 s at 1 MB, and the unanchored JWT pattern on "jwt_run"
    # would read about 1.7e11 characters.
    text = bench.hostile_text(name, 1_000_000)
    start = time.process_time()
    Sanitizer().sanitize_text(text, bench.LITERALS.get(name, ()))
    assert time.process_time() - start < 2.0


@pytest.mark.parametrize(
    "prefix", ["payment_id={", "token=", '{"payment_id": [', "eyJ", "sk-", "Routing number: ", "password:\n", "a@b."]
)
def test_secret_after_hostile_prefix_is_still_masked(prefix):
    text = prefix * 20_000 + ' password="hunter2-Secret" card 4111 1111 1111 1111'
    masked, counts = Sanitizer().sanitize_text(text)
    assert "hunter2-Secret" not in masked
    assert "4111 1111 1111 1111" not in masked
    assert (
        counts["credential"] >= 1
    )  # (after `password:` + newline the indented line is its YAML value, card included)
