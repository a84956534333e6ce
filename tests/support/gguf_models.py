"""Write a tiny transformers Llama as a GGUF file, the way llama.cpp's converter lays it out (no network).

``write_gguf(model, tokenizer, path, qtype)`` writes the config, the byte-level BPE tokenizer (vocabulary,
merges, special ids) and every tensor under llama.cpp's names, with the query and key rows permuted as
llama.cpp permutes them, the matrices quantised to ``qtype`` (``F32``, ``Q8_0``, ``Q4_1``) with the
``gguf`` package's numpy quantiser, and the norms kept in F32 (as llama.cpp keeps them).
``dequantized_state(model, qtype)`` is what the weights become after the round trip, computed with
``gguf``'s own numpy dequantiser: the reference a GGUF-loaded model is compared with.
"""

from __future__ import annotations

import json

import numpy as np

NAMES = {  # transformers Llama name -> llama.cpp GGUF name ({i}: block index)
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` of query/key rows (rotary halves interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(name: str) -> str:
    parts = name.split(".")
    if name.startswith("model.layers."):
        i = parts[2]
        return NAMES[".".join(parts[:2] + ["{i}"] + parts[3:])].format(i=i)
    return NAMES[name]


def _quantised(name: str, array: np.ndarray, qtype: str) -> bool:
    return qtype != "F32" and array.ndim == 2 and not name.endswith("norm.weight")


def dequantized_state(model, qtype: str) -> dict:
    """The model's state dict after quantising to ``qtype`` and back (gguf's numpy code), as float32 tensors."""
    import torch
    from gguf import GGMLQuantizationType, dequantize, quantize

    kind = GGMLQuantizationType[qtype] if qtype != "F32" else None
    out = {}
    for name, tensor in model.state_dict().items():
        array = tensor.detach().float().numpy()
        if kind is not None and _quantised(name, array, qtype):
            array = dequantize(quantize(array, kind), kind)
        out[name] = torch.from_numpy(np.ascontiguousarray(array, np.float32))
    return out


def _write_tokenizer(writer, tokenizer) -> None:
    from gguf import TokenType

    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    special = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL if i in special else TokenType.NORMAL for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(True)


def write_gguf(model, tokenizer, path, qtype: str = "F32") -> None:
    """Write the tiny transformers ``LlamaForCausalLM`` ``model`` and its tokenizer to the GGUF file ``path``."""
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, quantize

    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(getattr(LlamaFileType, "ALL_F32" if qtype == "F32" else f"MOSTLY_{qtype}"))
    _write_tokenizer(writer, tokenizer)
    for name, tensor in model.state_dict().items():
        array = np.ascontiguousarray(tensor.detach().float().numpy(), np.float32)
        if name.endswith("q_proj.weight"):
            array = _permute(array, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            array = _permute(array, cfg.num_key_value_heads)
        if _quantised(name, array, qtype):
            kind = GGMLQuantizationType[qtype]
            writer.add_tensor(_gguf_name(name), quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(_gguf_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
