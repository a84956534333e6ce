"""Adapter for TransformerLens models: ``tlens:<official model name>`` or ``tlens:<directory>``.

Needs the ``tlens`` extra (``pip install 'probekit-lab[tlens]'``, i.e. ``transformer-lens>=2,<4``:
TransformerLens 4 removed ``HookedTransformer``, which this adapter runs). torch and
transformer_lens are imported only inside functions, so ``import probekit`` stays light.

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

import contextlib
import hashlib
import io
import json
import re
import warnings
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from probekit.errors import CheckpointError, DataError, UnknownNameError, UsageError
from probekit.models.adapters import decode_each, resolve_device, site_layout, torch_dtype
from probekit.models.hf import _jsonable, _tokenizer_hash as _hf_tokenizer_hash

EXTRA_HINT = "pip install 'probekit-lab[tlens]'"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")

# TransformerLens's from_pretrained defaults
PROCESSING_DEFAULTS = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
    "refactor_factored_attn_matrices": False,
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _import_tlens():
    try:
        with _quiet():
            from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as exc:
        raise UsageError(f"tlens: models need TransformerLens 2 or 3 (with HookedTransformer): {EXTRA_HINT}") from exc
    return HookedTransformer, HookedTransformerConfig


@contextlib.contextmanager
def _quiet(stdout: bool = True):
    """TransformerLens 3 warns that HookedTransformer is deprecated on every construction, and
    ``from_pretrained`` and ``.to()`` print to stdout (which would corrupt ``--json`` output)."""
    with warnings.catch_warnings(), (contextlib.redirect_stdout(io.StringIO()) if stdout else contextlib.nullcontext()):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"transformer_lens.*")
        warnings.filterwarnings("ignore", message=r".*HookedTransformer.*deprecated.*")
        yield


def _one_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return (text.splitlines()[0].strip() if text else type(exc).__name__)[:300]


def _flag(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UsageError(f"tlens option {key}={value!r}: give true or false")


def parse_options(rest: str, **kwargs) -> tuple[str, dict]:
    """Split ``"gpt2?fold_ln=false"`` into the name or path and the full weight-processing
    settings (defaults, then the query string, then ``kwargs`` that are not None). A query and a
    keyword argument that disagree is an error. ``processing=none`` turns every switch off."""
    name, sep, query = rest.partition("?")
    if sep and Path(rest).expanduser().is_dir():  # a directory whose name holds '?'
        name, query = rest, ""
    if not name:
        raise UsageError(f"model spec tlens:{rest} names no model")
    flags = dict(PROCESSING_DEFAULTS)
    given: dict[str, bool] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key == "processing":
            if str(value).lower() != "none":
                raise UsageError(f"tlens option processing={value!r}: only processing=none (every switch off)")
            for k in flags:
                given.setdefault(k, False)
            continue
        if key not in PROCESSING_DEFAULTS:
            raise UnknownNameError("tlens option", key, [*PROCESSING_DEFAULTS, "processing"])
        given[key] = _flag(key, value)
    for key, value in kwargs.items():
        if key not in PROCESSING_DEFAULTS:
            raise UnknownNameError("tlens option", key, PROCESSING_DEFAULTS)
        if value is None:
            continue
        value = _flag(key, value)
        if key in given and given[key] != value:
            raise UsageError(f"tlens option {key}: the spec says {given[key]}, the argument {value}")
        given[key] = value
    flags.update(given)
    return name, flags


# ---------------------------------------------------------------------------- the directory format
def config_to_dict(cfg, strict: bool = True) -> dict:
    """A ``HookedTransformerConfig`` as JSON-able fields (``dtype`` as a string, no ``device``);
    ``strict=False`` keeps a value JSON cannot hold instead of refusing it."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(cfg):
        if f.name in ("device",):
            continue
        value = getattr(cfg, f.name)
        if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
            value = str(value).removeprefix("torch.")
        elif isinstance(value, tuple):
            value = list(value)
        try:
            json.dumps(value, allow_nan=not strict)
        except (TypeError, ValueError):
            if not strict:
                continue
            raise UsageError(f"HookedTransformerConfig field {f.name}={value!r} is not JSON-able") from None
        out[f.name] = value
    return out


