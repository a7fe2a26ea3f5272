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


def test_the_optional_tls_front_renders_a_self_signed_https_site(tmp_path):
    """The tls_front role (off by default) run for real except the package
    install and the service: a self-signed certificate and an nginx site that
    forwards to the appliance on loopback with the client's address and scheme."""
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "tasks": [{"ansible.builtin.import_role": {"name": "tls_front",
                                                        "tasks_from": "assert"}},
                       {"ansible.builtin.import_role": {"name": "tls_front",
                                                        "tasks_from": "configure"}}]}]
    extra = {"tls_front_enabled": True, "tls_front_manage_services": False,
             "tls_front_server_name": "appliance.example.lan",
             "tls_front_cert_dir": str(tmp_path / "ssl"),
             "tls_front_site_file": str(tmp_path / "sites-available-appliance.conf"),
             "tls_front_site_link": str(tmp_path / "sites-enabled-appliance.conf"),
             "tls_front_upstream": "127.0.0.1:8000"}
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    (tmp_path / "extra.yml").write_text(yaml.safe_dump(extra))
    p = subprocess.run([_ansible_playbook(), "-i", "localhost,", "-e", f"@{tmp_path / 'extra.yml'}",
                        str(tmp_path / "play.yml")], capture_output=True, text=True, timeout=180,
                       cwd=tmp_path,
                       env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
                            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"), "HOME": str(tmp_path),
                            "ANSIBLE_ROLES_PATH": str(ROOT / "ansible/roles"),
                            "ANSIBLE_NOCOLOR": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    site = (tmp_path / "sites-enabled-appliance.conf").read_text()
    assert "listen 443 ssl" in site and "return 301 https://" in site
    assert f"ssl_certificate {tmp_path / 'ssl' / 'appliance.crt'};" in site
    assert "proxy_pass http://127.0.0.1:8000;" in site
    assert "X-Forwarded-Proto $scheme" in site and "X-Forwarded-For $remote_addr" in site
    key = tmp_path / "ssl" / "appliance.key"
    assert key.exists() and (key.stat().st_mode & 0o077) == 0
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((tmp_path / "ssl" / "appliance.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "appliance.example.lan" in names.get_values_for_type(x509.DNSName)


def test_the_tls_front_is_off_by_default_and_the_appliance_follows_it():
    site = yaml.safe_load((ROOT / "ansible/site.yml").read_text())
    (front,) = [r for r in site[0]["roles"] if r["role"] == "tls_front"]
    assert front["when"] == "tls_front_enabled | bool"
    wiring = yaml.safe_load((ROOT / "ansible/group_vars/all.yml").read_text())
    assert wiring["tls_front_enabled"] is False
    assert "tls_front_enabled" in wiring["appliance_server_secure_cookies"]
    tpl = (ROLE / "templates/appliance.yaml.j2").read_text()
    assert "secure_cookies:" in tpl and "trusted_proxy_hops:" in tpl
