"""Deployment checks for the Ansible playbook in ansible/.

Lint (production profile) and syntax check, then a real converge of
ansible/site.yml against this machine (connection local) with
tests/deploy/converge_vars.yml, a second run that must change nothing, and
checks of what was written.

Everything the converge writes lives under a temporary prefix, except two
things it cannot put elsewhere: the `appliance` system user/group, and a
database and role named `mda_deploy_test` in the machine's PostgreSQL
(dropped again at the end). The machine's PostgreSQL and Redis are only
checked: their configuration goes to the prefix, and no service is started,
stopped or reloaded (systemd is not PID 1 here, so service management is off).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
CONVERGE_VARS = Path(__file__).with_name("converge_vars.yml")
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
ANSIBLE_LINT = BIN / "ansible-lint"
ROLES = ("host", "cluster_tls", "postgresql", "redis", "backup_drive", "appliance")
REQUIRED_COLLECTIONS = ("ansible/posix", "community/postgresql", "community/general",
                        "community/crypto")

TEST_DB = "mda_deploy_test"
SERVICE_USER = "appliance"
UNITS = (
    "appliance-web.service",
    "appliance-worker@.service",
    "appliance-scheduler.service",
    "market-data-api.target",
    "market-data-api.service",
)
SERVICES = ("appliance-web.service", "appliance-worker@.service", "appliance-scheduler.service")
WORKER_COUNT = 3  # appliance_worker_count in converge_vars.yml
# Source files copied for the install; the rest of the tree is not needed.
SOURCE_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "node_modules", "__pycache__", "*.pyc", "build", "dist",
    "*.egg-info", ".pytest_cache", "tests", "bench", "var", "ansible", ".ansible",
)

requires_ansible = pytest.mark.skipif(
    not ANSIBLE_PLAYBOOK.exists(),
    reason=f"ansible-playbook is not installed in {BIN} (pip install '.[deploy]')",
)


def _missing_collections() -> list[str]:
    import importlib.util

    spec = importlib.util.find_spec("ansible_collections")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    roots.append(Path.home() / ".ansible" / "collections" / "ansible_collections")
    return [c for c in REQUIRED_COLLECTIONS if not any((r / c).is_dir() for r in roots)]


def _ansible_env(tmp: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_DEPRECATION_WARNINGS="0",
        PY_COLORS="0",
        NO_COLOR="1",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    if tmp is not None:
        env["ANSIBLE_LOCAL_TEMP"] = str(tmp / "ansible-local")
    return env


def _run(cmd, *, cwd=ANSIBLE_DIR, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env or _ansible_env(), capture_output=True,
        text=True, timeout=timeout,
    )


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _recap(output: str) -> dict[str, int]:
    match = re.search(r"^localhost\s*:\s*(.*)$", output, re.MULTILINE)
    assert match, f"no PLAY RECAP line for localhost:\n{_tail(output)}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _psql(sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atqc", sql],
        capture_output=True, text=True, timeout=60,
    )


def _drop_test_database() -> None:
    _psql(f"DROP DATABASE IF EXISTS {TEST_DB}")
    _psql(f"DROP ROLE IF EXISTS {TEST_DB}")


def _require_cli() -> None:
    """The converge validates the rendered config with the appliance's CLI:
    a CLI that does not import is a failure, not a reason to skip that check."""
    probe = subprocess.run(
        [sys.executable, "-c", "import appliance.cli.main"], cwd=REPO, capture_output=True, timeout=120,
        text=True,
    )
    assert probe.returncode == 0, f"import appliance.cli.main failed:\n{probe.stderr[-2000:]}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))[2:].rjust(4, "0")


def _owner(path: Path) -> tuple[str, str]:
    import grp
    import pwd

    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name


# ---------------------------------------------------------------------------
# Static checks
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not ANSIBLE_LINT.exists(), reason=f"ansible-lint is not installed in {BIN}")
def test_ansible_lint_production_profile_is_clean():
    missing = _missing_collections()
    if missing:
        pytest.skip(f"Ansible collections not installed: {', '.join(missing)} (pip install ansible)")
    result = _run([ANSIBLE_LINT, "--offline", "--profile", "production", "--nocolor", "."])
    assert result.returncode == 0, _tail(result.stdout + result.stderr)


@requires_ansible
def test_playbook_syntax_check_passes():
    result = _run([ANSIBLE_PLAYBOOK, "-i", "inventory.example.yml", "--syntax-check", "site.yml"])
    assert result.returncode == 0, _tail(result.stdout + result.stderr)


@requires_ansible
def test_cluster_inventory_syntax_check_passes():
    result = _run([ANSIBLE_PLAYBOOK, "-i", "inventory.cluster.example.yml", "--syntax-check",
                   "site.yml"])
    assert result.returncode == 0, _tail(result.stdout + result.stderr)


def test_cluster_example_inventory_has_every_group():
    inv = yaml.safe_load((ANSIBLE_DIR / "inventory.cluster.example.yml").read_text())
    cluster = inv["all"]["children"]["cluster"]
    groups = {name: list((g or {}).get("hosts") or {}) for name, g in cluster["children"].items()}
    assert set(groups) == {"db", "db_replica", "redis", "web", "workers"}, groups
    assert len(groups["db"]) == 1 and len(groups["redis"]) == 1, groups
    assert groups["web"] and groups["workers"] and groups["db_replica"], groups
    assert not set(groups["db"]) & set(groups["db_replica"]), groups
    for name, hostvars in cluster["hosts"].items():
        assert hostvars.get("appliance_private_address"), f"{name} has no private address"
    documented = (ANSIBLE_DIR / "README.md").read_text()
    for group in groups:
        assert f"`{group}`" in documented, f"group {group} is not described in ansible/README.md"


@requires_ansible
def test_cluster_hosts_get_their_part_and_the_inventorys_addresses(tmp_path):
    """What group_vars/all.yml derives for each host of the example inventory."""
    names = ["appliance_database_url", "appliance_database_read_url", "appliance_redis_url",
             "appliance_run_web", "appliance_run_scheduler", "appliance_run_workers",
             "postgresql_replication_mode", "postgresql_client_addresses",
             "postgresql_replica_addresses", "redis_bind", "postgresql_manage_database",
             "postgresql_ssl", "redis_tls", "cluster_tls_address"]
    playbook = tmp_path / "show.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "db:db_replica:redis:web:workers", "gather_facts": False,
        # the roles' defaults only, as in site.yml's play
        "roles": [{"role": r, "when": False}
                  for r in ("cluster_tls", "postgresql", "redis", "appliance")],
        "tasks": [{"ansible.builtin.debug": {"msg": "VARS {{ {" + ", ".join(
            f"'{n}': {n}" for n in names) + "} | to_json }}"}}]}]))
    shutil.copy(playbook, ANSIBLE_DIR / ".show-cluster-vars.yml")
    try:
        result = _run([ANSIBLE_PLAYBOOK, "-i", "inventory.cluster.example.yml",
                       ".show-cluster-vars.yml", "-e", "redis_check_host=127.0.0.1"])
    finally:
        (ANSIBLE_DIR / ".show-cluster-vars.yml").unlink()
    assert result.returncode == 0, _tail(result.stdout + result.stderr)
    import json
    got = {}
    for host, body in re.findall(r'^ok: \[(\S+)\] => \{\n\s*"msg": "VARS (.*)"\n\}', result.stdout,
                                 re.M):
        got[host] = json.loads(body.encode().decode("unicode_escape"))
    assert set(got) == {"mda-01", "mda-02", "mda-03"}, result.stdout[-2000:]
    ca = "/etc/ssl/appliance-cluster/ca.crt"
    for host, v in got.items():
        # TLS between the hosts, on by default in the cluster inventory
        tls = f"?sslmode=verify-full&sslrootcert={ca}"
        assert v["appliance_database_url"].endswith("@10.0.0.11:5432/market_data" + tls)
        assert v["appliance_database_read_url"].endswith("@10.0.0.12:5432/market_data" + tls)
        assert v["appliance_redis_url"] == \
            f"rediss://:${{REDIS_PASSWORD}}@10.0.0.11:6379/0?ssl_ca_certs={ca}"
        assert v["postgresql_ssl"] is True and v["redis_tls"] is True
        assert v["cluster_tls_address"] == {"mda-01": "10.0.0.11", "mda-02": "10.0.0.12",
                                            "mda-03": "10.0.0.13"}[host]
        assert sorted(v["postgresql_client_addresses"]) == ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
        assert v["postgresql_replica_addresses"] == ["10.0.0.12"]
    one, two, three = got["mda-01"], got["mda-02"], got["mda-03"]
    assert (one["appliance_run_web"], one["appliance_run_scheduler"], one["appliance_run_workers"]) \
        == (True, True, False)
    assert (two["appliance_run_web"], two["appliance_run_workers"]) == (False, True)
    assert (three["appliance_run_web"], three["appliance_run_workers"]) == (False, True)
    assert one["postgresql_replication_mode"] == "primary"
    assert two["postgresql_replication_mode"] == "replica" and not two["postgresql_manage_database"]
    assert one["redis_bind"] == "127.0.0.1 -::1 10.0.0.11"


def test_every_role_variable_is_documented_in_group_vars():
    documented = (ANSIBLE_DIR / "group_vars" / "all.yml").read_text()
    undocumented = []
    for role in ROLES:
        defaults = yaml.safe_load((ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml").read_text())
        undocumented += [f"{role}: {name}" for name in defaults if name not in documented]
    assert not undocumented, f"not in group_vars/all.yml: {undocumented}"


def test_role_task_entry_points_only_include_phase_files():
    for role in ROLES:
        tasks = yaml.safe_load((ANSIBLE_DIR / "roles" / role / "tasks" / "main.yml").read_text())
        for task in tasks:
            modules = set(task) - {"name", "tags", "when"}
            assert modules <= {"ansible.builtin.import_tasks", "ansible.builtin.include_tasks"}, (
                f"roles/{role}/tasks/main.yml does more than include phase files: {task}"
            )


def test_templates_start_with_the_ansible_managed_header():
    for template in ANSIBLE_DIR.glob("roles/*/templates/*.j2"):
        if template.name.startswith("_"):  # fragments included by other templates
            continue
        first = template.read_text().splitlines()[0]
        assert first == "{{ ansible_managed | comment }}", f"{template} starts with {first!r}"


# ---------------------------------------------------------------------------
# Converge against localhost, twice
# ---------------------------------------------------------------------------


@dataclass
class Converge:
    prefix: Path
    first: subprocess.CompletedProcess
    second: subprocess.CompletedProcess
    etc_fstab_before: str
    run: object  # run(*extra_args) -> CompletedProcess: one more converge

    def path(self, relative: str) -> Path:
        return self.prefix / relative.lstrip("/")


@pytest.fixture(scope="module")
def converge(tmp_path_factory):
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip(f"ansible-playbook is not installed in {BIN} (pip install '.[deploy]')")
    missing = _missing_collections()
    if missing:
        pytest.skip(f"Ansible collections not installed: {', '.join(missing)} (pip install ansible)")
    if os.geteuid() != 0:
        pytest.skip("the converge creates a system user and chowns files: run as root")
    if not (_port_open(5432) and _port_open(6379)):
        pytest.skip("the converge needs the machine's PostgreSQL (5432) and Redis (6379) on 127.0.0.1")
    if shutil.which("psql") is None or shutil.which("redis-cli") is None:
        pytest.skip("psql and redis-cli are needed (apt-get install postgresql-client redis-tools)")

    prefix = tmp_path_factory.mktemp("deploy-prefix")
    work = tmp_path_factory.mktemp("deploy-work")
    # A checked-out source tree, as on a real host (and stable while the
    # converge runs even if the working tree is being edited).
    source = work / "src"
    shutil.copytree(REPO, source, ignore=SOURCE_IGNORE, symlinks=True)
    (prefix / "etc").mkdir()
    (prefix / "etc" / "fstab").write_text("# /etc/fstab stand-in for the deploy test\n")
    inventory = work / "inventory.yml"
    inventory.write_text(
        "all:\n  children:\n    appliance:\n      hosts:\n        localhost:\n"
        "          ansible_connection: local\n"
        f"          ansible_python_interpreter: {sys.executable}\n"
        "          ansible_become: false\n"
    )
    timezone = Path("/etc/timezone")
    already_utc = timezone.exists() and timezone.read_text().strip() == "Etc/UTC"
    _require_cli()
    extra = [
        "-e", f"deploy_test_prefix={prefix}",
        "-e", f"@{CONVERGE_VARS}",
        "-e", f"appliance_source_dir={source}",
        "-e", "appliance_validate_config=true",
        # Only verify the machine's timezone if it is UTC already: a test
        # does not change the clock zone of the machine it runs on.
        "-e", f"host_manage_timezone={str(already_utc).lower()}",
    ]
    env = _ansible_env(work)

    def run(*more: str) -> subprocess.CompletedProcess:
        return _run([ANSIBLE_PLAYBOOK, "-i", inventory, "site.yml", *extra, *more], env=env, timeout=420)

    etc_fstab_before = _sha256(Path("/etc/fstab"))
    _drop_test_database()
    try:
        first = run()
        (work / "first.log").write_text(first.stdout + first.stderr)
        assert first.returncode == 0, f"first converge failed:\n{_tail(first.stdout + first.stderr, 80)}"
        second = run()
        (work / "second.log").write_text(second.stdout + second.stderr)
        yield Converge(prefix, first, second, etc_fstab_before, run)
    finally:
        _drop_test_database()


@requires_ansible
def test_converge_succeeds(converge):
    recap = _recap(converge.first.stdout)
    assert recap["failed"] == 0 and recap["unreachable"] == 0, recap
    assert recap["changed"] > 0, "the first converge on a fresh prefix changed nothing"


def _changed_tasks(output: str) -> list[str]:
    """Names of the tasks that reported a change in ansible-playbook output."""
    task, changed = "", []
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:"):
            changed.append(task)
    return changed


@requires_ansible
def test_second_converge_changes_nothing(converge):
    out = converge.second.stdout + converge.second.stderr
    assert converge.second.returncode == 0, _tail(out, 80)
    recap = _recap(converge.second.stdout)
    assert recap["changed"] == 0, f"second run changed: {_changed_tasks(converge.second.stdout)}"


@requires_ansible
def test_files_have_the_expected_owners_and_modes(converge):
    expected = {
        "etc/appliance": ("root", SERVICE_USER, "0750"),
        "etc/appliance/appliance.yaml": ("root", SERVICE_USER, "0640"),
        "etc/appliance/appliance.env": ("root", SERVICE_USER, "0640"),
        "var/lib/appliance": (SERVICE_USER, SERVICE_USER, "0700"),
        "mnt/external-backup/market-data-backups": (SERVICE_USER, SERVICE_USER, "0700"),
        "opt/appliance": ("root", "root", "0755"),
        "etc/systemd/journald.conf.d/appliance.conf": ("root", "root", "0644"),
        "etc/systemd/timesyncd.conf.d/appliance.conf": ("root", "root", "0644"),
        "etc/postgresql/15/main/pg_hba.conf": ("root", "root", "0640"),
        "etc/postgresql/15/main/conf.d/appliance.conf": ("root", "root", "0644"),
        "etc/redis/conf.d/appliance.conf": ("root", "root", "0640"),
    }
    expected.update({f"etc/systemd/system/{unit}": ("root", "root", "0644") for unit in UNITS})
    problems = []
    for relative, (user, group, mode) in expected.items():
        path = converge.path(relative)
        if not path.exists():
            problems.append(f"{relative}: missing")
            continue
        if (_owner(path), _mode(path)) != ((user, group), mode):
            problems.append(f"{relative}: {_owner(path)} {_mode(path)}, want {(user, group)} {mode}")
    assert not problems, "\n".join(problems)

    venv = converge.path("opt/appliance/venv")
    assert os.access(venv / "bin" / "appliance", os.X_OK), "appliance CLI not installed in the virtualenv"
    assert _owner(venv / "bin" / "appliance")[0] == "root", "the service user must not own its code"


@requires_ansible
def test_secrets_live_only_in_the_env_file(converge):
    env_text = converge.path("etc/appliance/appliance.env").read_text()
    config_text = converge.path("etc/appliance/appliance.yaml").read_text()
    assert 'APPLIANCE_DB_PASSWORD="3f9a1c7e5b2d4f6a8c0e1b3d5f7a9c2e"' in env_text
    assert 'REDIS_PASSWORD="8e6c4a2f0d1b3e5c7a9f2d4b6e8c0a1f"' in env_text
    assert "3f9a1c7e5b2d4f6a8c0e1b3d5f7a9c2e" not in config_text
    assert "${APPLIANCE_DB_PASSWORD}" in config_text and "${REDIS_PASSWORD}" in config_text
    assert converge.path("etc/appliance/appliance.yaml").read_text().startswith("#\n# Ansible managed")


@requires_ansible
def test_database_and_redis_are_local_only(converge):
    hba = converge.path("etc/postgresql/15/main/pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules, "empty pg_hba.conf"
    for rule in rules:
        assert rule[0] in ("local", "host"), rule
        if rule[0] == "host":
            assert rule[3] in ("127.0.0.1/32", "::1/128"), f"non-local pg_hba rule: {rule}"
            assert rule[4] == "scram-sha-256", rule
    pg_conf = converge.path("etc/postgresql/15/main/conf.d/appliance.conf").read_text()
    assert "listen_addresses = 'localhost'" in pg_conf

    redis_conf = converge.path("etc/redis/conf.d/appliance.conf").read_text()
    assert re.search(r"^bind 127\.0\.0\.1( -::1)?$", redis_conf, re.M), redis_conf
    assert "requirepass 8e6c4a2f0d1b3e5c7a9f2d4b6e8c0a1f" in redis_conf
    assert "protected-mode yes" in redis_conf
    main = converge.path("etc/redis/redis.conf").read_text()
    assert f"include {converge.path('etc/redis/conf.d/appliance.conf')}" in main


@requires_ansible
def test_database_and_role_were_created(converge):
    result = _psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{TEST_DB}'")
    assert result.stdout.strip() == TEST_DB, result.stdout + result.stderr


@requires_ansible
def test_machine_services_were_left_alone(converge):
    """The converge only checked the machine's servers: Redis still has no
    password and PostgreSQL still answers, /etc/fstab is byte-for-byte the same."""
    ping = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"],
                          capture_output=True, text=True, timeout=30)
    assert ping.stdout.strip() == "PONG", ping.stdout + ping.stderr
    assert _psql("SELECT 1").stdout.strip() == "1"
    assert _sha256(Path("/etc/fstab")) == converge.etc_fstab_before, "/etc/fstab was modified"


@requires_ansible
def test_fstab_entry_mounts_the_backup_drive_by_uuid_with_nofail(converge):
    fstab = converge.path("etc/fstab").read_text().splitlines()
    assert fstab[0].startswith("# /etc/fstab stand-in"), "existing fstab content was lost"
    mount_point = str(converge.path("mnt/external-backup"))
    entries = [
        fields for fields in (line.split() for line in fstab if not line.startswith("#"))
        if len(fields) > 1 and fields[1] == mount_point
    ]
    assert len(entries) == 1, fstab
    src, _, fstype, options, dump, passno = entries[0]
    assert src == "UUID=5d6f0e4c-7b1a-4c33-9e2f-0a1b2c3d4e5f"
    assert fstype == "ext4"
    assert "nofail" in options.split(",")
    assert (dump, passno) == ("0", "2")


@requires_ansible
def test_rendered_config_passes_check_config(converge):
    env = dict(os.environ)
    for line in converge.path("etc/appliance/appliance.env").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value.strip('"')
    appliance = converge.path("opt/appliance/venv/bin/appliance")
    config = converge.path("etc/appliance/appliance.yaml")
    result = subprocess.run([str(appliance), "check-config", str(config)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@requires_ansible
def test_units_are_hardened_and_grouped(converge):
    unit_dir = converge.path("etc/systemd/system")
    data_dir = converge.path("var/lib/appliance")
    backup_dir = converge.path("mnt/external-backup/market-data-backups")
    for name in SERVICES:
        text = (unit_dir / name).read_text()
        for line in (
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "Restart=on-failure",
            f"ReadWritePaths={data_dir} -{backup_dir}",
            f"User={SERVICE_USER}",
            f"EnvironmentFile={converge.path('etc/appliance/appliance.env')}",
            "PartOf=market-data-api.target",
            "WantedBy=market-data-api.target",
        ):
            assert re.search(rf"^{re.escape(line)}$", text, re.M), f"{name} lacks {line!r}"
        assert len(re.findall(r"^ReadWritePaths=", text, re.M)) == 1, name
    web = (unit_dir / "appliance-web.service").read_text()
    assert re.search(r"^ExecReload=\S+/bin/appliance reload$", web, re.M), web
    target = (unit_dir / "market-data-api.target").read_text()
    workers = " ".join(f"appliance-worker@{i}.service" for i in range(1, WORKER_COUNT + 1))
    assert f"Wants=appliance-web.service appliance-scheduler.service {workers}" in target
    assert "WantedBy=multi-user.target" in target
    front = (unit_dir / "market-data-api.service").read_text()
    assert "BindsTo=market-data-api.target" in front and "WantedBy=multi-user.target" in front


@requires_ansible
def test_units_pass_systemd_analyze_verify(converge):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    unit_dir = converge.path("etc/systemd/system")
    names = [u for u in UNITS if not u.endswith("@.service")]
    names += [f"appliance-worker@{i}.service" for i in range(1, WORKER_COUNT + 1)]
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_dir}:", SYSTEMD_LOG_COLOR="0")
    result = subprocess.run([analyze, "verify", "--man=no", *names], env=env, cwd=unit_dir,
                            capture_output=True, text=True, timeout=120)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output


# Runs last in this module: it changes the converged state.
@requires_ansible
def test_a_config_change_reloads_and_does_not_restart(converge):
    result = converge.run("-e", '{"appliance_symbols": ["AAPL", "MSFT", "IBM"]}')
    out = result.stdout + result.stderr
    assert result.returncode == 0, _tail(out, 80)
    assert _changed_tasks(result.stdout) == [
        "appliance : Write appliance.yaml (validated before it replaces the old one)"
    ], _tail(out, 80)
    assert "RUNNING HANDLER [appliance : Reload appliance]" in result.stdout
    assert "RUNNING HANDLER [appliance : Restart appliance]" not in result.stdout
    assert '- "IBM"' in converge.path("etc/appliance/appliance.yaml").read_text()


def _tasks(node):
    """Every task of a task list, blocks opened."""
    for t in node or []:
        if isinstance(t, dict):
            yield t
            for key in ("block", "rescue", "always"):
                yield from _tasks(t.get(key))


SECRET_WORDS = re.compile(r"password|passwd|token|secret|api_key|runtime_env|base_env|extra_env",
                          re.I)


def test_no_task_passes_secrets_through_environment():
    """Ansible's environment: puts each variable on the remote command line
    (ps -eo args shows it while the task runs, -vvv prints it): secrets go
    through the root-only secrets file instead (appliance.config.envfile)."""
    offenders = []
    for f in sorted(ANSIBLE_DIR.glob("roles/*/tasks/*.yml")) + sorted(ANSIBLE_DIR.glob("*.yml")):
        doc = yaml.safe_load(f.read_text())
        plays = doc if isinstance(doc, list) else []
        tasks = list(_tasks(plays))
        for play in plays:
            if isinstance(play, dict):
                tasks += list(_tasks(play.get("tasks"))) + list(_tasks(play.get("pre_tasks")))
                if "environment" in play:
                    tasks.append(play)
        for t in tasks:
            env = t.get("environment")
            if env is not None and SECRET_WORDS.search(yaml.safe_dump(env)):
                offenders.append(f"{f.relative_to(ANSIBLE_DIR)}: {t.get('name')}: {env}")
    assert not offenders, offenders


def test_the_env_file_runner_keeps_secrets_off_the_command_line(tmp_path):
    envf = tmp_path / "appliance.env"
    envf.write_text('# secrets\nAPPLIANCE_ADMIN_TOKEN="tok$en \\"quoted\\" \\\\ x"\nPLAIN=abc\n')
    envf.chmod(0o600)
    probe = ("import os; print(os.environ['APPLIANCE_ADMIN_TOKEN']); print(os.environ['PLAIN']);"
             "print(open('/proc/self/cmdline','rb').read().replace(b'\\0', b' ').decode())")
    p = subprocess.run([sys.executable, "-m", "appliance.config.envfile", str(envf), sys.executable,
                        "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    token, plain, cmdline = p.stdout.splitlines()
    assert token == 'tok$en "quoted" \\ x' and plain == "abc"
    assert "tok$en" not in cmdline
    envf.write_text("not a variable line\n")
    p = subprocess.run([sys.executable, "-m", "appliance.config.envfile", str(envf), "true"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 2 and "line 1: expected NAME=value" in p.stderr


@requires_ansible
@pytest.mark.parametrize("address, refused", [("203.0.113.5", True), ("mda-01.example.com", True),
                                              ("10.0.0.11", False), ("172.20.1.2", False),
                                              ("192.168.4.4", False), ("fd00:1::5", False)])
def test_the_cluster_play_refuses_a_public_private_address(address, refused):
    """Only the play's checks run (tag always), against this machine."""
    env = {**os.environ, "ANSIBLE_GATHERING": "explicit"}
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "inventory.cluster.example.yml", "site.yml", "--tags",
         "always", "-e", "ansible_connection=local", "-e", f"appliance_private_address={address}"],
        cwd=ANSIBLE_DIR, capture_output=True, text=True, timeout=300, env=env)
    out = result.stdout + result.stderr
    if refused:
        assert result.returncode != 0 and "not an address of a private network" in out, out[-2000:]
    else:
        assert result.returncode == 0, out[-2000:]
