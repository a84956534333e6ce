"""Von Oswald et al.'s construction: linear self-attention weights that run GD / GD++ exactly.

For tokens ``e = (x, y)`` of size d + 1 and the model of
:mod:`probekit.models.toy.lsa` (which already divides by the number of context tokens N),
layer k uses

    W_Q = W_K = [[I_d, 0], [0, 0]]        (attention score x_i^T x_j)
    W_V       = [[-gamma_k N I_d, 0], [0, -1]]
    W_O       = diag(1, ..., 1, eta_k)

so that e_j gains ``(-gamma_k sum_i x_i x_i^T x_j, -(eta_k / N) sum_i y_i x_i^T x_j)``:
one step of gradient descent on the y-slots (and GD++'s curvature correction of the
x-slots when gamma_k != 0). The model's output is minus the query's y-slot.
"""

from __future__ import annotations


def gd_layer_weights(d: int, n_ctx: int, eta: float, gamma: float = 0.0, dtype=None) -> dict:
    """The four weight matrices of one LSA layer that does one GD (++) step."""
    import torch

    D = d + 1
    qk = torch.zeros(D, D, dtype=dtype)
    qk[:d, :d] = torch.eye(d)
    v = torch.zeros(D, D, dtype=dtype)
    v[:d, :d] = -gamma * n_ctx * torch.eye(d, dtype=dtype)
    v[d, d] = -1.0
    o = torch.eye(D, dtype=dtype)
    o[d, d] = eta
    return {"W_q.weight": qk, "W_k.weight": qk.clone(), "W_v.weight": v, "W_o.weight": o}


def gd_model(d: int, n_ctx: int, etas, gammas=None, *, dtype=None):
    """A stacked :class:`~probekit.models.toy.lsa.LSATransformer` whose layer k does GD (++) step k."""
    import torch

    from probekit import ToyConfig, build_model

    K = len(etas)
    cfg = ToyConfig(d_in=d + 1, d_out=1, d_model=d + 1, n_heads=1, n_layers=K, arch="lsa", attention="linear",
                    mlp=False, layernorm=False, positional=False, max_len=n_ctx + 1)
    dtype = dtype or torch.float32
    model = build_model(cfg).to(dtype)
    state = {}
    for k, eta in enumerate(etas):
        layer = gd_layer_weights(d, n_ctx, float(eta), float(gammas[k]) if gammas is not None else 0.0, dtype)
        state.update({f"layers.{k}.{name}": w for name, w in layer.items()})
    model.load_state_dict(state, strict=True)
    return model.eval()
