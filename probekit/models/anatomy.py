"""Where things are in a model: one declared description per loaded adapter.

An adapter exposes ``anatomy`` (an :class:`Anatomy`); lenses read it instead of looking for
``model.cfg``, ``adapter.blocks`` or an attention module by name. The names that differ between
architecture families live in one alias map, :data:`FAMILIES` (nnsight's ``rename={...}`` is the
model): to support a new HF family, add its entry here.

* ``resid[l]``: ``(module, "pre" | "post")``: resid layer ``l`` (0 = embeddings, ``l`` = after
  block ``l``) is that module's first input (``pre``) or its main output (``post``);
* ``head_inputs[b]``: ``(module, "merged" | "split")``: where block ``b``'s per-head outputs can be
  read and replaced: the *input* of the attention output projection, heads side by side
  head-major (``merged``, ``[batch, pos, head * d_head]``), or the *output* of a hook point
  shaped ``[batch, pos, head, d_head]`` (``split``: TransformerLens's ``attn.hook_z``);
* ``blocks[b]``: the block itself (its first input and main output are resid layers b and b + 1);
* ``weights``: which reader of :mod:`probekit.lenses.heads.circuits` gets the OV/QK matrices
  (``"toy"``, ``"gpt2"``, ``"tlens"``), or None with the reason in ``weights_note``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: per architecture family (HF ``config.model_type``, or ``toy``): module paths, relative to the
#: model (``blocks``, ``embed``, ``ln_final``) or to one block (``attn``, ``mlp``: the attention and
#: MLP modules whose outputs are the ``attn_out`` / ``mlp_out`` sites; ``out_proj``, ``ln1``, ``qkv``)
FAMILIES: dict[str, dict[str, str]] = {
    "toy": {"blocks": "blocks", "attn": "attn", "out_proj": "attn.W_o", "embed": "embed", "unembed": "unembed",
            "ln_final": "ln_f", "ln1": "ln1", "qkv": "attn.W_qkv"},
    "gpt2": {"blocks": "transformer.h", "attn": "attn", "mlp": "mlp", "out_proj": "attn.c_proj",
             "embed": "transformer.wte", "ln_final": "transformer.ln_f", "ln1": "ln_1", "qkv": "attn.c_attn"},
    "llama": {"blocks": "model.layers", "attn": "self_attn", "mlp": "mlp", "out_proj": "self_attn.o_proj",
              "embed": "model.embed_tokens", "ln_final": "model.norm", "ln1": "input_layernorm"},
    "mistral": {"blocks": "model.layers", "attn": "self_attn", "mlp": "mlp", "out_proj": "self_attn.o_proj",
                "embed": "model.embed_tokens", "ln_final": "model.norm", "ln1": "input_layernorm"},
    "qwen2": {"blocks": "model.layers", "attn": "self_attn", "mlp": "mlp", "out_proj": "self_attn.o_proj",
              "embed": "model.embed_tokens", "ln_final": "model.norm", "ln1": "input_layernorm"},
    "gemma": {"blocks": "model.layers", "attn": "self_attn", "mlp": "mlp", "out_proj": "self_attn.o_proj",
              "embed": "model.embed_tokens", "ln_final": "model.norm", "ln1": "input_layernorm"},
    "gpt_neox": {"blocks": "gpt_neox.layers", "attn": "attention", "mlp": "mlp", "out_proj": "attention.dense",
                 "embed": "gpt_neox.embed_in", "ln_final": "gpt_neox.final_layer_norm", "ln1": "input_layernorm"},
    "gptj": {"blocks": "transformer.h", "attn": "attn", "mlp": "mlp", "out_proj": "attn.out_proj",
             "embed": "transformer.wte", "ln_final": "transformer.ln_f", "ln1": "ln_1"},
    "opt": {"blocks": "model.decoder.layers", "attn": "self_attn", "out_proj": "self_attn.out_proj",
            "embed": "model.decoder.embed_tokens", "ln1": "self_attn_layer_norm"},
    "falcon": {"blocks": "transformer.h", "attn": "self_attention", "mlp": "mlp",
               "out_proj": "self_attention.dense", "embed": "transformer.word_embeddings",
               "ln_final": "transformer.ln_f"},
    "phi": {"blocks": "model.layers", "attn": "self_attn", "mlp": "mlp", "out_proj": "self_attn.dense",
            "embed": "model.embed_tokens", "ln_final": "model.final_layernorm", "ln1": "input_layernorm"},
}

#: attention output projections of families not in :data:`FAMILIES`, tried in this order
OUT_PROJ_FALLBACK = ("attn.c_proj", "self_attn.o_proj", "attn.out_proj", "attention.dense", "attention.o_proj",
                     "self_attention.dense", "self_attn.out_proj", "self_attn.dense", "attn.o_proj", "attn.dense")


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Where things are in one loaded model (see the module docstring)."""

    model: object  # the torch module that runs
    family: str  # "toy", an HF model_type ("gpt2", "llama", ...), "tlens" or "torch"
    d_model: int | None = None
    n_heads: int = 0
    d_head: int = 0
    blocks: tuple = ()
    resid: tuple = ()  # ((module, "pre" | "post"), ...), one per resid layer
    head_inputs: tuple = ()  # ((module, "merged" | "split"), ...), one per block; () when unknown
    embed: object = None
    ln_final: object = None
    # tokens
    vocab: int | None = None  # token ids 0 .. vocab - 1 (None: not a token model)
    max_positions: int | None = None
    bos_id: int | None = None  # the token a sequence starts with, if the model wants one
    n_tokens: int | None = None  # ids 0 .. n_tokens - 1 have a text (min(tokenizer size, vocab))
    special_ids: frozenset = field(default_factory=frozenset)
    pad_id: int = 0
    # OV/QK matrices
    weights: str | None = None
    weights_note: str = ""

    @property
    def n_layers(self) -> int:
        """Number of blocks."""
        return len(self.blocks)


def module_at(root, path: str):
    """The submodule of ``root`` at dotted ``path`` (None if there is none)."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def out_proj(block, family: str):
    """The attention output projection of ``block`` (its input: the heads side by side), or None."""
    alias = FAMILIES.get(family, {}).get("out_proj")
    for path in ((alias,) if alias else ()) + OUT_PROJ_FALLBACK:
        found = module_at(block, path)
        if found is not None:
            return found
    return None


#: attention and MLP modules (relative to a block) of families not in :data:`FAMILIES`, tried in order
COMPONENT_FALLBACK = {"attn": ("attn", "self_attn", "attention", "self_attention"),
                      "mlp": ("mlp", "feed_forward", "ffn")}


def component_path(block, family: str, kind: str) -> str | None:
    """The path, relative to ``block``, of its attention (``kind="attn"``) or MLP (``"mlp"``) module:
    the family's alias, else the first of :data:`COMPONENT_FALLBACK` the block has (None: none)."""
    alias = FAMILIES.get(family, {}).get(kind)
    for path in ((alias,) if alias else ()) + COMPONENT_FALLBACK[kind]:
        if module_at(block, path) is not None:
            return path
    return None


def anatomy_of(adapter) -> Anatomy:
    """``adapter.anatomy``, with a one-line error for an adapter that declares none."""
    from probekit.errors import UsageError

    found = getattr(adapter, "anatomy", None)
    if not isinstance(found, Anatomy):
        raise UsageError(f"{getattr(adapter, 'spec', type(adapter).__name__)} declares no anatomy "
                         "(where its blocks, heads and embeddings are)")
    return found
