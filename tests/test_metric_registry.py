"""The metric registry: every column is declared by one metric file, the README table and the
card come from it, options reach the spec, and `zoo metrics NAME` takes any registered name."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.datasets.card import column_lines, metrics_table
from zoo.metrics.registry import METRICS, OPTIONS
from zoo.spec import MetricsSpec, SpecError, load_spec, spec_from_dict

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_metrics_table_is_the_registry():
    text = README.read_text()
    start = text.index("<!-- metrics table")
    start = text.index("\n", start) + 1
    end = text.index("<!-- end of metrics table -->")
    assert text[start:end].strip() == metrics_table(), "run python -m zoo.datasets.card and paste it"


def test_every_metric_declares_itself_in_its_own_file():
    for name, metric in METRICS.items():
        assert metric.about and metric.applies_to in ("model", "pair", "layer"), name
        module = metric.compute.__module__
        assert module.startswith("zoo.metrics.") and module != "zoo.metrics.measure", name
        lines = [line for line in column_lines() if module.replace(".", "/") in line]
        assert len(lines) == len(metric.columns), name  # the card names the file of every column


def test_options_reach_the_spec_with_their_checks():
    if not OPTIONS:
        pytest.skip("no registered metric adds options")
    key, option = next(iter(OPTIONS.items()))
    assert getattr(MetricsSpec(), key) == option.default
    spec = load_spec("smoke", [f"metrics.{key}={str(option.default).lower()}"])
    assert spec.metrics.options[key] == option.default
    again = spec_from_dict(spec.to_dict())  # a stored spec (zoo.json) round-trips
    assert getattr(again.metrics, key) == option.default
    with pytest.raises(SpecError, match=f"metrics.{key}"):
        load_spec("smoke", [f"metrics.{key}=[1, 2]"])
    with pytest.raises(SpecError, match="unknown key metrics.no_such_metric"):
        load_spec("smoke", ["metrics.no_such_metric=1"])
    with pytest.raises(AttributeError):
        MetricsSpec().no_such_metric  # noqa: B018 - the attribute access is the test


def test_default_spec_identity_is_unchanged_by_the_options_field():
    from zoo.spec import spec_identity

    assert "options" not in spec_identity(load_spec("default"))["metrics"]
