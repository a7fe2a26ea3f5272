"""``python -m appliance.config.envfile FILE COMMAND [ARG...]``: runs COMMAND with the
variables of FILE added to its environment.

FILE is the appliance's secrets file as the Ansible role writes it for
systemd's ``EnvironmentFile=`` (``NAME="json string"`` lines, ``#`` comments),
readable by root and the service's group only. Deploy steps that need the
secrets (``check-config`` while the configuration is validated, ``migrate``)
run through this, so the secrets never appear on a command line or in a
process's arguments (``ps``) as Ansible's ``environment:`` would put them.
"""
from __future__ import annotations

import json
import os
import re
import sys

_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def parse(text: str) -> dict[str, str]:
    """The variables of an environment file; a line that is neither a
    comment nor ``NAME=value`` is an error naming its number."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = _LINE.match(s)
        if not m:
            raise ValueError(f"line {n}: expected NAME=value")
        name, value = m.groups()
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(f"line {n}: {name}'s value is not a quoted string") from None
        out[name] = str(value)
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m appliance.config.envfile FILE COMMAND [ARG...]", file=sys.stderr)
        return 2
    path, cmd = argv[0], argv[1:]
    try:
        with open(path, encoding="utf-8") as f:
            env = parse(f.read())
    except (OSError, ValueError) as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 2
    os.execvpe(cmd[0], cmd, {**os.environ, **env})
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
