"""Adapter for HuggingFace ``transformers`` models: ``hf:<hub name, local directory or .gguf file>``.

A ``.gguf`` file (llama.cpp's format) is read by transformers and dequantised; see
:mod:`probekit.models.gguf` for what its provenance records.

Needs the ``hf`` extra (``pip install probekit-lab[hf]``); torch and transformers are
imported only inside functions, so ``import probekit`` stays light.

Sites (``n`` = number of decoder blocks):

* ``resid``, ``n + 1`` layers, shape ``[batch, layer, pos, d_model]``. Layer 0 is the
  input of the first block (token + position embeddings), i.e. HF's
  ``hidden_states[0]``; layer ``l`` (1 <= l <= n) is the residual stream *after* block
  ``l``. For ``l < n`` that is exactly HF's ``hidden_states[l]`` (``output_hidden_states=True``).
  For ``l = n`` it is NOT HF's ``hidden_states[n]``: HF replaces the last hidden state with
  ``last_hidden_state``, which has the final norm applied (``ln_f`` in GPT-2, ``norm`` in
  Llama). probekit records the pre-norm output of the last block instead, captured with
  a forward hook on that block, so every layer of ``resid`` is the same kind of quantity.
* ``attn_pattern``, ``n`` layers, shape ``[batch, layer, head, query, key]``: the
  post-softmax attention weights, HF's ``output_attentions``. Needs eager attention,
  which is why :meth:`HFAdapter.load` loads with ``attn_implementation="eager"`` by
  default (the activations then also do not depend on which sites were asked for).

Outputs are the logits ``[batch, pos, vocab]`` (float32). A model that has no causal-LM
head in transformers is loaded with ``AutoModel`` and its outputs are the final hidden
states ``[batch, pos, d_model]`` instead.

Padding: :meth:`HFAdapter.tokenize` right-pads and returns a ``valid`` mask.
:meth:`HFAdapter.run` passes it as ``attention_mask`` and sets every activation and
output at an invalid position (for ``attn_pattern``: an invalid query or key) to 0, so
what is cached does not depend on how much padding the batch happened to have.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import pickle
import re
from pathlib import Path

import numpy as np

from probekit.errors import CheckpointError, DataError, UnknownNameError, UsageError
from probekit.models.adapters import decode_each, resolve_device, torch_dtype
from probekit.models.anatomy import Anatomy, out_proj
from probekit.models.hooks import Hook, run_with_hooks

SITES = ("resid", "attn_pattern")


def _dtype_kwarg(dtype) -> dict:
    """``dtype=`` since transformers 4.56, ``torch_dtype=`` before (now deprecated)."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


def _one_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # transformers bolds some messages
    return (text.splitlines()[0].strip() if text else type(exc).__name__)[:300]


