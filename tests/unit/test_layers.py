"""The layers are a contract: `lint-imports` checks the import-linter contracts
of pyproject.toml, and every module of the package sits in one layer, so a new
module cannot slip past them."""
from __future__ import annotations

import ast
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


PACKAGE = ROOT / "appliance"
#: Statements as they begin (a message such as "REINDEX of ..." is not one).
SQL_START = re.compile(
    r"^\s*(SELECT\s|INSERT\s+INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|CREATE\s|ALTER\s|"
    r"DROP\s|TRUNCATE\s|WITH\s+\w+\s+AS\s|SHOW\s|SET\s+(LOCAL\s+)?\w+\s*=|RESET\s|ANALYZE\s|"
    r"REINDEX\s+(INDEX|TABLE)\s|COPY\s)")
#: Where SQL may be written: the store (with the connection pool and the
#: migration runner, which must work before any store function's table exists).
SQL_HOMES = ("appliance/store/",)


def _string_constants(tree: ast.AST):
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef,
                                    ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr)
                  and isinstance(n.body[0].value, ast.Constant)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            yield n


def test_sql_is_written_only_in_the_store_and_db():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(SQL_HOMES):
            continue
        for const in _string_constants(ast.parse(path.read_text())):
            if SQL_START.match(const.value):
                found.append(f"{rel}:{const.lineno}: {const.value.strip()[:50]}")
    assert found == []


def test_the_statement_pattern_sees_statements_and_not_messages():
    assert SQL_START.match('  SELECT 1')
    assert SQL_START.match("UPDATE job_runs SET status = 'failed'")
    assert SQL_START.match("SET LOCAL statement_timeout = 0")
    assert not SQL_START.match("REINDEX of public.ix failed: boom")
    assert not SQL_START.match("Set the suspension key")


def test_no_module_over_600_lines_and_no_function_over_80():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = path.read_text()
        rel = path.relative_to(ROOT).as_posix()
        if len(src.splitlines()) > 600:
            too_long.append(f"{rel}: {len(src.splitlines())} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert too_long == []
