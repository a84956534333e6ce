"""Adapter for TransformerLens models: ``tlens:<official model name>`` or ``tlens:<directory>``.

Needs the ``tlens`` extra (``pip install 'probekit-lab[tlens]'``, ``transformer-lens>=2``). On
TransformerLens >= 4 the model is a ``TransformerBridge`` over an HF model (hub ids and HF model
directories; :mod:`probekit.models.tlens_bridge`); on 2.x-3.x a ``HookedTransformer`` (official names
and :func:`save_tlens` directories, described below). Hook names, sites and the processing switches
are the same on both. torch and transformer_lens are imported only inside functions, so ``import
probekit`` stays light.

Specs
-----

* ``tlens:gpt2-small`` (any name or alias TransformerLens knows): loaded with
  ``HookedTransformer.from_pretrained``, which downloads the weights from the HF hub (or reads
  the local HF cache). Offline and not cached: a one-line ``CheckpointError``.
* ``tlens:<dir>``: a directory written by :func:`save_tlens` — ``config.json`` (the
  ``HookedTransformerConfig`` fields as JSON; ``dtype`` as a string, ``device`` left out),
  ``model.safetensors`` (the model's parameters, read with safetensors only: nothing is ever
  unpickled) and, when the model has one, its tokenizer (``save_pretrained`` files). The
  parameters must match the config exactly (names and shapes), or it is a ``CheckpointError``.
  Weights are stored *unprocessed* (as the model had them); processing happens at load time::

      from probekit.models.tlens import save_tlens
      save_tlens(model, "store/models/tiny")   # model: a HookedTransformer (trained or not)
      # probekit cache --model tlens:store/models/tiny --task markov --param states=5 ...

Weight processing
-----------------

TransformerLens rewrites the weights of a loaded model. The function the model computes stays
the same (its log-probabilities too), but the cached activations change, so the switches are
part of the model: ``HookedTransformer.from_pretrained``'s defaults unless the spec's query
string (quote it in a shell: ``?`` and ``&``) or keyword arguments of :meth:`TLensAdapter.load`
say otherwise::

    tlens:gpt2-small                                   # fold_ln, center_writing_weights,
                                                       # center_unembed, fold_value_biases: on
    'tlens:gpt2-small?fold_ln=false&center_writing_weights=false'   # some off
    'tlens:store/models/tiny?processing=none'          # every switch off (from_pretrained_no_processing)

* ``fold_ln`` (True): fold each LayerNorm's weight and bias into the next linear layer (and
  centre the weights that read from the residual stream); the norms become ``LNPre`` (centre and
  scale only). The function is unchanged, and so are ``resid``, ``attn_out`` and ``mlp_out`` (up
  to float rounding); what changes is the weights and TransformerLens's ``ln*.hook_normalized``.
* ``center_writing_weights`` (True): subtract the mean over features from every weight and bias
  that writes to the residual stream (``W_E``, ``W_pos``, ``W_O``, ``W_out``...; LayerNorm
  models only). This *does* change ``resid``, ``attn_out`` and ``mlp_out``: each has mean 0 over
  features afterwards (LayerNorm removes that mean anyway, so nothing downstream changes).
* ``center_unembed`` (True): subtract the mean over the vocabulary from ``W_U`` and ``b_U``:
  shifts each position's logits by a constant (the stored outputs change, their softmax does not).
* ``fold_value_biases`` (True): move the value biases into the attention output bias
  (``attn_out`` is unchanged: the patterns sum to 1).
* ``refactor_factored_attn_matrices`` (False): TransformerLens's SVD rewrite of QK and OV.

``provenance()`` records them: ``weight_processing`` (the switches as asked, all five) and
``weight_processing_applied`` (what TransformerLens actually did: e.g. ``fold_ln`` is skipped
for a model without LayerNorm weights, ``center_writing_weights`` for an RMSNorm model). The
spec itself is part of a store's identity, so a store cached with other switches is refused
on resume instead of being mixed. ``--random-init`` builds the same architecture from the
config with ``torch.manual_seed(init_seed)`` and applies the same processing.

Sites (``n`` = number of blocks; TransformerLens blocks are ``blocks.0 .. blocks.{n-1}``)
-----------------------------------------------------------------------------------------

* ``resid``, ``n + 1`` layers ``[batch, layer, pos, d_model]``. Layer 0 is
  ``blocks.0.hook_resid_pre`` = ``hook_embed + hook_pos_embed`` (the token embedding alone for
  rotary / shortformer models); layer ``l`` (1 <= l <= n) is ``blocks.{l-1}.hook_resid_post``.
  The last layer is the last block's output *before* ``ln_final`` — the same convention as the
  ``hf:`` adapter, and exactly TransformerLens's ``blocks.{n-1}.hook_resid_post``.
* ``attn_out``, ``mlp_out``: ``n`` blocks ``[batch, block, pos, d_model]``, block ``l`` =
  ``blocks.{l-1}.hook_attn_out`` / ``hook_mlp_out`` (no ``mlp_out`` for attention-only models).
* ``attn_pattern``: ``n`` blocks ``[batch, block, head, query, key]``, ``blocks.{l-1}.attn.hook_pattern``.

These are the TransformerLens hook names that :mod:`probekit.models.sites` already accepts as aliases,
so ``--site blocks.3.hook_resid_post`` caches ``resid`` (layer 4 = that hook). Outputs are the
logits ``[batch, pos, d_vocab_out]`` (float32).

Tokens and padding
------------------

With a tokenizer (official models; saved directories that hold one), :meth:`TLensAdapter.tokenize`
tokenises each text as ``model.to_tokens(text)`` does — TransformerLens's BOS convention
(``cfg.default_prepend_bos``, True unless the model says otherwise), truncated to ``n_ctx`` and
to ``max_len`` — right-pads with the pad token and returns a ``valid`` mask. :meth:`TLensAdapter.run`
passes a mask with padding as ``attention_mask`` and zeroes every activation and output at an
invalid position (an invalid query or key of ``attn_pattern``). A model without a tokenizer (a
locally built ``HookedTransformer(cfg)`` with no ``tokenizer_name``) takes token ids from a token
task (``--task``); ``--text`` is refused with a one-line error.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from probekit.errors import CheckpointError, DataError, UnknownNameError, UsageError
from probekit.models.adapters import decode_each, resolve_device, site_layout, torch_dtype
from probekit.models.anatomy import Anatomy
from probekit.models.hf import jsonable, tokenizer_hash as hf_tokenizer_hash
from probekit.models.tlens_bridge import config_dict, load_bridge, tl_major
from probekit.models.tlens_load import (  # noqa: F401  (the format's names, documented here)
    CONFIG_FILE,
    EXTRA_HINT,
    PROCESSING_DEFAULTS,
    TOKENIZER_FILES,
    WEIGHTS_FILE,
    config_to_dict,
    import_tlens,
    is_official,
    load_dir,
    load_pretrained,
    params_hash,
    parse_options,
    quiet,
    save_tlens,
)


# ------------------------------------------------------------------------------------ the adapter
class TLensAdapter:
    """A TransformerLens ``HookedTransformer``: ``tlens:gpt2-small``, ``tlens:/path/to/saved``."""

    scheme = "tlens"
    #: an instance adds ``tokenizer`` when its model has one (a locally built HookedTransformer may not)
    capabilities = frozenset({"tokens", "padding", "heads", "weights"})

    def __init__(self, model, spec: str, *, processing: dict, applied: dict, random_init: bool, init_seed: int,
                 device: str, source: str, saved_config: dict | None = None):
        self.model, self.spec, self.processing, self.applied = model, spec, processing, applied
        self.random_init, self.init_seed, self.device, self.source = random_init, init_seed, device, source
        self.saved_config = saved_config
        self.tokenizer = getattr(model, "tokenizer", None)
        self.bridge = type(model).__name__ == "TransformerBridge"  # TransformerLens 4
        caps = type(self).capabilities - ({"weights"} if self.bridge else set())
        self.capabilities = caps | ({"tokenizer"} if self.tokenizer is not None else set())
        n = model.cfg.n_layers
        self.hook_names = {
            "resid": ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n)],
            "attn_out": [f"blocks.{i}.hook_attn_out" for i in range(n)],
            "attn_pattern": [f"blocks.{i}.attn.hook_pattern" for i in range(n)],
        }
        if not getattr(model.cfg, "attn_only", False):
            self.hook_names["mlp_out"] = [f"blocks.{i}.hook_mlp_out" for i in range(n)]
        self._hash: str | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, rest: str, *, random_init: bool = False, init_seed: int = 12345, device: str = "cpu",
             dtype=None, fold_ln: bool | None = None, center_writing_weights: bool | None = None,
             center_unembed: bool | None = None, fold_value_biases: bool | None = None,
             refactor_factored_attn_matrices: bool | None = None) -> "TLensAdapter":
        """Load ``rest``: a :func:`save_tlens` directory or a TransformerLens model name, with an
        optional ``?switch=value&...`` query of weight-processing switches (keyword arguments
        that are not None say the same; see the module docstring)."""
        name, flags = parse_options(rest, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                    center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                                    refactor_factored_attn_matrices=refactor_factored_attn_matrices)
        major = tl_major()
        if major is None or major < 4:
            import_tlens()
        device = resolve_device(device)
        compute_dtype = torch_dtype(dtype)
        local = Path(name).expanduser()
        common = {"random_init": random_init, "init_seed": init_seed, "device": device, "dtype": compute_dtype}
        if major is not None and major >= 4:  # TransformerLens 4: a TransformerBridge
            model, applied, source = load_bridge(name, flags, **common)
            return cls(model, f"tlens:{rest}", processing=flags, applied=applied, random_init=random_init,
                       init_seed=init_seed, device=device, source=source)
        if local.is_dir():
            model, applied, saved = load_dir(local, flags, **common)
            return cls(model, f"tlens:{rest}", processing=flags, applied=applied, random_init=random_init,
                       init_seed=init_seed, device=device, source="directory", saved_config=saved)
        if name.startswith(("/", ".", "~")) or local.exists() or not is_official(name):
            raise CheckpointError(f"{name} is neither a model directory nor a TransformerLens model name")
        model, applied = load_pretrained(name, flags, **common)
        return cls(model, f"tlens:{rest}", processing=flags, applied=applied, random_init=random_init,
                   init_seed=init_seed, device=device, source="pretrained")

    @cached_property
    def anatomy(self) -> Anatomy:
        model, cfg, tok = self.model, self.model.cfg, self.tokenizer
        vocab = int(cfg.d_vocab)
        bos = getattr(tok, "bos_token_id", None) if tok is not None and getattr(cfg, "default_prepend_bos", True) else None
        return Anatomy(
            model, "tlens", d_model=int(cfg.d_model), n_heads=int(cfg.n_heads), d_head=int(cfg.d_head),
            blocks=tuple(model.blocks), head_inputs=tuple((b.attn.hook_z, "split") for b in model.blocks),
            embed=model.embed, ln_final=getattr(model, "ln_final", None), vocab=vocab, max_positions=int(cfg.n_ctx),
            bos_id=bos if bos is not None and bos < vocab else None,
            n_tokens=min(len(tok), vocab) if tok is not None else vocab,
            special_ids=frozenset(getattr(tok, "all_special_ids", []) or []) if tok is not None else frozenset(),
            pad_id=(tok.pad_token_id or 0) if tok is not None else 0, weights=None if self.bridge else "tlens",
            weights_note="OV/QK weight scores read HookedTransformer weights (TransformerLens < 4); a "
                         "TransformerBridge's norms are not folded into them yet" if self.bridge else "")

    # --------------------------------------------------------------- shape info
    @property
    def cfg(self):
        return self.model.cfg

    @property
    def n_layers(self) -> int:
        return int(self.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.cfg.n_heads)

    @property
    def sites(self) -> dict[str, int]:
        return {site: len(names) for site, names in self.hook_names.items()}

    @property
    def d_model(self) -> int:
        return int(self.cfg.d_model)

    @property
    def d_out(self) -> int:
        return int(self.cfg.d_vocab_out)

    @property
    def max_positions(self) -> int:
        return int(self.cfg.n_ctx)

    def site_layout(self, site: str, seq_len: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """Store dims and per-sample shape of ``site`` (``resid``: layers 0..n; the others: blocks 1..n)."""
        if site not in self.hook_names:
            raise UnknownNameError("site", site, self.hook_names)
        return site_layout(site, self.sites[site], seq_len, self.d_model, self.n_heads)

    # ----------------------------------------------------------------- tokens
    def _need_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise UsageError(f"--text needs a model with a tokenizer; {self.spec} has none (a HookedTransformer "
                             "built without tokenizer_name): cache a token task with --task instead")

    def tokenize(self, texts: list[str], max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``int64 [n, T]`` as ``model.to_tokens(text)`` gives them (BOS per
        ``cfg.default_prepend_bos``; at most ``n_ctx`` tokens, then ``max_len``), right-padded with
        the pad token, and ``valid``: ``bool [n, T]``, False exactly at padding."""
        self._need_tokenizer()
        if isinstance(texts, str):
            raise UsageError("tokenize takes a list of texts, not one string")
        if not texts:
            return np.zeros((0, 0), np.int64), np.zeros((0, 0), bool)
        with quiet(stdout=False):
            rows = [self.model.to_tokens(t, padding_side="right", move_to_device=False, truncate=True)[0]
                    .cpu().numpy().astype(np.int64) for t in texts]
        if max_len:
            rows = [r[:max_len] for r in rows]
        T = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = np.full((len(rows), T), 0 if pad is None else int(pad), np.int64)
        valid = np.zeros((len(rows), T), bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)], valid[i, : len(r)] = r, True
        return ids, valid

    def decode_tokens(self, ids: np.ndarray) -> list[list[str]]:
        """Each token's own text (``decode([id])``, special tokens kept), for labelling positions."""
        self._need_tokenizer()
        return decode_each(self.tokenizer, ids)

    # -------------------------------------------------------------------- run
    def run(self, inputs: np.ndarray, sites: list[str], valid: np.ndarray | None = None):
        """Activations ``{site: [b, layer or block, ...]}`` (float32) and logits ``[b, T, d_vocab_out]``
        (float32), from one ``run_with_cache`` filtered to the hooks asked for. With a ``valid``
        mask that has padding it is the ``attention_mask``, and invalid positions are zeroed."""
        import torch

        unknown = [s for s in sites if s not in self.hook_names]
        if unknown:
            raise UnknownNameError("site", unknown[0], self.hook_names)
        inputs = np.asarray(inputs)
        if inputs.ndim != 2 or not np.issubdtype(inputs.dtype, np.integer):
            raise DataError(f"tlens models take integer token ids [batch, pos]; got {inputs.dtype} {inputs.shape}")
        if inputs.shape[1] > self.max_positions:
            raise DataError(f"{inputs.shape[1]} positions exceed the model's n_ctx = {self.max_positions}")
        if inputs.size and (inputs.min() < 0 or inputs.max() >= self.cfg.d_vocab):
            raise DataError(f"token ids out of the model's vocabulary range 0..{self.cfg.d_vocab - 1}")
        padded = valid is not None and not np.asarray(valid, bool).all()
        if valid is not None:
            valid = np.asarray(valid, bool)
            if valid.shape != inputs.shape:
                raise DataError(f"valid mask has shape {valid.shape}, token ids have {inputs.shape}")

        names = [name for site in sites for name in self.hook_names[site]]
        tokens = torch.as_tensor(inputs, dtype=torch.long, device=self.device)
        extra = {}
        if padded:
            extra["attention_mask"] = torch.as_tensor(valid, dtype=torch.long, device=self.device)
        with torch.no_grad(), quiet(stdout=False):
            logits, cache = self.model.run_with_cache(tokens, names_filter=names, return_type="logits",
                                                      return_cache_object=False, **extra)
        acts: dict[str, np.ndarray] = {}
        keep = torch.as_tensor(valid if valid is not None else np.ones(inputs.shape, bool), device=self.device)
        for site in sites:
            x = torch.stack([cache[name] for name in self.hook_names[site]], 1).float()
            if padded:
                if site == "attn_pattern":  # [b, block, head, q, k]
                    mask = (keep[:, :, None] & keep[:, None, :])[:, None, None]
                else:  # [b, layer, pos, d]
                    mask = keep[:, None, :, None]
                x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
            acts[site] = x.cpu().numpy()
        out = logits.float()
        if padded:
            out = torch.where(keep[:, :, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
        return acts, out.cpu().numpy()

    # ------------------------------------------------------------- provenance
    def provenance(self) -> dict:
        import torch

        if self._hash is None:
            self._hash = params_hash(self.model)
        try:
            from importlib.metadata import version

            tl_version = version("transformer-lens")
        except Exception:  # pragma: no cover - an unusual install
            tl_version = None
        return {
            "model_spec": self.spec,
            "model_hash": self._hash,
            # the config as run: normalization_type is LNPre once LayerNorm is folded
            "model_config": jsonable(config_dict(self.model.cfg)),
            "model_source": self.source,
            "weight_processing": dict(self.processing),
            "weight_processing_applied": dict(self.applied),
            "tokenizer_hash": _tokenizer_hash(self.tokenizer),
            "random_init": self.random_init,
            "init_seed": self.init_seed if self.random_init else None,
            "device": self.device,
            "torch_version": torch.__version__,
            "transformer_lens_version": tl_version,
            "model_dtype": str(self.model.cfg.dtype).removeprefix("torch."),  # ("dtype" is the store's)
        }




def _tokenizer_hash(tokenizer) -> str | None:
    return None if tokenizer is None else hf_tokenizer_hash(tokenizer)
