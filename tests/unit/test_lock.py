"""What is installed is pinned: requirements.lock (pinned, with hashes) covers
every dependency of pyproject.toml, each of them has an upper bound, and the
Makefile, CI and the Ansible role install from the lock."""
from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return [Requirement(r) for r in reqs]


# a pin line: name==version, an optional environment marker, a continuation
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)(?: ; ([^\\\n]+?))? \\$")
HASH = re.compile(r"^\s+--hash=sha256:([0-9a-f]{64})")


def _locked(here_only: bool = False) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every requirement in the lock (with
    ``here_only``, of those whose marker holds for this interpreter)."""
    out: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if m := PIN.match(line):
            current = None
            if here_only and m.group(3) and not Marker(m.group(3)).evaluate():
                continue
            current = canonicalize_name(m.group(1))
            out[current] = (m.group(2), [])
        elif (h := HASH.match(line)) and current:
            out[current][1].append(h.group(1))
        else:
            current = None
    return out


def test_every_line_of_the_lock_is_an_exact_pin_with_hashes():
    locked = _locked()
    assert len(locked) > 50
    without = sorted(n for n, (_, hashes) in locked.items() if not hashes)
    assert not without, f"pinned without a hash in requirements.lock: {without}"
    # nothing but pins, their hashes and comments (no index URL of one machine)
    for line in LOCK.read_text().splitlines():
        s = line.strip()
        assert (not s or s.startswith("#") or s.startswith("--hash=sha256:")
                or PIN.match(s)), f"unexpected lock line: {line!r}"


def test_every_declared_dependency_has_an_upper_bound_and_its_pin_satisfies_it():
    locked = _locked()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), \
            f"{req} in pyproject.toml has no upper bound"
        assert name in locked, f"{req.name} is in pyproject.toml but not in requirements.lock (make lock)"
        version = locked[name][0]
        assert req.specifier.contains(version, prereleases=True), \
            f"requirements.lock pins {req.name}=={version}, outside {req} (make lock)"


def test_the_installed_versions_are_the_locked_ones():
    """`make test` installed from the lock: what runs the tests is what is pinned."""
    wrong = []
    for name, (version, _) in _locked(here_only=True).items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name} (not installed)")
            continue
        if canonicalize_name(have) != canonicalize_name(version) and have != version:
            wrong.append(f"{name} {have} (locked {version})")
    assert not wrong, "installed differs from requirements.lock (make install-test): " + ", ".join(wrong)


def _recipe(mk: str, target: str) -> str:
    recipe = mk[mk.index(target):]
    return recipe[:recipe.index("\n\n")]


def test_make_installs_from_the_lock_and_ci_goes_through_make():
    """`make up` installs pyproject's dependencies at the lock's pins and
    hashes (the lock as constraints), the tests the whole lock."""
    mk = (ROOT / "Makefile").read_text()
    recipe = _recipe(mk, "$(VENV)/.installed:")
    assert 'install "pip==$(PIP_VERSION)"' in recipe
    assert '["project"]["dependencies"]' in recipe
    assert "install --require-hashes -c $(LOCK) -r $(VENV)/runtime-deps.txt" in recipe
    assert "install --no-deps -e ." in recipe
    assert "install --require-hashes -r $(LOCK)" in _recipe(mk, "$(VENV)/.installed-test:")
    assert re.search(r"^LOCK\s*=\s*requirements\.lock$", mk, re.M)
    assert re.search(r"^lock:", mk, re.M), "no `make lock` target"
    # no other pip install of a project requirement
    assert not re.search(r"pip\S*\s.*install\s+(-e\s+)?'?\.\[", mk)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "pip install" not in ci


def test_the_ansible_role_installs_the_lock_with_hashes_then_the_package_alone():
    tasks = yaml.safe_load((ROOT / "ansible/roles/appliance/tasks/install.yml").read_text())
    pips = [t for t in tasks if "/bin/pip'" in str(t.get("ansible.builtin.command", {}).get("argv", ""))]
    argvs = [t["ansible.builtin.command"]["argv"] for t in pips]
    assert len(argvs) == 3, argvs
    assert "'pip==' ~ appliance_pip_version" in argvs[0]
    assert "'--require-hashes'" in argvs[1] and "'-c', appliance_source_dir ~ '/requirements.lock'" \
        in argvs[1] and "/runtime-deps.txt'" in argvs[1]
    assert "'--no-deps'" in argvs[2]
    defaults = yaml.safe_load((ROOT / "ansible/roles/appliance/defaults/main.yml").read_text())
    # a new lock reinstalls
    assert "requirements.lock" in defaults["appliance_source_fingerprint_paths"]


def test_one_pip_version_for_make_the_role_and_the_image():
    """The pip that reads a constraints file's hashes, pinned alike in the
    three installs that use the lock as constraints."""
    mk = re.search(r"^PIP_VERSION\s*=\s*(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    image = re.search(r"^ARG PIP_VERSION=(\S+)$", (ROOT / "Containerfile").read_text(), re.M)
    role = yaml.safe_load((ROOT / "ansible/roles/appliance/defaults/main.yml").read_text())
    assert mk and image
    assert mk.group(1) == image.group(1) == str(role["appliance_pip_version"])
