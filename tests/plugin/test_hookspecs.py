"""Every hook in the contract is documented: its docstring says when it runs, its params and its return."""

import inspect

from probekit.plugin import hookspecs
def test_every_hookspec_is_documented():
    specs = [(n, f) for n, f in vars(hookspecs).items() if n.startswith("probekit_") and callable(f)]
    assert len(specs) >= 3
    for name, func in specs:
        doc = inspect.getdoc(func) or ""
        assert "Called" in doc, f"{name}: say when it is called"
        for param in inspect.signature(func).parameters:
            assert f":param {param}:" in doc, f"{name}: document parameter {param!r}"
        assert ":returns:" in doc, f"{name}: document the return value"
