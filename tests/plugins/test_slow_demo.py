"""Full-size reproduction of the demo's acceptance numbers (about 3-4 minutes on 2 CPU cores).

Run with: bash scripts/test.sh -m slow
"""

import pytest

from probekit.cli import run


@pytest.mark.slow
def test_demo_reaches_the_published_shape(tmp_path, capsys):
    from probekit.store.zarr_store import Store

    assert run(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "rls_pred at the last layer" in out
    store = Store.open(tmp_path / "demo" / "demo.zarr")
    res = store.dataset(store.results("rls")[-1])
    r2 = res.r2.sel(site="resid", target="rls_pred")
    last = int(res.layer.values[-1])
    model, shuffled, rand = (float(r2.sel(condition=c, layer=last)) for c in ("model", "shuffled", "random_init"))
    print(f"rls_pred R² at L{last}: model {model:.3f}, shuffled {shuffled:.3f}, random init {rand:.3f}")
    assert model >= 0.9
    assert model - shuffled >= 0.8
    assert model - rand >= 0.5
    # the RLS prediction is built up with depth: embeddings hold none of it
    assert float(r2.sel(condition="model", layer=0)) < 0.1
    assert (tmp_path / "demo" / "demo.rls.png").is_file()
