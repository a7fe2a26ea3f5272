"""What the operator's environment file says that the config does not use:
a variable of ``appliance.env`` that no ``${VAR}`` of ``appliance.yaml``
names (most often a misspelt one, whose setting then silently takes its
default), and the secrets a reload leaves empty."""
from __future__ import annotations

import difflib
import os
from typing import Any

from appliance.config.env import ENV_FILE_NAME, env_file_path, read_env_file
from appliance.config.loader import variable_values

#: Variables the appliance reads itself, not through a ``${VAR}`` of the file.
READ_DIRECTLY = frozenset({"APPLIANCE_CONFIG", "APPLIANCE_ENV_FILE", "APPLIANCE_HOME",
                           "APPLIANCE_JOIN", "APPLIANCE_LOG_LEVEL", "APPLIANCE_PG_BIN_DIR"})

#: What an empty secret means, for the reload's warning.
_EMPTY_MEANS = {
    "server.admin_token": "admin calls and the console's buttons are refused",
    "server.read_token": "reads need no credential unless server.login_for_read is set",
    "server.secret_key": "console logins end with every restart",
    "server.metrics_token": "/metrics asks for a read credential, as the API does",
}


def unused(text: str, config_path: str | os.PathLike[str]) -> list[str]:
    """Warnings for the variables of the environment file beside
    ``config_path`` that ``text`` does not use: those close to a name it uses
    (``APPLIANCE_ADMN_TOKEN``), and any other ``APPLIANCE_…`` one. Other
    names (a proxy, a library's setting) are left alone."""
    path = env_file_path(config_path)
    try:
        in_file = read_env_file(path)
    except Exception:  # noqa: BLE001 - an unreadable file is reported where it is read
        return []
    used = set(variable_values(text, {}))
    known = used | {f"{n}_FILE" for n in used} | READ_DIRECTLY
    out = []
    for name in sorted(set(in_file) - known):
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.85)
        if close:
            out.append(f"warning: {path.name} sets {name}, which appliance.yaml does not use: "
                       f"did you mean {close[0]}? (a misspelt name leaves its setting at the "
                       f"default)")
        elif name.startswith("APPLIANCE_"):
            out.append(f"warning: {path.name} sets {name}, which appliance.yaml does not use "
                       f"and the appliance does not read")
    return out


def emptied(diff: dict[str, Any]) -> list[str]:
    """Warnings for the secrets ``diff`` (``config.diff``) empties: a variable
    removed or misspelt in the environment file turns a token off."""
    out = []
    for key, change in diff.get("changed", {}).items():
        if change.get("secret") and change.get("old") and not change.get("new"):
            means = _EMPTY_MEANS.get(key)
            out.append(f"warning: {key} is now empty (its variable is unset or empty in "
                       f"{ENV_FILE_NAME})" + (f": {means}" if means else ""))
    return out
