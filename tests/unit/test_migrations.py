"""Migrations are not edited once released: a database applies them by
number, so one that applied an earlier text of a migration never gets what
was added to it later (0013 gained ``minute_bars.vwap_scale`` after its
release; 0016 had to add it where it was missing). The statements of each
released migration (comments and spacing aside: those may change) are held
here; a change to the schema goes into a new migration."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parents[2] / "appliance" / "store" / "migrations"

#: each released migration's statements, as ``statements`` reduces them
RELEASED = {
    "0001_init.sql": "a34990fd75fd3392",
    "0002_history.sql": "878a890155489391",
    "0003_intraday.sql": "3216b51d090844a6",
    "0004_chunks.sql": "5803098650bf46a9",
    "0006_symbol_unknown.sql": "752e36d09946a9f2",
    "0008_demo_source.sql": "2fd50ef0619678d9",
    "0009_minute_checks.sql": "f1258fdd74fa9855",
    "0010_flat_files.sql": "6826b0822ec956ac",
    "0011_corporate_actions.sql": "704e4fe9ea782416",
    "0012_minute_partitions.sql": "41fcf670be0bc2fd",
    "0013_minute_offsets.sql": "1f43115aece7823f",
    "0014_rollup_candles.sql": "d429a9730aaafe8e",
    "0015_minute_session_index.sql": "5dbac49a238823a7",
    "0016_minute_vwap_scale.sql": "f4711ceaccdbf7f0",
    "0017_minute_packed.sql": "37f64b489f58b82d",
}


def statements(text: str) -> str:
    """The SQL without its ``--`` comments, spacing collapsed, hashed."""
    return hashlib.sha256(" ".join(re.sub(r"--[^\n]*", "", text).split()).encode()).hexdigest()[:16]


def test_no_released_migration_has_changed():
    changed = [name for name, digest in RELEASED.items()
               if statements((MIGRATIONS / name).read_text(encoding="utf-8")) != digest]
    assert not changed, (f"released migrations changed: {changed}. A database that applied "
                         f"the earlier text never gets the change: put it in a new migration")


def test_every_migration_is_held_here():
    """A new migration is added to RELEASED when it is released (the list
    keeps the next edit of it from going unnoticed)."""
    assert sorted(p.name for p in MIGRATIONS.glob("*.sql")) == sorted(RELEASED)


def test_a_change_to_a_statement_is_seen_and_a_comment_is_not():
    text = (MIGRATIONS / "0013_minute_offsets.sql").read_text(encoding="utf-8")
    assert statements("-- a new note\n" + text.replace("\n", "\n  ")) == RELEASED[
        "0013_minute_offsets.sql"]
    assert statements(text.replace("vwap_scale   smallint", "vwap_scale   integer")) != \
        RELEASED["0013_minute_offsets.sql"]
