"""Named presets of the toy transformer, completed by a task's input/output sizes."""

from __future__ import annotations

from probekit.errors import UnknownNameError
from probekit.models.toy.model import ToyConfig
from probekit.tasks import ModelIO

#: preset name -> ToyConfig fields (d_in, d_out, input_kind and max_len come from the task)
PRESETS: dict[str, dict] = {
    # pre-LayerNorm softmax transformer with MLPs: the default for `lds`
    "softmax": dict(n_layers=4, d_model=64, n_heads=4, attention="softmax", mlp=True, layernorm=True),
    # linear self-attention only, no MLP or LayerNorm (von Oswald et al.)
    "linear": dict(n_layers=2, d_model=64, n_heads=4, attention="linear", mlp=False, layernorm=False),
    # softmax attention-only (induction-head experiments)
    "attn-only": dict(n_layers=2, d_model=64, n_heads=4, attention="softmax", mlp=False, layernorm=True),
    # von Oswald et al.'s linear self-attention on raw tokens, one head, K layers with their own weights
    "lsa": dict(arch="lsa", n_layers=1, n_heads=1, attention="linear", mlp=False, layernorm=False, positional=False),
    # the same with one set of weights looped over the layers (von Oswald's recurrent model)
    "lsa-recurrent": dict(arch="lsa", n_layers=2, n_heads=1, attention="linear", mlp=False, layernorm=False,
                          positional=False, shared=True),
}


def build_config(preset: str, io: ModelIO, **overrides) -> ToyConfig:
    """The :class:`ToyConfig` of ``preset`` sized for a task's ``io``; ``None`` overrides are ignored."""
    if preset not in PRESETS:
        raise UnknownNameError("model preset", preset, PRESETS)
    fields = dict(PRESETS[preset])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if fields.get("arch") == "lsa":
        fields.setdefault("d_model", io.d_in)  # the tokens are the residual stream
    fields.update(d_in=io.d_in, d_out=io.d_out, input_kind=io.kind, max_len=io.seq_len)
    return ToyConfig.from_dict(fields)
