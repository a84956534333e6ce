"""The command line end to end on tiny settings: train -> cache -> probe, plugins, one-line errors."""

import json
import subprocess
import sys

import pytest

from probekit.cli import run


def cli(capsys, *args):
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    assert run(["train", "--task", "lds", "--out", str(out), "--steps", "40", "--layers", "2", "--width", "16",
                "--heads", "2", "-p", "dim=3", "-p", "length=8", "--batch-size", "32", "--json"]) == 0
    return out


def test_train_cache_probe(tmp_path, capsys, trained):
    store = tmp_path / "run.zarr"
    code, out, _ = cli(capsys, "cache", "--model", f"toy:{trained}", "--out", str(store), "-n", "60",
                       "--random-init", "--json")
    assert code == 0, out
    summary = json.loads(out)
    assert summary["dims"]["sample"] == 60 and summary["random_init"] is True and summary["dims"]["pos"] == 8

    code, out, err = cli(capsys, "probe", str(store), "--hypothesis", "rls", "--folds", "3")
    assert code == 0, err
    assert "rls_pred" in out and "L2" in out and "random-init" in out and "±0." in out
    for name in ("run.rls.png", "run.rls.pos.png"):
        png = tmp_path / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code, out, _ = cli(capsys, "probe", str(store), "-H", "rls", "--folds", "3", "-t", "rls_pred",
                       "-o", "neumann_orders=1", "--json")
    assert code == 0
    payload = json.loads(out)
    conds = {r["condition"] for r in payload["records"]}
    assert conds == {"model", "shuffled", "random_init"}
    assert {r["target"] for r in payload["records"]} == {"rls_pred"}
    assert len(payload["records"]) == 3 * 3  # conditions x layers (0..2)


def test_plugins_command(capsys):
    code, out, _ = cli(capsys, "plugins", "--json")
    assert code == 0
    rows = {r["plugin"]: r for r in json.loads(out)}
    assert rows["rls"]["hypotheses"] == ["rls"] and rows["rls"]["tasks"] == ["lds"]
    code, out, _ = cli(capsys, "plugins")
    assert code == 0 and "rls" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--task", "lsd", "--out", "x"], "error: unknown task 'lsd'; choose from: affine-prompts, coin, "),
        (["train", "--model", "big", "--out", "x"], "error: unknown model preset 'big'; choose from: attn-only, linear, lsa, lsa-recurrent, softmax"),
        (["train", "-p", "dimm=3", "--out", "x"], "error: unknown parameter 'dimm'; choose from: clip, dim, length, sigma"),
        (["cache", "--model", "gpt:foo", "--out", "x.zarr"], "error: unknown model scheme 'gpt'; choose from: hf, nnsight, tlens, torch, toy"),
        (["cache", "--model", "toy", "--out", "x.zarr"], "error: model spec 'toy' must look like <scheme>:<name or path>"),
        (["cache", "--model", "toy:/nonexistent/ckpt", "--out", "x.zarr"], "error: /nonexistent/ckpt is not a probekit toy checkpoint"),
        (["probe", "/nonexistent.zarr", "-H", "rls"], "error: no store at /nonexistent.zarr"),
    ],
)
def test_errors_are_one_line(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, *args)
    assert code in (1, 2)
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unknown_hypothesis_target_and_option(capsys, tmp_path, trained):
    store = tmp_path / "s.zarr"
    assert run(["cache", "--model", f"toy:{trained}", "--out", str(store), "-n", "30", "--json"]) == 0
    capsys.readouterr()
    for args, msg in [
        (["-H", "rsl"], "error: unknown hypothesis 'rsl'; choose from: bayes, gd, gdpp, induction, pgd, rls"),
        (["-H", "rls", "-t", "nope"], "error: unknown target 'nope'; choose from: current_state, neumann_1"),
        (["-H", "rls", "-o", "lamda=1"], "error: hypothesis 'rls' has no option 'lamda'; choose from: lam, neumann_orders, min_pos"),
        (["-H", "rls", "--site", "mlp_out"], "error: unknown site 'mlp_out'; choose from: resid"),
    ]:
        code, _, err = cli(capsys, "probe", str(store), *args)
        assert code == 2 and err.startswith(msg), err


def test_debug_shows_the_traceback():
    res = subprocess.run([sys.executable, "-m", "probekit", "--debug", "probe", "/nonexistent.zarr", "-H", "rls"],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "Traceback" in res.stderr and "StoreError" in res.stderr
    res = subprocess.run([sys.executable, "-m", "probekit", "probe", "/nonexistent.zarr", "-H", "rls"],
                         capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr.strip() == "error: no store at /nonexistent.zarr"


@pytest.mark.parametrize("args, message", [
    (["--dtype", "bfloat16"], "error: unknown dtype 'bfloat16'; choose from: float16, float32"),
    (["-n", "0"], "error: Invalid value for '--n-samples' / '-n': "),  # min=1, checked as the line is read
])
def test_cache_option_errors_are_one_line(capsys, tmp_path, trained, args, message):
    code, _, err = cli(capsys, "cache", "--model", f"toy:{trained}", "--out", str(tmp_path / "s.zarr"), *args)
    assert code == 2 and "\n" not in err.strip() and err.startswith(message)


@pytest.mark.parametrize("args, message", [
    (["--folds", "2"], "folds must be >= 3, got 2"),
    (["--n-boot", "-5"], "Invalid value for '--n-boot': "),
])
def test_probe_option_errors_are_one_line(capsys, tmp_path, args, message):
    code, _, err = cli(capsys, "probe", str(tmp_path / "none.zarr"), "-H", "rls", *args)
    assert code == 2 and "\n" not in err.strip() and err.strip().startswith(f"error: {message}")


def test_plugins_piped_to_a_file_keeps_every_name_whole(tmp_path):
    """Off a terminal the table is not wrapped to 80 columns: no name is broken mid-word."""
    out = tmp_path / "plugins.txt"
    env = {k: v for k, v in __import__("os").environ.items() if k != "COLUMNS"}
    with open(out, "w") as f:
        subprocess.run([sys.executable, "-m", "probekit", "plugins"], stdout=f, check=True, env=env)
    text = out.read_text()
    listed = json.loads(subprocess.run([sys.executable, "-m", "probekit", "plugins", "--json"], capture_output=True,
                                       text=True, check=True, env=env).stdout)
    names = {n for r in listed for n in (r["plugin"], *r["tasks"], *r["models"], *r["hypotheses"])}
    words = set(text.replace(",", " ").replace("│", " ").split())
    assert names <= words, sorted(names - words)