def save_tlens(model, path) -> Path:
    """Save a ``HookedTransformer`` as a ``tlens:<path>`` directory: ``config.json`` (its config),
    ``model.safetensors`` (its parameters, as they are now) and its tokenizer if it has one."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = config_to_dict(model.cfg)
    # clone: safetensors refuses tensors that share storage (tied weights)
    tensors = {name: p.detach().to("cpu").clone().contiguous() for name, p in model.named_parameters()}
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt", "probekit": "tlens",
                                                            "torch_version": torch.__version__})
    (path / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def _read_config(path: Path, HookedTransformerConfig, *, dtype, device: str):
    import dataclasses

    file = path / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(f"{path} holds no {CONFIG_FILE} (save a HookedTransformer there with "
                              "probekit.models.tlens.save_tlens)")
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{file} is not valid JSON: {_one_line(exc)}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file} must hold a JSON object of HookedTransformerConfig fields")
    fields = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        hint = " (a transformers config: load that directory with hf:)" if "model_type" in raw else ""
        raise CheckpointError(f"{file} is not a HookedTransformerConfig{hint}: unknown fields {', '.join(unknown[:6])}")
    saved = dict(raw)
    raw = dict(raw)
    raw.pop("n_params", None)  # derived in __post_init__
    raw["seed"] = None  # a config seed would reseed every global RNG on construction
    raw["device"] = device
    raw["dtype"] = torch_dtype(dtype)
    try:
        cfg = HookedTransformerConfig(**raw)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise CheckpointError(f"{file} is not a valid HookedTransformerConfig: {type(exc).__name__}: "
                              f"{_one_line(exc)}") from exc
    return cfg, saved


def _local_tokenizer(path: Path, cfg):
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        if cfg.tokenizer_name is None:
            return None
        source, common = cfg.tokenizer_name, {}
    else:
        source, common = str(path), {"local_files_only": True}
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source, **common)
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer of {path} ({source}): {type(exc).__name__}: "
                              f"{_one_line(exc)}") from exc


def _read_weights(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = path / WEIGHTS_FILE
    if not file.is_file():
        extra = " (pickled weights are never read)" if any(path.glob("*.bin")) or any(path.glob("*.pt")) else ""
        raise CheckpointError(f"{path} holds no {WEIGHTS_FILE}{extra}")
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read {file}: {_one_line(exc)}") from exc


def _check_weights(state: dict, model, path: Path) -> None:
    want = {name: tuple(p.shape) for name, p in model.named_parameters()}
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else "")] if missing else []) + \
                ([f"unexpected {', '.join(extra[:4])}" + (" ..." if len(extra) > 4 else "")] if extra else [])
        raise CheckpointError(f"{path / WEIGHTS_FILE} does not match its {CONFIG_FILE}: {'; '.join(parts)}")
    for name, shape in want.items():
        if tuple(state[name].shape) != shape:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: {name} has shape {tuple(state[name].shape)}, "
                                  f"the config gives {shape}")
        if not state[name].is_floating_point():
            raise CheckpointError(f"{path / WEIGHTS_FILE}: {name} is {state[name].dtype}, not floating point")


def _applied(flags: dict, cfg, normalization_before: str | None, has_ln_weights: bool) -> dict:
    """What TransformerLens's processing actually does with ``flags`` on a model whose config had
    ``normalization_before`` (mirrors ``load_and_process_state_dict`` / ``process_weights``)."""
    fold = flags["fold_ln"] and normalization_before in ("LN", "LNPre", "RMS", "RMSPre") and has_ln_weights
    norm_after = cfg.normalization_type
    centre = flags["center_writing_weights"] and norm_after in ("LN", "LNPre") and not getattr(cfg, "final_rms", False)
    return {"fold_ln": bool(fold), "center_writing_weights": bool(centre), "center_unembed": flags["center_unembed"],
            "fold_value_biases": flags["fold_value_biases"],
            "refactor_factored_attn_matrices": flags["refactor_factored_attn_matrices"]}


def _applied_pretrained(flags: dict, cfg) -> dict:
    """``from_pretrained`` turns some switches off itself (shortformer, post-norm, logit softcap)."""
    flags = dict(flags)
    if cfg.positional_embedding_type == "shortformer":
        flags.update(fold_ln=False, center_writing_weights=False, center_unembed=False)
    try:
        from transformer_lens.HookedTransformer import POST_NORM_ARCHITECTURES
    except ImportError:  # TransformerLens 2
        POST_NORM_ARCHITECTURES = ()
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        flags.update(fold_ln=False, center_writing_weights=False)
    cap = getattr(cfg, "output_logits_soft_cap", -1.0)
    if isinstance(cap, (int, float)) and cap > 0:
        flags["center_unembed"] = False
    norm = cfg.normalization_type
    before = {"LNPre": "LN", "RMSPre": "RMS"}.get(norm, norm) if flags["fold_ln"] else norm
    return _applied(flags, cfg, before, has_ln_weights=norm in ("LNPre", "RMSPre"))


# ------------------------------------------------------------------------------------ the adapter
class TLensAdapter:
    """A TransformerLens ``HookedTransformer``: ``tlens:gpt2-small``, ``tlens:/path/to/saved``."""

    scheme = "tlens"

    def __init__(self, model, spec: str, *, processing: dict, applied: dict, random_init: bool, init_seed: int,
                 device: str, source: str, saved_config: dict | None = None):
        self.model, self.spec, self.processing, self.applied = model, spec, processing, applied
        self.random_init, self.init_seed, self.device, self.source = random_init, init_seed, device, source
        self.saved_config = saved_config
        self.tokenizer = getattr(model, "tokenizer", None)
        n = model.cfg.n_layers
        self.hook_names = {
            "resid": ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n)],
            "attn_out": [f"blocks.{i}.hook_attn_out" for i in range(n)],
            "attn_pattern": [f"blocks.{i}.attn.hook_pattern" for i in range(n)],
        }
        if not model.cfg.attn_only:
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
        HookedTransformer, HookedTransformerConfig = _import_tlens()
        device = resolve_device(device)
        compute_dtype = torch_dtype(dtype)
        local = Path(name).expanduser()
        if local.is_dir():
            return cls._load_dir(local, rest, flags, HookedTransformer, HookedTransformerConfig,
                                 random_init=random_init, init_seed=init_seed, device=device, dtype=compute_dtype)
        if name.startswith(("/", ".", "~")) or local.exists() or not _is_official(name):
            raise CheckpointError(f"{name} is neither a model directory nor a TransformerLens model name")
        return cls._load_pretrained(name, rest, flags, HookedTransformer, random_init=random_init, init_seed=init_seed,
                                    device=device, dtype=compute_dtype)

    @classmethod
    def _load_dir(cls, path: Path, rest: str, flags: dict, HookedTransformer, HookedTransformerConfig, *,
                  random_init: bool, init_seed: int, device: str, dtype):
        import torch

        cfg, saved = _read_config(path, HookedTransformerConfig, dtype=torch.float32, device="cpu")
        tokenizer = _local_tokenizer(path, cfg)
        state = None if random_init else _read_weights(path)
        init = cfg.init_weights
        cfg.init_weights = bool(random_init)  # trained weights overwrite every parameter: skip the init
        try:
            if random_init:
                torch.manual_seed(init_seed)
            with _quiet():
                model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False,
                                          default_padding_side="right" if tokenizer is not None else None)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"cannot build the model of {path / CONFIG_FILE}: {type(exc).__name__}: "
                                  f"{_one_line(exc)}") from exc
        model.cfg.init_weights = init
        if random_init:
            state = {name: p.detach().clone() for name, p in model.named_parameters()}
        else:
            _check_weights(state, model, path)
            state = {k: v.float() for k, v in state.items()}  # processing in float32
        before = model.cfg.normalization_type
        has_ln = any(k.endswith((".ln1.w", ".ln2.w", "ln_final.w")) for k in state)
        try:
            with _quiet():
                model.load_and_process_state_dict(state, **flags)
        except Exception as exc:
            raise CheckpointError(f"cannot load the weights of {path}: {type(exc).__name__}: {_one_line(exc)}") from exc
        applied = _applied(flags, model.cfg, before, has_ln)
        model = _place(model, device, dtype)
        return cls(model, f"tlens:{rest}", processing=flags, applied=applied, random_init=random_init,
                   init_seed=init_seed, device=device, source="directory", saved_config=saved)

    @classmethod
    def _load_pretrained(cls, name: str, rest: str, flags: dict, HookedTransformer, *, random_init: bool,
                         init_seed: int, device: str, dtype):
        import torch

        what = f"TransformerLens model {name!r}"
        try:
            with _quiet():
                if random_init:
                    from transformer_lens import loading_from_pretrained as loading

                    official = loading.get_official_model_name(name)
                    cfg = loading.get_pretrained_model_config(official, device="cpu", dtype=torch.float32)
                    torch.manual_seed(init_seed)
                    model = HookedTransformer(cfg, move_to_device=False)
                    before = model.cfg.normalization_type
                    state = {k: p.detach().clone() for k, p in model.named_parameters()}
                    model.load_and_process_state_dict(state, **flags)
                    applied = _applied(flags, model.cfg, before, has_ln_weights=True)
                else:
                    model = HookedTransformer.from_pretrained(name, device="cpu", dtype=torch.float32,
                                                              default_padding_side="right", **flags)
                    applied = _applied_pretrained(flags, model.cfg)
        except (ImportError, MemoryError):
            raise
        except Exception as exc:  # unknown names (ValueError), offline hub (OSError), HTTP errors...
            raise CheckpointError(f"cannot load {what}: {type(exc).__name__}: {_one_line(exc)}") from exc
        model = _place(model, device, dtype)
        return cls(model, f"tlens:{rest}", processing=flags, applied=applied, random_init=random_init,
                   init_seed=init_seed, device=device, source="pretrained")

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
        with _quiet(stdout=False):
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
        with torch.no_grad(), _quiet(stdout=False):
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
            "model_config": _jsonable(config_to_dict(self.model.cfg, strict=False)),
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


def _is_official(name: str) -> bool:
    """Whether TransformerLens knows ``name`` (an official name or an alias; offline, from its tables)."""
    try:
        with _quiet():
            from transformer_lens import loading_from_pretrained as loading

            loading.get_official_model_name(name)
    except ValueError:
        return False
    return True


def _place(model, device: str, dtype):
    """Move ``model`` to ``device`` and ``dtype`` (weights were processed in float32 on the CPU)."""
    import torch

    with _quiet():
        if dtype != torch.float32:
            model = model.to(dtype)
        if device != "cpu":
            model = model.to(device)
    model.cfg.device = device
    model.cfg.dtype = dtype
    return model.eval()


def params_hash(model) -> str:
    """sha256 over parameter names, shapes and bytes (the same recipe as
    :func:`probekit.models.toy.checkpoint.weights_hash`, without buffers: TransformerLens grows its
    causal-mask buffer as longer inputs arrive)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.named_parameters()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tokenizer_hash(tokenizer) -> str | None:
    return None if tokenizer is None else _hf_tokenizer_hash(tokenizer)
