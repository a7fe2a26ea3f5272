"""The wheel serves the console: ``pip wheel .`` from the checkout, installed in
an empty virtualenv outside the checkout, starts ``appliance serve`` against
real PostgreSQL and Redis and answers ``/dashboard`` with the page and its
static assets, found inside the installed package (no APPLIANCE_HOME, no
source tree on the path).

The appliance's dependencies are not downloaded again: the fresh virtualenv
sees the checkout virtualenv's site-packages through a ``.pth`` line (a plain
path: the checkout's own editable install there is not activated by it), and
the wheel itself is installed with ``--no-deps``."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import requests

from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]

# Files the console needs, as they must appear in the wheel.
PACKAGED = (
    "appliance/templates/base.html",
    "appliance/templates/dashboard.html",
    "appliance/templates/partials/dash_poller.html",
    "appliance/static/css/app.css",
    "appliance/static/js/chart.js",
    "appliance/static/vendor/htmx/htmx.min.js",
    "appliance/store/migrations/0001_init.sql",
    "appliance/config/appliance.schema.json",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                        str(ROOT)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    wheels = list(dist.glob("market_data_appliance-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_the_templates_static_assets_and_migrations(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in PACKAGED if n not in names]
    assert not missing, f"{wheel.name} lacks {missing}"
    assert not any(n.startswith(("tests/", "bench/", "templates/", "static/")) for n in names)


def _fresh_venv(where: Path, wheel: Path) -> Path:
    """A virtualenv with the wheel alone installed; the checkout venv's
    packages (the dependencies) reachable through a .pth path line."""
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    p = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
                        "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_checkout_deps.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    return venv


def test_the_installed_wheel_serves_the_dashboard_outside_the_checkout(
        wheel, config_factory, procs, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    venv = _fresh_venv(outside, wheel)
    env = {k: v for k, v in os.environ.items()
           if k not in ("APPLIANCE_HOME", "PYTHONPATH", "APPLIANCE_CONFIG")}
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import appliance, appliance.web as w; "
                            "print(appliance.__file__); print(w._asset_dir('templates'))"],
                           cwd=outside, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr[-3000:]
    package_file, templates = where.stdout.split()
    assert Path(package_file).is_relative_to(venv), f"appliance imported from {package_file}"
    assert Path(templates).is_relative_to(venv), f"templates found at {templates}"

    port = free_port()
    cfg = config_factory(server={"bind": f"127.0.0.1:{port}", "workers": 1})
    log = open(outside / "serve.log", "w+")
    p = subprocess.Popen([str(venv / "bin" / "appliance"), "--config", str(cfg), "serve"],
                         cwd=outside, env=env, stdout=log, stderr=subprocess.STDOUT)
    procs.append(p)

    def answering():
        if p.poll() is not None:
            return True
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code > 0
        except requests.RequestException:
            return False

    wait_until(answering, 90, "the installed appliance to answer")
    assert p.poll() is None, (outside / "serve.log").read_text()[-3000:]
    r = requests.get(f"http://127.0.0.1:{port}/dashboard", timeout=30)
    assert r.status_code == 200, r.text[:2000]
    assert "<h1>Dashboard</h1>" in r.text and 'id="dash-cards"' in r.text, r.text[:2000]
    for asset in ("/static/css/app.css", "/static/vendor/htmx/htmx.min.js"):
        assert f'href="{asset}"' in r.text or f'src="{asset}"' in r.text, asset
        a = requests.get(f"http://127.0.0.1:{port}{asset}", timeout=30)
        assert a.status_code == 200 and len(a.content) > 100, f"{asset}: {a.status_code}"
    a = requests.get(f"http://127.0.0.1:{port}/static/css/app.css", timeout=30)
    assert a.content == (ROOT / "static/css/app.css").read_bytes()
    p.terminate()
    p.wait(timeout=30)
