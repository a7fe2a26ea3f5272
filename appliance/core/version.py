"""Which code runs: the package version and, in a source checkout, the commit
it is at (read from ``.git`` itself: a host may have no git), so that two
checkouts of one version tell apart (``appliance --version``, the log of
``appliance up``, a backup's manifest)."""
from __future__ import annotations

from pathlib import Path

from appliance import __version__

#: The source tree the package is in (a wheel's site-packages has no .git).
SOURCE = Path(__file__).resolve().parents[2]


def _git_dir(root: Path) -> Path | None:
    git = root / ".git"
    if git.is_file():  # a worktree: "gitdir: PATH"
        text = git.read_text(encoding="utf-8").strip()
        if not text.startswith("gitdir: "):
            return None
        git = (root / text[len("gitdir: "):]).resolve()
    return git if (git / "HEAD").is_file() else None


def source_commit(root: Path = SOURCE) -> str | None:
    """The commit (12 hex digits) the checkout at ``root`` is at, or None."""
    try:
        git = _git_dir(root)
        if git is None:
            return None
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref: "):
            return head[:12] or None  # a detached HEAD
        ref = head[len("ref: "):]
        common = Path((git / "commondir").read_text(encoding="utf-8").strip()) \
            if (git / "commondir").is_file() else None
        for base in filter(None, (git, common and (git / common).resolve())):
            if (base / ref).is_file():
                return (base / ref).read_text(encoding="utf-8").strip()[:12] or None
            if (base / "packed-refs").is_file():
                for line in (base / "packed-refs").read_text(encoding="utf-8").splitlines():
                    sha, _, name = line.partition(" ")
                    if name == ref:
                        return sha[:12]
    except OSError:
        return None
    return None


def describe() -> str:
    """``0.1.0``, or ``0.1.0 (commit 1a2b3c4d5e6f)`` in a source checkout."""
    commit = source_commit()
    return f"{__version__} (commit {commit})" if commit else __version__
