"""SGCDConfig rejects non-finite numbers, wrong types and malformed reference templates at construction."""

import math
from dataclasses import fields

import pytest
from trl import GRPOConfig

from trl_sgcd import SGCDConfig


def make(tmp_path, **overrides):
    return SGCDConfig(output_dir=str(tmp_path), report_to="none", num_generations=2, use_cpu=True, **overrides)


SGCD_NUMERIC = [
    f.name
    for f in fields(SGCDConfig)
    if f.name not in {g.name for g in fields(GRPOConfig)} and ("float" in f.type or "int" in f.type)
]


def test_numeric_fields_are_found():
    assert {"credit_gamma", "credit_cap", "success_threshold", "provider_timeout", "segment_spike_z"} <= set(
        SGCD_NUMERIC
    )


@pytest.mark.parametrize("name", SGCD_NUMERIC)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rejected(tmp_path, name, bad):
    with pytest.raises((ValueError, TypeError), match=name):
        make(tmp_path, **{name: bad})


@pytest.mark.parametrize("name", SGCD_NUMERIC)
@pytest.mark.parametrize("bad", ["1", True])
def test_wrong_type_rejected(tmp_path, name, bad):
    with pytest.raises(TypeError, match=name):
        make(tmp_path, **{name: bad})


def test_credit_gamma_string_message(tmp_path):
    with pytest.raises(TypeError, match=r"credit_gamma must be float, got '1' \(str\)"):
        make(tmp_path, credit_gamma="1")


def test_success_threshold_nan_rejected_and_int_accepted(tmp_path):
    with pytest.raises(ValueError, match="success_threshold must be finite"):
        make(tmp_path, success_threshold=math.nan)
    assert make(tmp_path, success_threshold=1, credit_gamma=2).success_threshold == 1


@pytest.mark.parametrize(
    "template",
    [
        "{reference} {other}",
        "{reference} {0}",
        "{reference} }",
        "{reference} {",
        "{reference} {}",
        "{reference} {!r}",
        "{reference} {reference.upper}",  # would format a bound method's repr at step 1
        "{reference} {reference.missing}",  # would raise AttributeError at step 1
        "{reference} {reference[0]}",
        "{reference} {reference:{width}}",
    ],
)
def test_reference_template_with_other_braces_rejected(tmp_path, template):
    with pytest.raises(ValueError, match="reference_template must be a format string whose only field"):
        make(tmp_path, reference_template=template)


@pytest.mark.parametrize("template", [5, None, ["{reference}"]])
def test_reference_template_of_another_type_rejected(tmp_path, template):
    with pytest.raises(TypeError, match="reference_template must be str"):
        make(tmp_path, reference_template=template)


def test_reference_template_with_doubled_braces_accepted(tmp_path):
    config = make(tmp_path, reference_template='Reference: {reference}\nJSON looks like {{"a": 1}}')
    assert config.reference_template.format(reference="x").endswith('{"a": 1}')
