"""The project's git repository as the flows see it: one helper for every git query."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_output(root: Path, *args: str) -> str:
    """`git ARGS` in `root`, stripped stdout; "" when git is missing or the command fails
    (no repository, no commit, no remote)."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""
