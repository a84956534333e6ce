"""The docs cannot drift from the code: hooks in the plugin guide, its examples, the CLI reference, the nav.

* every hookspec has a section in docs/plugins.md and a ``@hookimpl`` example with the same
  signature (rename an argument in probekit/hookspecs.py and this fails);
* the guide's code blocks, written out as the files they name, pass their own tests;
* docs/cli.md equals what docs/gen_cli.py renders from the typer app;
* the quickstart's commands are the README's, and every page is in mkdocs.yml's nav.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from probekit.plugin import hookspecs
ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
GUIDE = DOCS / "plugins.md"


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def hookspec_signatures() -> dict[str, list[str]]:
    return {name: list(inspect.signature(func).parameters)
            for name, func in vars(hookspecs).items()
            if name.startswith("probekit_") and callable(func) and hasattr(func, "probekit_spec")}


def guide_hookimpls() -> dict[str, list[list[str]]]:
    """``{hook name: [argument names of each @hookimpl of it in the guide's python blocks]}``."""
    found: dict[str, list[list[str]]] = {}
    for block in code_blocks(GUIDE.read_text(), "python"):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.FunctionDef) and any(
                    (isinstance(d, ast.Name) and d.id == "hookimpl") or (isinstance(d, ast.Attribute) and d.attr == "hookimpl")
                    for d in node.decorator_list):
                args = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
                found.setdefault(node.name, []).append(args)
    return found


def test_hookspecs_are_found():
    assert {"probekit_register_tasks", "probekit_register_models", "probekit_register_hypotheses"} <= set(
        hookspec_signatures())


@pytest.mark.parametrize("hook", sorted(hookspec_signatures()))
def test_every_hookspec_is_in_the_guide_with_its_signature(hook):
    args = hookspec_signatures()[hook]
    text = GUIDE.read_text()
    heading = re.search(rf"^#+ `{hook}\((.*?)\)`", text, re.M)
    assert heading, f"docs/plugins.md has no section headed `{hook}(...)`"
    assert [a.strip() for a in heading.group(1).split(",") if a.strip()] == args, (
        f"docs/plugins.md heads {hook} with ({heading.group(1)}); probekit/hookspecs.py has ({', '.join(args)})")
    impls = guide_hookimpls().get(hook)
    assert impls, f"docs/plugins.md has no runnable @hookimpl example of {hook}"
    for impl_args in impls:
        assert impl_args == args, (f"docs/plugins.md implements {hook}({', '.join(impl_args)}); "
                                   f"probekit/hookspecs.py has {hook}({', '.join(args)})")


def test_the_guide_implements_no_unknown_hook():
    unknown = set(guide_hookimpls()) - set(hookspec_signatures())
    assert not unknown, f"docs/plugins.md implements hooks probekit does not have: {sorted(unknown)}"


def write_guide_files(text: str, out: Path) -> dict[str, Path]:
    """Write every code block whose first line is ``# <path>`` to ``out/<path>`` (blocks naming the same
    file are concatenated in order); returns ``{path: written file}``."""
    files: dict[str, list[str]] = {}
    for lang in ("python", "toml"):
        for block in code_blocks(text, lang):
            first, _, rest = block.partition("\n")
            m = re.fullmatch(r"# ([\w./-]+\.(?:py|toml))", first.strip())
            if m:
                files.setdefault(m.group(1), []).append(rest)
    written = {}
    for rel, parts in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(parts))
        written[rel] = path
    return written


def test_the_guides_plugin_passes_its_own_tests(tmp_path):
    files = write_guide_files(GUIDE.read_text(), tmp_path)
    assert {"my_plugin.py", "tests/test_my_plugin.py", "pyproject.toml"} <= set(files)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "4 passed" in res.stdout, res.stdout[-2000:]


def test_the_guides_plugin_registers_through_the_hooks(tmp_path):
    import importlib

    from probekit.plugin.host import PluginHost, get_plugin_manager

    write_guide_files(GUIDE.read_text(), tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("my_plugin")
        host = PluginHost(get_plugin_manager(entry_points=False, plugins=[module]))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_plugin", None)
    row = next(r for r in host.describe() if r["tasks"] == ["random-walk"])
    assert row["hypotheses"] == ["drift"] and row["models"] == ["rf"]
    assert row["hooks"] == sorted(hookspec_signatures())  # the guide's plugin implements every hook


def test_cli_reference_is_current():
    res = subprocess.run([sys.executable, str(DOCS / "gen_cli.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr + "\n(python docs/gen_cli.py regenerates docs/cli.md)"


def test_quickstart_commands_are_the_readmes():
    readme = code_blocks((ROOT / "README.md").read_text(), "bash")[0]
    quick = code_blocks((DOCS / "quickstart.md").read_text(), "bash")[0]
    commands = [line for line in readme.splitlines() if line and not line.startswith("#")]
    assert commands == ["bash scripts/setup.sh && .venv/bin/probekit demo", "bash scripts/test.sh"]
    assert [line for line in quick.splitlines() if line and not line.startswith("#")] == commands


def nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:"):]
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav, re.M)


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    pages = nav_pages()
    assert {"index.md", "quickstart.md", "concepts.md", "cli.md", "store-spec.md", "probing.md", "rls.md",
            "plugins.md"} <= set(pages)
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml lists pages that do not exist: {missing}"
    unlisted = sorted(p.name for p in DOCS.glob("*.md") if p.name not in pages)
    assert not unlisted, f"pages missing from mkdocs.yml's nav: {unlisted}"
