"""The bad-input battery's checks: run one command in-process and check that it failed cleanly
(see tests/cli/bad_inputs/conftest.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from probekit.cli import run


def snapshot(root: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file (``"dir"`` for directories) under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def assert_clean_failure(capsys, argv: list[str], code: int, root: Path, match: str | None = None) -> str:
    """Run ``probekit ARGV``; assert it failed cleanly with ``code`` and left ``root`` untouched.
    Returns the error line."""
    capsys.readouterr()
    before = snapshot(root)
    got = run([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert "Traceback" not in err, err
    assert got == code, f"exit {got}, expected {code}; stderr: {err!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr is not one error line: {err!r}"
    after = snapshot(root)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), f"added {added[:5]}, removed {removed[:5]}, changed {changed[:5]}"
    if match is not None:
        assert match in lines[0], f"{match!r} not in {lines[0]!r}"
    return lines[0]
