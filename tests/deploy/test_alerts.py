"""The example alert rules in deploy/prometheus/ name metrics Deskmate really exports."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import bot.metrics  # noqa: F401 (registers the metrics)

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yaml"


def test_every_alert_names_real_metrics_and_labels() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 6 and all({"alert", "expr", "labels", "annotations"} <= set(r) for r in rules)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    exported = {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("deskmate_")
        for suffix in suffixes.get(family.type, [""])
    }
    labels = {"platform", "outcome", "stage", "kind", "le", "instance"}
    for rule in rules:
        for name in re.findall(r"\bdeskmate_[a-z_]+", rule["expr"]):
            assert name in exported, (rule["alert"], name)
        for label in re.findall(r"(\w+)\s*[=!]~?\"", rule["expr"]):
            assert label in labels | {"job", "deployment"}, (rule["alert"], label)
