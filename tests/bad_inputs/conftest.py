"""The bad-input battery's harness: run one command in-process on a work directory that holds
things a user could lose, and check that it failed cleanly.

A clean failure: the expected exit code (2 usage, 1 failure), exactly one line on stderr and
it starts with ``error:`` (besides one-line ``warning:`` lines, e.g. a plugin that failed to
import), no traceback, and every file and directory that was there before
is still there, byte for byte, with nothing added.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

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


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_checkpoint, tiny_store):
    """A working directory (also the cwd) holding what a user could lose:

    ``model/``   a probekit toy checkpoint (copy of the session's tiny one)
    ``store.zarr/`` a complete probekit store with a random-init group (copy)
    ``notes/``   a folder of notes (``notes/todo.txt``)
    ``hf/``      a HuggingFace-style model folder (``config.json``, ``model.safetensors``)
    ``report.txt`` a plain file
    """
    shutil.copytree(tiny_checkpoint, tmp_path / "model")
    shutil.copytree(tiny_store, tmp_path / "store.zarr")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("read the paper\n")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "gpt2"}\n')
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"not really weights")
    (tmp_path / "report.txt").write_text("results\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def fails(capsys, workdir):
    """``fails(code, *argv, match=None)``: the command fails cleanly and ``workdir`` is untouched."""

    def check(code: int, *argv, match: str | None = None) -> str:
        return assert_clean_failure(capsys, list(argv), code, workdir, match)

    return check
