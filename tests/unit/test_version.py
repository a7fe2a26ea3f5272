"""``appliance --version`` tells two checkouts of one version apart: the
commit, read from .git itself (a branch, packed refs, a detached HEAD, a
worktree), nothing for a package without a source tree."""
from __future__ import annotations

import subprocess

from click.testing import CliRunner

from appliance import __version__
from appliance.cli.main import main
from appliance.core.version import SOURCE, source_commit

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_a_branch_a_packed_ref_a_detached_head_and_a_worktree(tmp_path):
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(SHA + "\n")
    assert source_commit(tmp_path / "repo") == SHA[:12]
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{SHA} refs/heads/main\n")
    assert source_commit(tmp_path / "repo") == SHA[:12]
    (git / "HEAD").write_text(SHA[::-1] + "\n")
    assert source_commit(tmp_path / "repo") == SHA[::-1][:12]
    # a worktree: .git is a file naming its git dir, whose refs live in the common dir
    wt = git / "worktrees" / "wt"
    wt.mkdir(parents=True)
    (wt / "HEAD").write_text("ref: refs/heads/main\n")
    (wt / "commondir").write_text("../..\n")
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / ".git").write_text(f"gitdir: {wt}\n")
    assert source_commit(tmp_path / "wt") == SHA[:12]
    assert source_commit(tmp_path / "nothing-here") is None


def test_the_version_names_this_checkouts_commit():
    out = CliRunner().invoke(main, ["--version"]).output
    assert out.startswith(f"appliance, version {__version__}")
    head = subprocess.run(["git", "-C", str(SOURCE), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode == 0:  # run from a source checkout (make test, CI's clone)
        assert f"(commit {head.stdout.strip()[:12]})" in out, out
    else:
        assert "commit" not in out, out
