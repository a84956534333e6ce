"""Adapter for nnsight: ``nnsight:<hf hub name or local directory>[?remote=true]``.

Needs the ``nnsight`` extra (``pip install 'probekit-lab[nnsight]'``: nnsight >= 0.8 and
transformers); torch, transformers and nnsight are imported only inside functions, so ``import
probekit`` stays light.

The model is loaded exactly as ``hf:`` loads it (:meth:`HFAdapter.load <probekit.models.hf.HFAdapter.load>`:
safetensors first, no remote code, eager attention, ``--random-init``, ``--model-dtype``), then
wrapped in nnsight's ``TransformersModel``; every activation is read inside one
``model.trace(...)`` and handed back with ``nnsight.save``. Tokenising, the anatomy and the
padding rules are ``hf:``'s, so ``nnsight:<dir>`` caches what ``hf:<dir>`` caches (the tests
hold them equal to 1e-5 on tiny GPT-2 and Llama models).

Sites (``n`` = number of decoder blocks; where the modules are comes from
:data:`probekit.models.anatomy.FAMILIES`, nnsight's alias-map idea)
------------------------------------------------------------------------------------------------

* ``resid``, ``n + 1`` layers: layer 0 is the first block's input (the embeddings), layer ``l``
  block ``l``'s output (the last one before the final norm), as in ``hf:``;
* ``attn_out``, ``mlp_out``: ``n`` blocks, the main output of block ``l``'s attention / MLP module
  (``attn`` / ``self_attn``, ``mlp``): what it adds to the residual stream in a pre-norm block;
* ``attn_pattern``: ``n`` blocks ``[batch, block, head, query, key]``, the attention weights the
  attention module returns (eager attention: ``hf:``'s ``output_attentions``).

A site whose modules a family lacks is not offered (``sites`` lists what is).

Remote models (NDIF)
--------------------

``nnsight:meta-llama/Llama-3.1-8B?remote=true`` builds the model on the meta device (config and
tokenizer only; no weights are downloaded) and runs every trace with ``remote=True``: nnsight
sends the traced code to NDIF, which runs it on its copy of the model and returns the saved
activations. Set your key first (``python -c "from nnsight import CONFIG;
CONFIG.set_default_api_key('...')"``). That code path is real but is *not* exercised by
probekit's tests (they have no network); ``?remote=local`` runs the same serialised request
against the local model (nnsight's local simulation of the remote backend), and that is tested.
A remote model caches activations (``tokens``, ``tokenizer``, ``padding``) but declares no
``heads``, ``weights`` or ``patching``: those run probekit's hooks on local modules, so ``probekit
patch`` and head ablation refuse it in one line. Its ``model_hash`` is the hash of its config
(``model_hash_kind: config``): the weights are not here to hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from probekit.errors import CheckpointError, UsageError
from probekit.models.anatomy import component_path
from probekit.models.hf import HFAdapter, find_blocks, jsonable, text_config
from probekit.models.tlens_load import one_line

SITES = ("resid", "attn_out", "mlp_out", "attn_pattern")
EXTRA_HINT = "pip install 'probekit-lab[nnsight]'"
_REMOTE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "local": "local"}


def import_nnsight():
    """nnsight (>= 0.8: its ``TransformersModel``), or a one-line error naming the extra."""
    try:
        import nnsight
        from nnsight import TransformersModel  # noqa: F401  (0.8 and later)
    except ImportError as exc:
        raise UsageError(f"nnsight: models need nnsight >= 0.8: {EXTRA_HINT}") from exc
    return nnsight


def parse_options(rest: str, remote=None) -> tuple[str, bool | str]:
    """``"gpt2?remote=true"`` -> ``("gpt2", True)``; ``remote`` (not None) overrides the query."""
    name, sep, query = rest.partition("?")
    if sep and Path(rest).expanduser().is_dir():  # a directory whose name holds '?'
        name, query = rest, ""
    if not name:
        raise UsageError(f"model spec nnsight:{rest} names no model")
    found = False
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        if key != "remote":
            raise UsageError(f"nnsight option {key!r} is unknown; the only option is remote=true|false|local")
        if value.strip().lower() not in _REMOTE:
            raise UsageError(f"nnsight option remote={value!r}: give true, false or local")
        found = _REMOTE[value.strip().lower()]
    return name, found if remote is None else remote


def remote_tokenizer(name: str):
    """The tokenizer of a remote model (hub id) or of a local directory's model (no network)."""
    from transformers import AutoTokenizer

    local = Path(name).expanduser().is_dir()
    return AutoTokenizer.from_pretrained(name, **({"local_files_only": True} if local else {}))


