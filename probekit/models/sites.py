"""TransformerLens hook names as aliases of probekit's sites.

probekit's ``resid`` layer 0 is the embeddings (tokens + positions) and layer l the residual
stream after block l; ``attn_out``, ``mlp_out`` and ``attn_pattern`` are indexed by block
l = 1..n (what block l adds). TransformerLens numbers blocks from 0, so:

=====================================  ==================================
TransformerLens hook                   probekit site, index
=====================================  ==================================
``hook_embed``                         ``resid`` layer 0 (see below)
``blocks.{i}.hook_resid_pre``          ``resid`` layer i
``blocks.{i}.hook_resid_post``         ``resid`` layer i + 1
``blocks.{i}.hook_attn_out``           ``attn_out`` block i + 1
``blocks.{i}.hook_mlp_out``            ``mlp_out`` block i + 1
``blocks.{i}.attn.hook_pattern``       ``attn_pattern`` block i + 1
=====================================  ==================================

(``hook_embed`` is layer 0 for probekit's toy models, whose ``hook_embed`` includes the
positions; in a TransformerLens model with separate ``hook_pos_embed`` the equivalent is
``blocks.0.hook_resid_pre``.) A store holds every layer of a site, so an alias caches (or
probes) its whole site; its layer is then ``ds.resid.sel(layer=...)`` or
``ds.attn_out.sel(block=...)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from probekit.errors import UsageError

CANONICAL = ("resid", "attn_out", "mlp_out", "attn_pattern")

# pattern -> (site, offset added to the block number i)
_ALIASES = (
    (re.compile(r"blocks\.(\d+)\.hook_resid_pre"), "resid", 0),
    (re.compile(r"blocks\.(\d+)\.hook_resid_post"), "resid", 1),
    (re.compile(r"blocks\.(\d+)\.hook_attn_out"), "attn_out", 1),
    (re.compile(r"blocks\.(\d+)\.hook_mlp_out"), "mlp_out", 1),
    (re.compile(r"blocks\.(\d+)\.attn\.hook_pattern"), "attn_pattern", 1),
)
ACCEPTED = ("hook_embed", "blocks.{i}.hook_resid_pre", "blocks.{i}.hook_resid_post", "blocks.{i}.hook_attn_out",
            "blocks.{i}.hook_mlp_out", "blocks.{i}.attn.hook_pattern")


@dataclass(frozen=True)
class SiteRef:
    """A site as asked for: its store variable and, for an alias, the layer (resid) or block it names."""

    site: str
    index: int | None = None
    alias: str | None = None
    tl_block: int | None = None  # the TransformerLens block number i in the alias

    @property
    def dim(self) -> str:
        return "layer" if self.site == "resid" else "block"

    def describe(self) -> str:
        return f"{self.alias} is {self.site} {self.dim} {self.index}"


def parse_site(name: str) -> SiteRef:
    """``"blocks.3.hook_resid_post"`` -> ``SiteRef("resid", 4, alias)``; other names pass through
    unchanged (canonical sites, or an adapter's own site names). A name that looks like a
    TransformerLens hook but has no probekit site is refused, listing the accepted forms."""
    if name == "hook_embed":
        return SiteRef("resid", 0, name)
    for pattern, site, offset in _ALIASES:
        match = pattern.fullmatch(name)
        if match:
            return SiteRef(site, int(match.group(1)) + offset, name, int(match.group(1)))
    if name.startswith(("blocks.", "hook_")):
        raise UsageError(f"TransformerLens hook {name!r} has no probekit site; accepted hooks: {', '.join(ACCEPTED)}")
    return SiteRef(name)


def canonical_sites(names, sizes: dict[str, int] | None = None) -> tuple[tuple[str, ...], list[SiteRef]]:
    """Site variables for ``names`` (aliases mapped, duplicates dropped, order kept) and the aliases
    among them. ``sizes`` (the model's site -> number of layers or blocks) lets a model's own site
    names through unchanged (a ``torch:`` module may have a ``blocks.0.mlp``) and checks that an
    alias's block exists."""
    refs = [SiteRef(n) if sizes is not None and n in sizes else parse_site(n) for n in names]
    for ref in refs:
        if ref.tl_block is not None and sizes is not None and ref.site in sizes:
            n_blocks = sizes["resid"] - 1 if "resid" in sizes else sizes[ref.site]  # resid: layers 0..n
            if ref.tl_block >= n_blocks:
                raise UsageError(f"{ref.alias}: the model has blocks.0 .. blocks.{n_blocks - 1}")
    sites = tuple(dict.fromkeys(r.site for r in refs))
    return sites, [r for r in refs if r.alias]


def alias_notes(names) -> list[str]:
    """One line per alias among ``names`` saying what it maps to (names that are not aliases are skipped)."""
    notes = []
    for name in names or ():
        try:
            ref = parse_site(name)
        except UsageError:
            continue  # the cache itself reports it (or it is a module path of a torch: model)
        if ref.alias:
            notes.append(f"{ref.describe()}: caching all of {ref.site} (a store holds every {ref.dim}; "
                         f"select it with ds.{ref.site}.sel({ref.dim}={ref.index}))")
    return notes
