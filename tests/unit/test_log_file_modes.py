"""The log of ``appliance up`` is private: data_dir/log 0700, appliance.log
0600 (and every rotated file), whatever the umask."""
from __future__ import annotations

import logging
import os

from appliance.cli import supervisor


def test_the_log_folder_and_files_are_private_whatever_the_umask(tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor, "LOG_BYTES", 200)
    old = os.umask(0o022)
    try:
        path = supervisor.open_log_file({"data_dir": str(tmp_path / "var")})
        try:
            for i in range(20):
                supervisor._to_file(f"line {i} " + "x" * 40)
        finally:
            logging.getLogger().removeHandler(supervisor._file_log)
            supervisor._file_log.close()
            supervisor._file_log = None
    finally:
        os.umask(old)
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    files = sorted(path.parent.iterdir())
    assert len(files) > 1, files  # rotated
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {"0o600"}