def trace(lm, ids, mask, plan, *, remote=False, **forward):
    """Run one ``lm.trace`` and return ``{key: value}`` for ``plan``: ``(path, at, picks)`` in the
    order the model computes them, ``path`` an envoy path (``""``: the model), ``at`` ``"input"`` or
    ``"output"``, ``picks`` ``((key, index), ...)`` with ``index`` an int (of a tuple output; a
    lone tensor is index 0) or a str (an attribute: ``"logits"``). The traced block uses builtins
    only, so the same code runs on NDIF."""
    import nnsight
    import torch

    with torch.no_grad(), lm.trace(ids, attention_mask=mask, remote=remote, **forward):
        found = nnsight.save({})
        for path, at, picks in plan:
            envoy = lm.get(path) if path else lm
            value = envoy.input if at == "input" else envoy.output
            for key, index in picks:
                if isinstance(index, str):
                    found[key] = getattr(value, index)
                elif isinstance(value, (tuple, list)):
                    found[key] = value[index] if index < len(value) else None
                else:
                    found[key] = value if index == 0 else None
    return found


class NNsightAdapter(HFAdapter):
    """A transformers model run through nnsight: ``nnsight:gpt2``, ``nnsight:/path/to/saved_model``,
    ``nnsight:meta-llama/Llama-3.1-8B?remote=true``."""

    scheme = "nnsight"
    capabilities = HFAdapter.capabilities

    def __init__(self, lm, *, remote: bool | str = False, **hf):
        super().__init__(**hf)
        self.lm, self.remote = lm, remote
        if remote is True:  # no local weights: nothing to hook, read or ablate here
            self.capabilities = frozenset(type(self).capabilities)
        else:  # run(..., as_tensors=True) gives tensors on the local model's device
            self.capabilities = self.capabilities | {"tensors"}
        blocks = list(self.blocks)
        paths = {id(m): name for name, m in self.model.named_modules()}
        self.block_paths = [paths[id(b)] for b in blocks]
        family = getattr(self.config, "model_type", None) or ""
        self.parts = {kind: [component_path(b, family, kind) for b in blocks] for kind in ("attn", "mlp")}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, rest: str, *, random_init: bool = False, init_seed: int = 12345, device: str = "cpu",
             dtype=None, remote=None) -> "NNsightAdapter":
        """Load ``rest`` as ``hf:`` does and wrap it in nnsight; with ``?remote=true`` build only the
        meta model (config and tokenizer) and run every trace on NDIF (see the module docstring)."""
        name, remote = parse_options(rest, remote)
        nnsight = import_nnsight()
        spec = f"nnsight:{rest}"
        if remote is True:
            if random_init or dtype is not None:
                raise UsageError("a remote nnsight model runs NDIF's weights: --random-init and --model-dtype "
                                 "do not apply")
            try:
                lm = nnsight.TransformersModel(name, task="text-generation", tokenizer=remote_tokenizer(name))
            except Exception as exc:  # offline, unknown repo, gated model: one line
                raise CheckpointError(f"cannot load the config of remote model {name!r}: {type(exc).__name__}: "
                                      f"{one_line(exc)}") from exc
            model, tokenizer = lm._module, lm.tokenizer
            hf = {"random_init": False, "init_seed": init_seed, "device": "remote"}
        else:
            base = HFAdapter.load(name, random_init=random_init, init_seed=init_seed, device=device, dtype=dtype)
            model, tokenizer = base.model, base.tokenizer
            lm = nnsight.TransformersModel(model, tokenizer=tokenizer, task="text-generation")
            hf = {"random_init": random_init, "init_seed": init_seed, "device": base.device}
        tokenizer.padding_side = "right"  # nnsight left-pads causal LMs; probekit tokenises right-padded
        if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        config = model.config
        blocks = find_blocks(model, text_config(config).num_hidden_layers)
        return cls(lm, remote=remote, model=model, tokenizer=tokenizer, config=config, spec=spec,
                   blocks=blocks, is_causal_lm=True, **hf)

    # --------------------------------------------------------------- shape info
    @property
    def sites(self) -> dict[str, int]:
        n = self.n_layers
        out = {"resid": n + 1}
        if all(self.parts["attn"]):
            out.update({"attn_out": n, "attn_pattern": n})
        if all(self.parts["mlp"]):
            out["mlp_out"] = n
        return {site: out[site] for site in SITES if site in out}

    def site_layout(self, site: str, seq_len: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """Store dims and per-sample shape of ``site`` (``resid``: layers 0..n; the others: blocks 1..n)."""
        from probekit.errors import UnknownNameError
        from probekit.models.adapters import site_layout

        if site not in self.sites:
            raise UnknownNameError("site", site, self.sites)
        return site_layout(site, self.sites[site], seq_len, self.d_model, self.n_heads)

    def plan(self, sites) -> list:
        """The trace plan (see :func:`trace`) that reads ``sites`` and the logits."""
        plan = []
        for b, block in enumerate(self.block_paths):
            if b == 0 and "resid" in sites:
                plan.append((block, "input", (("resid", 0),)))
            attn = [(site, i) for site, i in (("attn_out", 0), ("attn_pattern", 1)) if site in sites]
            if attn:
                plan.append((f"{block}.{self.parts['attn'][b]}", "output", tuple((f"{s}.{b}", i) for s, i in attn)))
            if "mlp_out" in sites:
                plan.append((f"{block}.{self.parts['mlp'][b]}", "output", ((f"mlp_out.{b}", 0),)))
            if "resid" in sites:
                plan.append((block, "output", ((f"resid.{b + 1}", 0),)))
        return plan + [("", "output", (("logits", "logits"),))]

    # -------------------------------------------------------------------- run
    def run(self, inputs: np.ndarray, sites: list[str], valid: np.ndarray | None = None, *,
            as_tensors: bool = False):
        """Activations ``{site: [b, layer or block, ...]}`` (float32) and logits ``[b, T, vocab]``
        (float32), read in one nnsight trace. Invalid positions are zeroed, as in ``hf:``. With
        ``as_tensors`` (local models): torch tensors on the model's device, in the model's dtype."""
        import torch

        inputs, valid = self.checked_inputs(inputs, sites, valid, self.sites)
        ids = torch.as_tensor(inputs, dtype=torch.long, device=self._device)
        mask = torch.as_tensor(valid, dtype=torch.long, device=self._device)
        found = trace(self.lm, ids, mask, self.plan(sites), remote=self.remote, use_cache=False)
        keep = torch.as_tensor(valid, device=self._device)
        wide = (lambda t: t) if as_tensors else (lambda t: t.float())
        acts: dict = {}
        for site in sites:
            keys = ["resid"] + [f"resid.{b}" for b in range(1, self.n_layers + 1)] if site == "resid" \
                else [f"{site}.{b}" for b in range(self.n_layers)]
            if any(found[k] is None for k in keys):
                raise UsageError(f"{self.spec}: the attention modules return no weights (attn_pattern needs "
                                 "eager attention)")
            x = wide(torch.stack([found[k].detach().to(self._device) for k in keys], 1))
            mask_x = (keep[:, :, None] & keep[:, None, :])[:, None, None] if site == "attn_pattern" \
                else keep[:, None, :, None]
            acts[site] = x * mask_x
        logits = wide(found["logits"].detach().to(self._device)) * keep[:, :, None]
        if as_tensors:
            return acts, logits
        return {site: a.cpu().numpy() for site, a in acts.items()}, logits.cpu().numpy()

    @property
    def _device(self) -> str:
        return "cpu" if self.remote is True else self.device

    def token_logits(self, ids, valid, keep=None):
        """Logits ``[batch, pos, vocab]`` (or at positions ``keep``) from an nnsight trace of the local
        model; probekit's patching and ablation hooks sit on the modules the trace runs."""
        forward = {"use_cache": False}
        if keep is not None and "logits_to_keep" in self._forward_params:
            forward["logits_to_keep"] = keep
        found = trace(self.lm, ids, valid.long(), [("", "output", (("logits", "logits"),))],
                      remote=self.remote, **forward)
        out = found["logits"]
        return out if keep is None or "logits_to_keep" in forward else out[:, keep]

    # ------------------------------------------------------------- provenance
    def provenance(self) -> dict:
        from importlib.metadata import version

        if self.remote is True and self._hash is None:  # no weights here: hash what identifies the model
            text = json.dumps(jsonable(self.config.to_dict()), sort_keys=True)
            self._hash = hashlib.sha256(text.encode()).hexdigest()
        prov = super().provenance()
        prov.update({"nnsight_version": version("nnsight"), "remote": self.remote,
                     "model_hash_kind": "config" if self.remote is True else "weights"})
        if self.remote is True:
            prov["dtype"] = None  # NDIF's choice, not visible from the meta model
        return prov
