"""The README's "Research clients" snippets run as written: each Python block
in its own interpreter, against the app really served on loopback and a
dataset made by ``appliance export``, with the environment the README names.
Real PostgreSQL and Redis; the stock of test_columnar."""
from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.ops import export
from tests.integration.test_api_schemathesis import served
from tests.integration.test_columnar import EXPORT_KEY, stocked  # noqa: F401

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippets() -> list[str]:
    text = README.read_text()
    section = text.split("## Research clients", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_has_pandas_polars_and_duckdb_snippets():
    blocks = _snippets()
    assert len(blocks) == 3
    joined = "\n".join(blocks)
    for lib in ("import pandas", "import polars", "import duckdb"):
        assert lib in joined


def test_the_research_snippets_run_as_written(app, stocked, tmp_path):
    dataset = tmp_path / "dataset"
    for tf in ("1m", "1d"):  # both, as the export job keeps them by default
        export.export(stocked.read_conn, tf, dt.date(2024, 6, 3), dt.date(2024, 6, 14), dataset,
                      tz="America/New_York")
    with served(app) as base:
        env = {**os.environ, "APPLIANCE_URL": base, "APPLIANCE_API_KEY": EXPORT_KEY,
               "APPLIANCE_DATASET": str(dataset)}
        for code in _snippets():
            p = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, f"{code}\n--- stderr:\n{p.stderr[-3000:]}"
            assert p.stdout.strip(), code
            if "duckdb" in code:
                assert "NVDA" in p.stdout and "AAPL" in p.stdout
            else:
                assert "AAPL" in p.stdout or "close" in p.stdout


pytestmark = pytest.mark.timeout(300)
