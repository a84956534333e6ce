"""The layout's rules, checked by reading the source (AST, no imports; the last one runs a subprocess).

* plugins and examples use only the public API: ``probekit`` (and ``probekit.testing`` in tests);
* the docs' code blocks show only public imports;
* no private name (``_x``) crosses modules inside ``probekit/``;
* only ``report/`` and ``cli/`` render (import matplotlib or rich);
* no module over 500 lines, no function over 80;
* ``import probekit`` loads none of torch, zarr, scikit-learn, xarray, matplotlib.

Each rule is one test whose message lists every violation as ``file:line``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "probekit"
SKIP_DIRS = {"build", "dist", "__pycache__", ".venv", "site"}

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
RENDERERS = ("matplotlib", "rich")
RENDERING_ALLOWED = ("report", "cli")  # folders of probekit/ that may import RENDERERS
HEAVY = ("torch", "zarr", "sklearn", "xarray", "matplotlib")


def python_files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py")
                  if not SKIP_DIRS & set(p.relative_to(ROOT).parts) and not any(
                      part.endswith(".egg-info") for part in p.parts))


@lru_cache(maxsize=None)
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def where(path: Path, node: ast.AST | int) -> str:
    line = node if isinstance(node, int) else node.lineno
    return f"{path.relative_to(ROOT)}:{line}"


def module_name(path: Path) -> str:
    """``probekit/store/zarr_store.py`` -> ``probekit.store.zarr_store``; a package -> its name."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def absolute(path: Path, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` names, with relative imports resolved against ``path``."""
    if not node.level:
        return node.module or ""
    base = package_of(path).split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path):
    """``(line, module, names)`` for every import in ``path``, nested ones included; ``names`` is
    None for ``import module``."""
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, absolute(path, node), [a.name for a in node.names]


def is_test_file(path: Path) -> bool:
    return "tests" in path.relative_to(ROOT).parts or path.name.startswith("test_") or path.name == "conftest.py"


def report(rule: str, violations: list[str]) -> str:
    return f"{rule} ({len(violations)} violations):\n  " + "\n  ".join(violations)


# ---------------------------------------------------------------------------
# (a) plugins and examples import only the public API
# ---------------------------------------------------------------------------


def public_import_violations(path: Path, lines) -> list[str]:
    allowed = {"probekit"} | ({"probekit.testing"} if is_test_file(path) else set())
    return [f"{where(path, line)} imports {module}" for line, module, _ in lines
            if module.startswith("probekit.") and module not in allowed]


def test_plugins_and_examples_import_only_the_public_api():
    violations = []
    for path in python_files(ROOT / "plugins", ROOT / "docs" / "examples"):
        violations += public_import_violations(path, imports(path))
    assert not violations, report("plugins and docs/examples may import only `probekit` "
                                  "(and `probekit.testing` in tests)", violations)


def test_docs_code_blocks_show_only_public_imports():
    violations = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            first_line = text.count("\n", 0, m.start(1)) + 1
            block = m.group(1)
            tests = re.match(r"# (\S*test\S*\.py)\n", block) is not None
            try:
                tree = ast.parse(block)
            except SyntaxError:  # a fragment with `...` in it: check its import lines alone
                tree = ast.parse("\n".join(line if line.lstrip().startswith(("from ", "import ")) else ""
                                           for line in block.splitlines()))
            for node in ast.walk(tree):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                allowed = {"probekit", "probekit.testing"} if tests else {"probekit"}
                violations += [f"{page.relative_to(ROOT)}:{first_line + node.lineno - 1} imports {mod}"
                               for mod in modules if mod.startswith("probekit.") and mod not in allowed]
    assert not violations, report("documentation code imports only `probekit` (and `probekit.testing` "
                                  "in a test file)", violations)


# ---------------------------------------------------------------------------
# (b) no private name crosses modules
# ---------------------------------------------------------------------------


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_part(module: str, importer_package: str) -> str | None:
    """The first private component of ``module`` that lies outside the importer's own package
    (``probekit.cli._common`` is shared by the modules of ``probekit.cli``, nobody else)."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if private(part):
            owner = ".".join(parts[:i])
            if importer_package != owner and not importer_package.startswith(owner + "."):
                return part
    return None


def is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_import_violations(path: Path) -> list[str]:
    violations, modules = [], {}  # modules: local name -> probekit module it is bound to
    me, pkg = module_name(path), package_of(path)
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.ImportFrom):
            source = absolute(path, node)
            if not source.startswith("probekit"):
                continue
            bad = private_part(source, pkg)
            if bad:
                violations.append(f"{where(path, node)} imports from the private module {source}")
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if is_module(target):
                    modules[alias.asname or alias.name] = target
                    bad = private_part(target, pkg)
                    if bad:
                        violations.append(f"{where(path, node)} imports the private module {target}")
                elif private(alias.name) and source != me:
                    violations.append(f"{where(path, node)} imports {alias.name} from {source}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("probekit") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(parse(path)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and private(node.attr)
                and node.value.id in modules and modules[node.value.id] != me):
            violations.append(f"{where(path, node)} uses {modules[node.value.id]}.{node.attr}")
    return violations


def test_no_private_name_crosses_modules():
    violations = []
    for path in python_files(PACKAGE):
        violations += private_import_violations(path)
    assert not violations, report("a name starting with `_` is private to its module: give it a public "
                                  "name where another module needs it", violations)


# ---------------------------------------------------------------------------
# (c) only report/ and cli/ render
# ---------------------------------------------------------------------------


def test_only_report_and_cli_import_matplotlib_or_rich():
    violations = []
    for path in python_files(PACKAGE):
        rel = path.relative_to(PACKAGE).parts
        if rel[0] in RENDERING_ALLOWED:
            continue
        violations += [f"{where(path, line)} imports {module}" for line, module, _ in imports(path)
                       if module.split(".")[0] in RENDERERS]
    assert not violations, report("compute returns data; rendering (matplotlib, rich) lives in "
                                  "probekit/report/ (and the CLI)", violations)


# ---------------------------------------------------------------------------
# (d), (e) small rooms
# ---------------------------------------------------------------------------


def test_no_module_over_500_lines():
    violations = []
    for path in python_files(PACKAGE, ROOT / "plugins"):
        n = len(path.read_text().splitlines())
        if n > MAX_MODULE_LINES:
            violations.append(f"{where(path, 1)} has {n} lines")
    assert not violations, report(f"no module over {MAX_MODULE_LINES} lines", violations)


def test_no_function_over_80_lines():
    violations = []
    for path in python_files(PACKAGE, ROOT / "plugins"):
        for node in ast.walk(parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    violations.append(f"{where(path, node)} {node.name} has {n} lines")
    assert not violations, report(f"no function over {MAX_FUNCTION_LINES} lines", violations)


# ---------------------------------------------------------------------------
# (f) cheap to import
# ---------------------------------------------------------------------------


def test_import_probekit_loads_nothing_heavy():
    code = "import sys, probekit; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    loaded = sorted({m.split(".")[0] for m in out.split()} & set(HEAVY))
    assert not loaded, f"`import probekit` loads {', '.join(loaded)}; import them inside the functions that need them"