def jsonable(value):
    """``value`` with everything JSON cannot hold dropped (dict entries) or stringified (dtypes)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = jsonable(v)
            if v is not _DROP:
                out[str(k)] = v
        return out
    if isinstance(value, (list, tuple)):
        items = [jsonable(v) for v in value]
        return [v for v in items if v is not _DROP]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else _DROP
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return str(value).removeprefix("torch.")
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return _DROP
    return value


_DROP = object()


def _caused_by(exc: BaseException | None, kind: type) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _weights_files(path: Path) -> tuple[bool, bool]:
    """Whether directory ``path`` holds safetensors weights, and whether it holds pickled ones."""
    safe = any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json"))
    pickled = any(path.glob("*.bin")) or any(path.glob("*.bin.index.json"))
    return safe, pickled


class HFAdapter:
    """A transformers model and its tokenizer: ``hf:gpt2``, ``hf:/path/to/saved_model``."""

    scheme = "hf"
    #: what every hf: model can do; an instance adds what its architecture allows (``heads``: its
    #: attention output projections were found; ``weights``: GPT-2; ``patching``: a causal LM)
    capabilities = frozenset({"tokens", "tokenizer", "padding"})

    def __init__(self, model, tokenizer, config, spec: str, *, random_init: bool, init_seed: int,
                 device: str, blocks, is_causal_lm: bool):
        self.model, self.tokenizer, self.config, self.spec = model, tokenizer, config, spec
        self.random_init, self.init_seed, self.device = random_init, init_seed, device
        self.blocks, self.is_causal_lm = blocks, is_causal_lm
        self._hash: str | None = None
        #: where the weights came from when that is not a plain HF checkpoint (a GGUF file, dequantised)
        self.source: dict | None = None
        self.anatomy = self._anatomy()
        self.capabilities = type(self).capabilities | frozenset(
            ({"heads"} if self.anatomy.head_inputs else set()) | ({"weights"} if self.anatomy.weights else set())
            | ({"patching"} if is_causal_lm else set())
            | ({"tensors"} if type(self).run is HFAdapter.run else set()))  # a subclass's own run may lack it

    def _anatomy(self) -> Anatomy:
        model, tok, text = self.model, self.tokenizer, text_config(self.config)
        family = getattr(self.config, "model_type", None) or type(model).__name__
        projs = [out_proj(b, family) for b in self.blocks]
        vocab = int(model.get_input_embeddings().num_embeddings)
        bos = getattr(tok, "bos_token_id", None)
        gpt2 = family == "gpt2" and hasattr(model, "transformer")
        n_heads = int(text.num_attention_heads)
        return Anatomy(
            model, family, d_model=self.d_model, n_heads=n_heads, d_head=self.d_model // n_heads,
            blocks=tuple(self.blocks), resid=((self.blocks[0], "pre"),) + tuple((b, "post") for b in self.blocks),
            head_inputs=tuple((p, "merged") for p in projs) if all(p is not None for p in projs) else (),
            embed=model.get_input_embeddings(), vocab=vocab, max_positions=self.max_positions,
            bos_id=bos if bos is not None and bos < vocab else None, n_tokens=min(len(tok), vocab),
            special_ids=frozenset(getattr(tok, "all_special_ids", []) or []), pad_id=tok.pad_token_id or 0,
            weights="gpt2" if gpt2 else None,
            weights_note="" if gpt2 else (f"weight scores (OV, QK) are implemented for toy, GPT-2 and TransformerLens "
                                          f"models; {self.spec} is {getattr(self.config, 'model_type', None) or type(model).__name__}"))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, rest: str, *, random_init: bool = False, init_seed: int = 12345, device: str = "cpu",
             dtype=None, attn_implementation: str = "eager") -> "HFAdapter":
        """Load ``rest`` (a local directory saved with ``save_pretrained``, a GGUF file or a hub model id).

        Only safetensors weights are read when the directory has them; a directory with only
        ``.bin`` weights is read by transformers with ``torch.load(weights_only=True)``, which
        unpickles tensors and plain containers only (never arbitrary objects). Remote code is
        never trusted. ``random_init`` builds the same architecture from the config alone with
        ``torch.manual_seed(init_seed)``: no weights are read at all.
        """
        try:
            import torch
            from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise UsageError("hf: models need transformers: pip install 'probekit-lab[hf]'") from exc

        device = resolve_device(device)
        compute_dtype = torch_dtype(dtype)
        source, common, what, local, gguf_path = _locate(rest)
        is_local = local is not None

        try:
            config = AutoConfig.from_pretrained(source, **common)
            tokenizer = AutoTokenizer.from_pretrained(source, **common)
        except (OSError, ValueError, ImportError, KeyError) as exc:
            raise CheckpointError(f"cannot load {what}: {_one_line(exc)}") from exc
        except Exception as exc:  # network errors of huggingface_hub's HTTP client, etc.
            raise CheckpointError(f"cannot load {what}: {type(exc).__name__}: {_one_line(exc)}") from exc

        is_causal_lm = type(config) in MODEL_FOR_CAUSAL_LM_MAPPING
        auto = AutoModelForCausalLM if is_causal_lm else AutoModel
        kwargs = {**_dtype_kwarg(compute_dtype), "attn_implementation": attn_implementation}
        try:
            if random_init:
                torch.manual_seed(init_seed)
                model = auto.from_config(config, **kwargs)
            else:
                if is_local and gguf_path is None:
                    safe, pickled = _weights_files(local)
                    if not safe and not pickled:
                        raise CheckpointError(f"{source} holds no model weights (*.safetensors or *.bin)")
                    # safetensors whenever present; else .bin via torch.load(weights_only=True)
                    kwargs["use_safetensors"] = True if safe else False
                model = auto.from_pretrained(source, **common, **kwargs)
        except CheckpointError:
            raise
        except Exception as exc:
            if _caused_by(exc, pickle.UnpicklingError):  # transformers 4.x wraps it in an OSError
                raise CheckpointError(f"refused to unpickle the .bin weights of {what}: they hold objects other "
                                      "than tensors (read with torch.load(weights_only=True)); use safetensors "
                                      "weights") from exc
            raise CheckpointError(f"cannot load weights of {what}: {type(exc).__name__}: {_one_line(exc)}") from exc

        model = model.to(device).eval()
        config = model.config  # what the model was built with (attention implementation included)
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "right"
        blocks = find_blocks(model, text_config(config).num_hidden_layers)
        adapter = cls(model, tokenizer, config, f"hf:{rest}", random_init=random_init, init_seed=init_seed,
                      device=device, blocks=blocks, is_causal_lm=is_causal_lm)
        adapter.source = _source_record(local, gguf_path, compute_dtype, random_init)
        return adapter

    # --------------------------------------------------------------- shape info
    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def sites(self) -> dict[str, int]:
        return {"resid": self.n_layers + 1, "attn_pattern": self.n_layers}

    @property
    def d_model(self) -> int:
        return int(text_config(self.config).hidden_size)

    @property
    def d_out(self) -> int:
        if not self.is_causal_lm:
            return self.d_model
        head = self.model.get_output_embeddings()
        if head is not None and hasattr(head, "weight"):
            return int(head.weight.shape[0])
        return int(text_config(self.config).vocab_size)

    @property
    def n_heads(self) -> int:
        return int(text_config(self.config).num_attention_heads)

    def site_layout(self, site: str, seq_len: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """Store dims and per-sample shape of ``site``: ``resid`` is (layer, pos, feature) with
        layer 0 = embeddings; ``attn_pattern`` is (block, head, query, key) with block l = the
        l-th decoder block (1-based, its index 0 in the array)."""
        from probekit.store import schema
        if site not in SITES:
            raise UnknownNameError("site", site, SITES)
        if site == "attn_pattern":
            return schema.PATTERN_DIMS, (self.n_layers, self.n_heads, seq_len, seq_len)
        return schema.ACTIVATION_DIMS, (self.n_layers + 1, seq_len, self.d_model)

    @property
    def max_positions(self) -> int | None:
        n = getattr(text_config(self.config), "max_position_embeddings", None)
        return int(n) if isinstance(n, int) else None

    # ----------------------------------------------------------------- tokens
    def tokenize(self, texts: list[str], max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``int64 [n, T]``, right-padded to the longest text (after truncation to
        ``max_len``), and ``valid``: ``bool [n, T]``, False exactly at padding. The tokenizer's
        own special tokens are added (e.g. Llama's BOS; GPT-2 adds none)."""
        if isinstance(texts, str):
            raise UsageError("tokenize takes a list of texts, not one string")
        if not texts:
            return np.zeros((0, 0), np.int64), np.zeros((0, 0), bool)
        if self.tokenizer.pad_token_id is None:
            # no pad and no eos token: pad with id 0; the valid mask marks it anyway
            enc = [self.tokenizer(t, truncation=max_len is not None, max_length=max_len)["input_ids"] for t in texts]
            T = max(len(e) for e in enc)
            ids, valid = np.zeros((len(enc), T), np.int64), np.zeros((len(enc), T), bool)
            for i, e in enumerate(enc):
                ids[i, :len(e)], valid[i, :len(e)] = e, True
            return ids, valid
        enc = self.tokenizer(list(texts), padding="longest", truncation=max_len is not None, max_length=max_len,
                             return_tensors="np")
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(bool)

    def decode_tokens(self, ids: np.ndarray) -> list[list[str]]:
        """Each token's own text (``decode([id])``, special tokens kept), for labelling positions."""
        return decode_each(self.tokenizer, ids)

    # -------------------------------------------------------------------- run
    def run(self, inputs: np.ndarray, sites: list[str], valid: np.ndarray | None = None, *,
            as_tensors: bool = False):
        """Activations ``{"resid": [b, n+1, T, d], "attn_pattern": [b, n, head, T, T]}`` (float32)
        and outputs ``[b, T, d_out]`` (float32 logits). Invalid positions are zeroed. With
        ``as_tensors``: torch tensors on the model's device, in the model's dtype."""
        import torch

        inputs, valid = self.checked_inputs(inputs, sites, valid, SITES)
        want_attn = "attn_pattern" in sites
        if want_attn and self.model.config._attn_implementation != "eager":
            raise UsageError("site attn_pattern needs the model loaded with attn_implementation='eager'")

        captured: dict = {}
        hooks = [Hook.capture(self.blocks[-1], captured, "last")] if "resid" in sites else []
        extra = {"use_cache": False} if "use_cache" in self._forward_params else {}
        ids = torch.as_tensor(inputs, dtype=torch.long, device=self.device)
        mask = torch.as_tensor(valid, dtype=torch.long, device=self.device)
        out = run_with_hooks(lambda: self.model(input_ids=ids, attention_mask=mask, output_hidden_states="resid" in sites,
                                                output_attentions=want_attn, return_dict=True, **extra), hooks)

        keep = torch.as_tensor(valid, device=self.device)
        wide = (lambda t: t) if as_tensors else (lambda t: t.float())
        acts: dict = {}
        if "resid" in sites:
            layers = list(out.hidden_states[: self.n_layers]) + [captured["last"]]  # pre-final-norm last layer
            acts["resid"] = wide(torch.stack(layers, 1)) * keep[:, None, :, None]  # [b, n+1, T, d]
        if want_attn:
            pair = keep[:, :, None] & keep[:, None, :]
            acts["attn_pattern"] = wide(torch.stack(list(out.attentions), 1)) * pair[:, None, None]  # [b, n, head, T, T]
        final = wide(out.logits if self.is_causal_lm else out.last_hidden_state) * keep[:, :, None]
        if as_tensors:
            return acts, final
        return {site: a.cpu().numpy() for site, a in acts.items()}, final.cpu().numpy()

    def checked_inputs(self, inputs, sites, valid, known) -> tuple[np.ndarray, np.ndarray]:
        """``(token ids, valid mask)`` as arrays, after checking the sites (against ``known``), the
        shapes, the context length and the vocabulary range (a one-line error for each)."""
        unknown = [s for s in sites if s not in known]
        if unknown:
            raise UnknownNameError("site", unknown[0], known)
        inputs = np.asarray(inputs)
        if inputs.ndim != 2 or not np.issubdtype(inputs.dtype, np.integer):
            raise DataError(f"{self.scheme} models take integer token ids [batch, pos]; "
                            f"got {inputs.dtype} {inputs.shape}")
        valid = np.ones(inputs.shape, bool) if valid is None else np.asarray(valid, bool)
        if valid.shape != inputs.shape:
            raise DataError(f"valid mask has shape {valid.shape}, token ids have {inputs.shape}")
        if self.max_positions is not None and inputs.shape[1] > self.max_positions:
            raise DataError(f"{inputs.shape[1]} positions exceed the model's {self.max_positions}; "
                            "truncate with tokenize(..., max_len=...)")
        if inputs.size and (inputs.min() < 0 or inputs.max() >= self.model.get_input_embeddings().num_embeddings):
            raise DataError("token ids out of the model's vocabulary range")
        return inputs, valid

    @property
    def _forward_params(self):
        return inspect.signature(self.model.forward).parameters

    def token_logits(self, ids, valid, keep=None):
        """Logits ``[batch, pos, vocab]`` of token ids (torch tensors on the device; ``valid``: the
        padding mask), or only at the positions ``keep`` (1-D tensor; ``logits_to_keep`` when the
        model takes it)."""
        if not self.is_causal_lm:
            raise UsageError(f"{self.spec} has no language-model head: patching scores answer tokens")
        params = self._forward_params
        kw = {"use_cache": False} if "use_cache" in params else {}
        can_keep = "logits_to_keep" in params
        if keep is not None and can_keep:
            kw["logits_to_keep"] = keep
        out = self.model(input_ids=ids, attention_mask=valid.long(), return_dict=True, **kw).logits
        return out if keep is None or can_keep else out[:, keep]

    # ------------------------------------------------------------- provenance
    def provenance(self) -> dict:
        import torch
        import transformers

        from probekit.models.toy.checkpoint import weights_hash

        if self._hash is None:
            self._hash = weights_hash(self.model)
        config = jsonable(self.config.to_dict())
        return {
            "model_spec": self.spec,
            "model_hash": self._hash,
            "model_config": config,
            "model_revision": getattr(self.config, "_commit_hash", None),
            "tokenizer_hash": tokenizer_hash(self.tokenizer),
            "random_init": self.random_init,
            "init_seed": self.init_seed if self.random_init else None,
            "device": self.device,
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "attn_implementation": self.model.config._attn_implementation,
            **({"model_source": self.source} if self.source else {}),
        }


