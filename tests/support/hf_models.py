"""Tiny GPT-2 and Llama models with a locally trained byte-level BPE tokenizer (no network).

The same recipe as ``tests/models/test_hf.py``: ``build(kind, out)`` saves the model (safetensors) and its
tokenizer with ``save_pretrained`` so ``hf:<out>`` loads them like a user's model directory.
"""

from __future__ import annotations

CORPUS = ["the cat sat on the mat", "a dog ran", "the quick brown fox jumps over the lazy dog", "hello",
          "(12, 27)\n(40, 83)\n(7, 17)\n", "the dog sat on the cat", "hello world, hello cat"]


def tokenizer(bos: bool, corpus=CORPUS):
    """GPT-2 style (no BOS added, no pad token) or Llama style (``<s>`` first, a real pad token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                       pad_token="<pad>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build(kind: str, out, *, n_layers: int = 2, seed: int = 0):
    """Save a random tiny ``gpt2`` or ``llama`` model and its tokenizer to ``out``; returns the model."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = tokenizer(bos=kind == "llama")
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    torch.manual_seed(seed)
    if kind == "gpt2":
        cfg = GPT2Config(n_layer=n_layers, n_embd=32, n_head=4, vocab_size=len(tok), n_positions=64, **special)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(num_hidden_layers=n_layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=64,
                          pad_token_id=tok.pad_token_id, **special)
        model = LlamaForCausalLM(cfg)
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model
