"""The config corpus (tests/config/*.good.yaml / *.bad.yaml) and the loader's
contract: every error as PATH:LINE: at <json.path>: <message>."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config.diff import diff_configs
from appliance.config.loader import load_config
from appliance.core.errors import ConfigError

CORPUS = Path(__file__).resolve().parents[1] / "config"
BAD = sorted(CORPUS.glob("*.bad.yaml"))
GOOD = sorted(CORPUS.glob("*.good.yaml"))


def _meta(path: Path):
    env, expect = {}, []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        if m := re.match(r"# env: (\w+)=(.*)$", line):
            env[m.group(1)] = m.group(2).replace("{dir}", str(path.parent))
        if m := re.match(r"# expect: (.*)$", line):
            expect.append(m.group(1).replace("{path}", str(path))
                          .replace("{dir}", str(path.parent)))
    return env, expect


def test_the_corpus_has_at_least_twenty_bad_files():
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_each_bad_file_fails_with_its_exact_error(path):
    env, expect = _meta(path)
    assert expect, f"{path.name} has no '# expect:' line"
    with pytest.raises(ConfigError) as ei:
        load_config(str(path), env=env)
    assert ei.value.errors == expect


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_each_good_file_loads(path):
    env, _ = _meta(path)
    cfg = load_config(str(path), env=env)
    assert cfg.symbols


def test_the_shipped_config_runs_as_it_is_with_the_demo_provider():
    cfg = load_config(Path(__file__).resolve().parents[2] / "config" / "appliance.example.yaml", env={})
    assert cfg["provider"]["name"] == "demo"
    assert cfg["database"]["url"] == "" and cfg["redis"]["url"] == ""
    assert cfg["server"]["bind"] == "127.0.0.1:8000"


def test_interpolation_uses_defaults_and_env(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("symbols: [AAPL]\nserver:\n  bind: ${BIND:-127.0.0.1:9000}\n"
                 "  admin_token: ${TOKEN}\n")
    tok = "abc-" + "x" * 24
    cfg = load_config(p, env={"TOKEN": tok})
    assert cfg["server"]["bind"] == "127.0.0.1:9000"
    assert cfg["server"]["admin_token"] == tok
    cfg = load_config(p, env={"TOKEN": tok, "BIND": "0.0.0.0:8080"})
    assert cfg["server"]["bind"] == "0.0.0.0:8080"


def test_a_secret_may_come_from_a_file(tmp_path):
    (tmp_path / "tok").write_text("from-file-long-enough-to-pass\n")
    p = tmp_path / "a.yaml"
    p.write_text("symbols: [AAPL]\nserver:\n  admin_token: ${TOKEN}\n")
    cfg = load_config(p, env={"TOKEN_FILE": str(tmp_path / "tok")})
    assert cfg["server"]["admin_token"] == "from-file-long-enough-to-pass"


def test_every_error_is_reported_not_just_the_first(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("symbols: [AAPL]\nserver:\n  workers: two\n  wokers: 2\nbogus: 1\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, env={})
    lines = ei.value.errors
    assert len(lines) == 3
    assert any(":3: at $.server.workers:" in l for l in lines)  # noqa: E741
    assert any(":4: at $.server.wokers: unknown key" in l for l in lines)  # noqa: E741
    assert any(":5: at $.bogus: unknown key" in l for l in lines)  # noqa: E741


def test_the_loaded_config_is_read_only(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("symbols: [AAPL]\n")
    cfg = load_config(p, env={})
    with pytest.raises(TypeError):
        cfg["server"]["bind"] = "0.0.0.0:1"  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg["symbols"][0] = "X"  # type: ignore[index]


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "etc").mkdir()
    p = tmp_path / "etc" / "a.yaml"
    p.write_text("symbols: [AAPL]\ndata_dir: ../var\nbackup: {path: bk}\n")
    cfg = load_config(p, env={})
    assert cfg["data_dir"] == str(tmp_path / "var")
    assert cfg["backup"]["path"] == str(tmp_path / "etc" / "bk")


def test_secrets_are_masked(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("symbols: [AAPL]\nserver: {admin_token: hunter2-hunter2-hunter2-x}\n"
                 "database: {url: 'postgresql://u:pw@h/db'}\n")
    m = load_config(p, env={}).masked()
    assert m["server"]["admin_token"] == "********"
    assert "pw" not in m["database"]["url"]
    assert "hunter2" not in repr(m)


def test_the_flat_files_keys_are_masked_in_the_config_the_diff_and_messages(tmp_path):
    from appliance.config.redaction import redact
    key_file = tmp_path / "s3-secret"
    key_file.write_text("s3-secret-value-0123\n")
    text = ("symbols: [AAPL]\nprovider:\n  polygon:\n    flat_files:\n      enabled: true\n"
            "      access_key_id: ${S3_ID}\n      secret_access_key: ${S3_SECRET}\n")
    p = tmp_path / "a.yaml"
    p.write_text(text)
    old = load_config(p, env={"S3_ID": "AKIAOLDKEY01", "S3_SECRET_FILE": str(key_file)})
    ff = old.masked()["provider"]["polygon"]["flat_files"]
    assert ff["secret_access_key"] == "********" and ff["access_key_id"] == "********"
    assert old["provider"]["polygon"]["flat_files"]["secret_access_key"] == \
        "s3-secret-value-0123"
    assert "s3-secret-value-0123" not in redact("S3 said: bad key s3-secret-value-0123")
    new = load_config(p, env={"S3_ID": "AKIAOLDKEY01", "S3_SECRET": "s3-rotated-value-4567"})
    changed = diff_configs(old, new)["changed"]
    assert changed["provider.polygon.flat_files.secret_access_key"]["new"] == "********"
    assert "s3-rotated-value-4567" not in repr(changed)


def test_a_huge_file_is_refused_with_its_size(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("symbols: [AAPL]\n" + "# padding\n" * 120_000)
    with pytest.raises(ConfigError) as ei:
        load_config(p, env={})
    assert "more than the 1048576 allowed" in ei.value.errors[0]


def test_diff_names_added_and_removed_symbols_and_changed_schedules(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("symbols: [AAPL, MSFT]\nschedules: {backfill: '0 2 * * *'}\n")
    b.write_text("symbols: [AAPL, NVDA]\nschedules: {backfill: '30 3 * * *'}\n"
                 "server: {bind: '127.0.0.1:9000', admin_token: x-long-enough-for-the-rule}\n")
    d = diff_configs(load_config(a, env={}), load_config(b, env={}))
    assert d["symbols_added"] == ["NVDA"]
    assert d["symbols_removed"] == ["MSFT"]
    assert d["schedules_changed"] == {"backfill": {"old": "0 2 * * *", "new": "30 3 * * *"}}
    assert d["restart_required"] == ["server.bind"]
    assert "server.bind" not in d["changed"]  # its old value stays in force until a restart
    # none before (empty) is said as empty, a value as the mask
    assert d["changed"]["server.admin_token"] == {"old": "", "new": "********",
                                                  "secret": True}


def _cli(*args, env=None):
    import os
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", *args], capture_output=True,
                          text=True, env=e, timeout=60)


def test_check_config_exits_zero_with_a_one_line_summary():
    r = _cli("check-config", str(CORPUS / "minimal.good.yaml"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("SUCCESS: ")
    assert len(r.stdout.strip().splitlines()) == 1


def test_check_config_prints_every_error_with_path_and_line_and_exits_one():
    path = CORPUS / "duplicate-symbols.bad.yaml"
    r = _cli("check-config", str(path))
    assert r.returncode == 1
    assert r.stdout.splitlines()[0] == (f"{path}:4: at $.symbols[2]: duplicate symbol 'AAPL' "
                                        f"(first at $.symbols[0])")


def test_check_config_uses_appliance_config_when_no_path_is_given():
    path = CORPUS / "bad-cron.bad.yaml"
    r = _cli("check-config", env={"APPLIANCE_CONFIG": str(path)})
    assert r.returncode == 1
    assert f"{path}:" in r.stdout


def test_a_file_that_is_not_yaml_still_gives_its_connection_settings(tmp_path):
    """A broken line elsewhere (an unterminated quote) does not hide where the
    servers are: each top-level block is read on its own."""
    from appliance.config.salvage import salvage_connection_settings
    p = tmp_path / "appliance.yaml"
    p.write_text("# the servers\ndatabase:\n  url: postgresql://u@db.example:5432/md\n"
                 "  pool_size: 4\nsymbols:\n  - AAPL\n  - \"MSFT\nredis:\n"
                 "  url: redis://cache.example:6379\ndata_dir: ../var\n")
    cfg = salvage_connection_settings(p, env={})
    assert cfg["database"]["url"] == "postgresql://u@db.example:5432/md"
    assert cfg["redis"]["url"] == "redis://cache.example:6379"
    assert cfg["data_dir"] == str(tmp_path.resolve() / "../var")  # beside the file's folder


def test_minute_history_starts_at_its_own_start_not_the_daily_one(tmp_path):
    """A 1m start before the 1d start was cut back to the 1d start, silently
    (a symbol without ``since`` took the daily start as its own); a symbol's
    own ``since`` still bounds both."""
    import datetime as dt

    from appliance.ingest import flatfiles, minutes
    p = tmp_path / "a.yaml"
    p.write_text("history: {start: {1d: 2021-01-04, 1m: 2010-01-04}}\n"
                 "symbols:\n"
                 "  - {symbol: SPY, timeframes: [1m, 1d]}\n"
                 "  - {symbol: QQQ, timeframes: [1m, 1d], since: 2015-01-02}\n"
                 "  - {symbol: DIA, timeframes: [1m, 1d], since: 2008-01-02}\n")
    cfg = load_config(p, env={})
    got = {s: minutes.minute_start(cfg, s) for s in ("SPY", "QQQ", "DIA")}
    assert got == {"SPY": dt.date(2010, 1, 4), "QQQ": dt.date(2015, 1, 2),
                   "DIA": dt.date(2010, 1, 4)}
    specs = {s.symbol: s for s in cfg.symbols}
    assert specs["SPY"].since == dt.date(2021, 1, 4)  # the daily history, as before
    assert flatfiles._symbol_start(cfg, specs["SPY"], "1m") == dt.date(2010, 1, 4)
    assert flatfiles._symbol_start(cfg, specs["SPY"], "1d") == dt.date(2021, 1, 4)
    assert flatfiles._symbol_start(cfg, specs["QQQ"], "1m") == dt.date(2015, 1, 2)


def test_the_diff_lists_a_symbol_whose_own_since_changed_not_every_symbol_of_a_new_start(
        tmp_path):
    """A new history.start listed every symbol without ``since`` under
    symbols_since_changed too; it is said once, as history_start_changed."""
    def cfg(start: str, qqq: str, dia: str):
        p = tmp_path / f"{start}{qqq}{dia}.yaml"
        p.write_text(f"history: {{start: {start}}}\nsymbols:\n  - SPY\n"
                     f"  - {{symbol: QQQ{qqq}}}\n  - {{symbol: DIA{dia}}}\n")
        return load_config(p, env={})
    d = diff_configs(cfg("2021-01-04", "", ", since: 2022-01-03"),
                     cfg("2020-01-02", "", ", since: 2022-01-03"))
    assert d["history_start_changed"]["1d"] == {"old": "2021-01-04", "new": "2020-01-02"}
    assert d["symbols_since_changed"] == {}
    d = diff_configs(cfg("2021-01-04", ", since: 2023-01-03", ", since: 2022-01-03"),
                     cfg("2021-01-04", ", since: 2022-06-01", ""))
    assert d["symbols_since_changed"] == {
        "QQQ": {"old": "2023-01-03", "new": "2022-06-01"},
        "DIA": {"old": "2022-01-03", "new": "2021-01-04"}}  # its own since removed
