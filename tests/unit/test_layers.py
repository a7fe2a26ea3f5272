"""The layers are a contract: `lint-imports` checks the import-linter contracts
of pyproject.toml, and every module of the package sits in one layer, so a new
module cannot slip past them."""
from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import appliance

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
#: packages whose __init__ holds only a docstring
BARE_PACKAGES = {"appliance", "appliance.jobs"}


def test_lint_imports_keeps_every_contract():
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Contracts: {len(CONTRACTS['contracts'])} kept, 0 broken" in proc.stdout


def test_every_module_of_the_package_sits_in_a_layer():
    (layers,) = [c["layers"] for c in CONTRACTS["contracts"] if c["type"] == "layers"]
    placed = {m.strip() for layer in layers for m in re.split(r"[|:]", layer)}
    modules = ["appliance"] + [m.name for m in pkgutil.walk_packages(appliance.__path__,
                                                                      "appliance.")]
    unplaced = []
    for mod in modules:
        parts = mod.split(".")
        if mod in BARE_PACKAGES:
            continue
        if not any(".".join(parts[:i]) in placed for i in range(2, len(parts) + 1)):
            unplaced.append(mod)
    assert unplaced == []