def _locate(rest: str):
    """Where ``rest`` points: ``(source for from_pretrained, its common kwargs, a description, the local
    directory or None, the GGUF file or None)``. A GGUF file loads from its folder with ``gguf_file=``."""
    from probekit.models import gguf

    local = Path(rest).expanduser()
    if gguf.names_gguf(rest):
        path = gguf.checked_gguf(rest)
        return (str(path.parent), {"local_files_only": True, "gguf_file": path.name}, f"GGUF file {rest}",
                path.parent, path)
    if local.is_dir():
        return str(local), {"local_files_only": True}, f"local model directory {local}", local, None
    if rest.startswith(("/", ".", "~")) or local.exists():
        raise CheckpointError(f"{rest} is not a model directory, a GGUF file or a hub model id")
    return rest, {}, f"HF hub model {rest!r}", None, None


def _source_record(local, gguf_path, dtype, random_init: bool) -> dict | None:
    """The ``model_source`` provenance: what a GGUF file was dequantised to (read from the file, or from
    the record a converted directory keeps); None for a plain checkpoint or a random init."""
    from probekit.models import gguf

    if random_init:
        return None
    if gguf_path is not None:
        return gguf.gguf_record(gguf_path, str(dtype).removeprefix("torch."))
    return gguf.read_record(local) if local is not None else None


def text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def find_blocks(model, n_layers: int):
    """The ``ModuleList`` of the ``n_layers`` decoder blocks (``transformer.h``, ``model.layers``, ...)."""
    from torch import nn

    found = [(name, mod) for name, mod in model.named_modules()
             if isinstance(mod, nn.ModuleList) and len(mod) == n_layers]
    if not found:
        raise CheckpointError(f"cannot find the {n_layers} blocks of {type(model).__name__}")
    # prefer the usual names, else the first (outermost) match
    for name, mod in found:
        if name.rsplit(".", 1)[-1] in ("layers", "h", "blocks", "layer"):
            return mod
    return found[0][1]


def tokenizer_hash(tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        try:
            vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
        except Exception:
            return None
        return hashlib.sha256(vocab.encode()).hexdigest()
    return hashlib.sha256(backend.to_str().encode()).hexdigest()
