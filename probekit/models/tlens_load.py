"""TransformerLens models on disk and from the hub: the ``tlens:<dir>`` format (:func:`save_tlens`),
the weight-processing options of a spec, and building a processed ``HookedTransformer``.
:mod:`probekit.models.tlens` (the adapter) documents all of it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import warnings
from pathlib import Path
from urllib.parse import parse_qsl

from probekit.errors import CheckpointError, UnknownNameError, UsageError
from probekit.models.adapters import torch_dtype

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


def import_tlens():
    try:
        with quiet():
            from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as exc:
        raise UsageError(f"tlens: models need TransformerLens 2 or 3 (with HookedTransformer): {EXTRA_HINT}") from exc
    return HookedTransformer, HookedTransformerConfig


@contextlib.contextmanager
def quiet(stdout: bool = True):
    """TransformerLens 3 warns that HookedTransformer is deprecated on every construction, and
    ``from_pretrained`` and ``.to()`` print to stdout (which would corrupt ``--json`` output)."""
    with warnings.catch_warnings(), (contextlib.redirect_stdout(io.StringIO()) if stdout else contextlib.nullcontext()):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"transformer_lens.*")
        warnings.filterwarnings("ignore", message=r".*HookedTransformer.*deprecated.*")
        yield


def one_line(exc: BaseException) -> str:
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


def read_config(path: Path, HookedTransformerConfig, *, dtype, device: str):
    import dataclasses

    file = path / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(f"{path} holds no {CONFIG_FILE} (save a HookedTransformer there with "
                              "probekit.models.tlens.save_tlens)")
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{file} is not valid JSON: {one_line(exc)}") from exc
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
                              f"{one_line(exc)}") from exc
    return cfg, saved


def local_tokenizer(path: Path, cfg):
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
                              f"{one_line(exc)}") from exc


def read_weights(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = path / WEIGHTS_FILE
    if not file.is_file():
        extra = " (pickled weights are never read)" if any(path.glob("*.bin")) or any(path.glob("*.pt")) else ""
        raise CheckpointError(f"{path} holds no {WEIGHTS_FILE}{extra}")
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read {file}: {one_line(exc)}") from exc


def check_weights(state: dict, model, path: Path) -> None:
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


def applied_flags(flags: dict, cfg, normalization_before: str | None, has_ln_weights: bool) -> dict:
    """What TransformerLens's processing actually does with ``flags`` on a model whose config had
    ``normalization_before`` (mirrors ``load_and_process_state_dict`` / ``process_weights``)."""
    fold = flags["fold_ln"] and normalization_before in ("LN", "LNPre", "RMS", "RMSPre") and has_ln_weights
    norm_after = cfg.normalization_type
    centre = flags["center_writing_weights"] and norm_after in ("LN", "LNPre") and not getattr(cfg, "final_rms", False)
    return {"fold_ln": bool(fold), "center_writing_weights": bool(centre), "center_unembed": flags["center_unembed"],
            "fold_value_biases": flags["fold_value_biases"],
            "refactor_factored_attn_matrices": flags["refactor_factored_attn_matrices"]}


def applied_pretrained(flags: dict, cfg) -> dict:
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
    return applied_flags(flags, cfg, before, has_ln_weights=norm in ("LNPre", "RMSPre"))


# ------------------------------------------------------------------------------------ building
def load_dir(path: Path, flags: dict, *, random_init: bool, init_seed: int, device: str, dtype):
    """Build and process the model of a :func:`save_tlens` directory: ``(model, applied, saved config)``."""
    import torch

    HookedTransformer, HookedTransformerConfig = import_tlens()
    cfg, saved = read_config(path, HookedTransformerConfig, dtype=torch.float32, device="cpu")
    tokenizer = local_tokenizer(path, cfg)
    state = None if random_init else read_weights(path)
    init = cfg.init_weights
    cfg.init_weights = bool(random_init)  # trained weights overwrite every parameter: skip the init
    try:
        if random_init:
            torch.manual_seed(init_seed)
        with quiet():
            model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False,
                                      default_padding_side="right" if tokenizer is not None else None)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot build the model of {path / CONFIG_FILE}: {type(exc).__name__}: "
                              f"{one_line(exc)}") from exc
    model.cfg.init_weights = init
    if random_init:
        state = {name: p.detach().clone() for name, p in model.named_parameters()}
    else:
        check_weights(state, model, path)
        state = {k: v.float() for k, v in state.items()}  # processing in float32
    before = model.cfg.normalization_type
    has_ln = any(k.endswith((".ln1.w", ".ln2.w", "ln_final.w")) for k in state)
    try:
        with quiet():
            model.load_and_process_state_dict(state, **flags)
    except Exception as exc:
        raise CheckpointError(f"cannot load the weights of {path}: {type(exc).__name__}: {one_line(exc)}") from exc
    applied = applied_flags(flags, model.cfg, before, has_ln)
    model = place(model, device, dtype)
    return model, applied, saved


def load_pretrained(name: str, flags: dict, *, random_init: bool, init_seed: int, device: str, dtype):
    """Build (``random_init``) or download an official TransformerLens model: ``(model, applied)``."""
    import torch

    HookedTransformer, _ = import_tlens()
    what = f"TransformerLens model {name!r}"
    try:
        with quiet():
            if random_init:
                from transformer_lens import loading_from_pretrained as loading

                official = loading.get_official_model_name(name)
                cfg = loading.get_pretrained_model_config(official, device="cpu", dtype=torch.float32)
                torch.manual_seed(init_seed)
                model = HookedTransformer(cfg, move_to_device=False)
                before = model.cfg.normalization_type
                state = {k: p.detach().clone() for k, p in model.named_parameters()}
                model.load_and_process_state_dict(state, **flags)
                applied = applied_flags(flags, model.cfg, before, has_ln_weights=True)
            else:
                model = HookedTransformer.from_pretrained(name, device="cpu", dtype=torch.float32,
                                                          default_padding_side="right", **flags)
                applied = applied_pretrained(flags, model.cfg)
    except (ImportError, MemoryError):
        raise
    except Exception as exc:  # unknown names (ValueError), offline hub (OSError), HTTP errors...
        raise CheckpointError(f"cannot load {what}: {type(exc).__name__}: {one_line(exc)}") from exc
    model = place(model, device, dtype)
    return model, applied


def is_official(name: str) -> bool:
    """Whether TransformerLens knows ``name`` (an official name or an alias; offline, from its tables)."""
    try:
        with quiet():
            from transformer_lens import loading_from_pretrained as loading

            loading.get_official_model_name(name)
    except ValueError:
        return False
    return True


def place(model, device: str, dtype):
    """Move ``model`` to ``device`` and ``dtype`` (weights were processed in float32 on the CPU)."""
    import torch

    with quiet():
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
