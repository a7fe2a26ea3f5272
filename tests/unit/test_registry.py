"""The job registry is the one list of jobs: every other place that has to
repeat it (the JSON schema, the docs, the example config) agrees with it."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import is_typeddict

import pytest
import yaml

from appliance.config import loader as config
from appliance.jobs import registry

ROOT = Path(__file__).resolve().parents[2]


def test_the_config_defaults_are_the_registry_schedules():
    assert config.DEFAULTS["schedules"] == {n: j.schedule for n, j in registry.JOBS.items()}


def test_the_schema_names_exactly_the_registry_jobs():
    sched = json.loads(config.SCHEMA_PATH.read_text())["properties"]["schedules"]
    assert list(sched["properties"]) == list(registry.JOBS)
    assert sched["additionalProperties"] is False


def test_every_job_target_is_a_function():
    for name in registry.JOBS:
        assert callable(registry.job_function(name)), name


def test_every_job_declares_its_result_type_and_returns_it():
    for name in registry.JOBS:
        cls = registry.result_type(name)
        assert is_typeddict(cls) and issubclass_typeddict(cls, registry.JobResult), name
        # the function's return annotation names the declared type
        assert registry.job_function(name).__annotations__["return"] == cls.__name__, name
        keys = registry.result_keys(name)
        assert keys[-len(registry.COMMON_KEYS):] == registry.COMMON_KEYS
        assert len(set(keys)) == len(keys), name


def issubclass_typeddict(cls, base) -> bool:
    """A TypedDict's bases are gone at run time; its keys hold the base's."""
    return set(base.__annotations__) <= set(cls.__annotations__)


def test_a_result_type_that_is_no_typeddict_is_refused(monkeypatch):
    monkeypatch.setitem(registry.JOBS, "odd", registry.Job(
        "odd", "appliance.jobs.registry:run_now_params", "* * * * *", "",
        "appliance.jobs.registry:Job"))
    with pytest.raises(TypeError, match="Job .the result of job 'odd'. is not a TypedDict"):
        registry.result_type("odd")
    with pytest.raises(ValueError, match="unknown job 'nope'"):
        registry.result_keys("nope")


def test_an_unknown_job_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="unknown job 'nope'; known: alerts, backfill"):
        registry.job_function("nope")


def _documented_schedules(text: str, pattern: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(pattern, text, flags=re.M)}


def test_the_docs_show_the_registry_schedules():
    want = registry.default_schedules()
    readme = (ROOT / "README.md").read_text()
    para = readme.split("Default schedules (UTC):", 1)[1].split("\n\n", 1)[0]
    assert _documented_schedules(para, r"([a-z_]+) `([^`]+)`") == want
    ops = (ROOT / "OPERATIONS.md").read_text()
    table = ops.split("## What runs by itself", 1)[1].split("\n---\n", 1)[0]
    assert _documented_schedules(table, r"^\| `([a-z_]+)` \| `([^`]+)`") == want


def test_the_example_config_shows_the_default_schedules():
    example = yaml.safe_load((ROOT / "config" / "appliance.example.yaml").read_text())
    for name, expr in (example.get("schedules") or {}).items():
        assert name in registry.JOBS
        assert expr == registry.JOBS[name].schedule, (name, expr)
