"""The bad-input battery's harness: run one command in-process on a work directory that holds
things a user could lose, and check that it failed cleanly.

A clean failure: the expected exit code (2 usage, 1 failure), exactly one line on stderr and
it starts with ``error:`` (besides one-line ``warning:`` lines, e.g. a plugin that failed to
import), no traceback, and every file and directory that was there before
is still there, byte for byte, with nothing added.
"""

from __future__ import annotations

import shutil

import pytest

from support.battery import assert_clean_failure


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
