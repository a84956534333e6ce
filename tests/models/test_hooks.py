"""The one hook runner (probekit.models.hooks), declared capabilities and anatomies of the built-in adapters."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from probekit.errors import UsageError
from probekit.models.capabilities import capabilities, require
from probekit.models.hooks import Ablation, Hook, ablation_hooks, parse_heads, run_with_hooks



def test_run_with_hooks_captures_rewrites_and_always_removes_its_handles():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    x = torch.randn(3, 4)
    seen: dict = {}
    out = run_with_hooks(lambda: net(x), [Hook.capture(net[0], seen, "h"), Hook(net[1], lambda h: h * 0, "input")])
    assert torch.equal(seen["h"], net[0](x).detach()) and torch.equal(out, net[1].bias.expand(3, 2).detach())
    assert not out.requires_grad  # under no_grad
    assert not net[0]._forward_hooks and not net[1]._forward_pre_hooks

    def boom(_h):
        raise RuntimeError("inside a hook")
    with pytest.raises(RuntimeError, match="inside a hook"):
        run_with_hooks(lambda: net(x), [Hook.capture(net[0], seen, "h"), Hook(net[1], boom, "input")])
    assert not net[0]._forward_hooks and not net[1]._forward_pre_hooks  # removed in finally


def test_around_hooks_see_input_and_output_of_a_block():
    block = torch.nn.Linear(3, 3)
    x = torch.randn(2, 3)
    out = run_with_hooks(lambda: block(x), [Hook(block, lambda x_in, _y: x_in, "around")])
    assert torch.equal(out, x)


def test_one_head_parser_takes_both_old_syntaxes():
    assert parse_heads("1.0,1.2", 2, 3) == ((1, 0), (1, 2))  # probekit heads --ablate
    assert parse_heads("1.*", 2, 3) == ((1, 0), (1, 1), (1, 2))  # probekit patch --ablate-heads
    with pytest.raises(UsageError, match="does not exist"):
        parse_heads("2.0", 2, 3)
    with pytest.raises(UsageError, match="must look like L.H"):
        parse_heads("x", 2, 3)


def test_mean_ablation_without_means_is_refused():
    from probekit.models.anatomy import Anatomy

    with pytest.raises(UsageError, match="needs the components' means"):
        ablation_hooks(Anatomy(None, "none"), Ablation(heads=((0, 0),), mode="mean"))


def test_toy_adapters_declare_what_their_config_allows(tiny_checkpoint):
    from probekit.models.toy.adapter import ToyAdapter
    from probekit.models.toy.checkpoint import Checkpoint
    from support import induction_models as im

    model, cfg = im.build()
    tokens = ToyAdapter(model, Checkpoint(cfg, "repeated-tokens", {}), "toy:x", random_init=False, init_seed=0,
                        device="cpu")
    assert capabilities(tokens) == {"tokens", "heads", "weights", "patching", "differentiable", "task",
                                    "tensors"}
    an = tokens.anatomy
    assert an.n_layers == cfg.n_layers and len(an.resid) == cfg.n_layers + 1 and an.weights == "toy"
    assert an.head_inputs[1] == (model.blocks[1].attn.W_o, "merged") and an.vocab == cfg.d_in
    continuous = ToyAdapter.load(str(tiny_checkpoint))
    assert capabilities(continuous) == {"heads", "differentiable", "task", "tensors"} == capabilities(ToyAdapter) | {
        "heads"}
    with pytest.raises(UsageError, match="probekit heads needs a model with token inputs"):
        require(continuous, "tokens", "probekit heads")


def test_hf_adapters_declare_heads_weights_and_patching_by_architecture(hf_models):
    from probekit.models.hf import HFAdapter

    gpt2, llama = (HFAdapter.load(str(hf_models[kind][0])) for kind in ("gpt2", "llama"))
    base = {"tokens", "tokenizer", "padding"}
    assert capabilities(HFAdapter) == base
    assert capabilities(gpt2) == base | {"heads", "weights", "patching", "tensors"}
    assert capabilities(llama) == base | {"heads", "patching", "tensors"}
    assert "implemented for toy, GPT-2 and TransformerLens" in llama.anatomy.weights_note
    assert gpt2.anatomy.head_inputs[0][0] is gpt2.model.transformer.h[0].attn.c_proj
    assert llama.anatomy.head_inputs[1][0] is llama.model.model.layers[1].self_attn.o_proj
    assert llama.anatomy.bos_id == llama.tokenizer.bos_token_id and gpt2.anatomy.pad_id == gpt2.tokenizer.pad_token_id
    x = np.array([[3, 4, 5, 6]])
    logits = gpt2.token_logits(torch.as_tensor(x), torch.ones(1, 4, dtype=torch.bool))
    np.testing.assert_allclose(logits.detach().numpy(), gpt2.run(x, [])[1], atol=1e-5)
