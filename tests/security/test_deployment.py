"""Finding 10: the Ansible deployment keeps the secrets file root:appliance
0640, confines the units' system calls and /proc, and refuses to deploy
without an admin token long enough."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "ansible/roles/appliance"


def test_units_filter_system_calls_and_hide_proc():
    common = (ROLE / "templates/_service_common.j2").read_text()
    for line in ("SystemCallFilter=@system-service", "ProtectProc=invisible", "ProcSubset=pid"):
        assert line in common.splitlines(), line
    for unit in ("appliance-web.service.j2", "appliance-worker@.service.j2",
                 "appliance-scheduler.service.j2"):
        assert "_service_common.j2" in (ROLE / "templates" / unit).read_text(), unit


def test_the_secrets_file_is_root_owned_and_group_readable():
    tasks = yaml.safe_load((ROLE / "tasks/config.yml").read_text())
    (env,) = [t for t in tasks if t.get("ansible.builtin.template", {}).get("src") ==
              "appliance.env.j2"]
    tpl = env["ansible.builtin.template"]
    assert (tpl["owner"], tpl["group"], tpl["mode"]) == \
        ("root", "{{ appliance_group }}", "0640")


def _ansible_playbook() -> str:
    exe = Path(sys.executable).parent / "ansible-playbook"
    if exe.exists():
        return str(exe)
    found = shutil.which("ansible-playbook")
    if not found:
        pytest.skip("ansible is not installed (pip install -e '.[deploy]')")
    return found


@pytest.mark.parametrize("token, ok", [("", False), ("short-token", False),
                                       ("x" * 23, False), ("x" * 24, True)])
def test_the_playbook_refuses_a_missing_or_short_admin_token(tmp_path, token, ok):
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "vars_files": [str(ROLE / "defaults/main.yml")],
             "vars": {"appliance_data_dir": "/var/lib/appliance",
                      "appliance_backup_path": "/mnt/backups"},
             "tasks": [{"ansible.builtin.import_tasks": str(ROLE / "tasks/assert.yml")}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    (tmp_path / "extra.yml").write_text(yaml.safe_dump({"appliance_admin_token": token}))
    p = subprocess.run([_ansible_playbook(), "-i", "localhost,", "-e", f"@{tmp_path / 'extra.yml'}",
                        str(tmp_path / "play.yml")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
                            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
                            "HOME": str(tmp_path), "ANSIBLE_NOCOLOR": "1"})
    assert (p.returncode == 0) == ok, p.stdout[-2000:] + p.stderr[-2000:]
    if not ok:
        assert "appliance_admin_token must be set" in p.stdout + p.stderr
        if token:
            assert token not in p.stdout + p.stderr
