"""Attention modules and layers, measured by a forward pass; the layer-spec language.

A *module* is one attention module; its kind (self/cross) is what it attended to at run time.
A *layer* is one attention position (a UNet transformer slot or a DiT block), numbered 1..N in
forward execution order. Layer specs select modules: `8-14`, `self:8-14`, `cross:*`, `up`,
`down,mid`, `self:8-14+cross:1` (union), `all`, `none`, `auto` (resolved from a LayerProfile by
the caller).

Examples:
    >>> from probing.models import load_model
    >>> table = measure_layer_table(load_model("testbed"))
    >>> [m.alias for m in table.select("self:8")]
    ['up0.a0.t0.attn1']
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch

from probing.errors import MelodiaError
from probing.hooks import AttentionCall, AttentionHooks

KINDS = ("self", "cross")
BLOCKS = ("down", "mid", "up")


@dataclass(frozen=True)
class ModuleInfo:
    """One attention module as measured: stable id (`path`), human alias, kind, layer number, sizes."""

    path: str
    alias: str
    kind: str
    layer: int
    position: str
    heads: int
    query_tokens: int
    key_tokens: int
    grid: tuple[int, int]


@dataclass(frozen=True)
class LayerTable:
    """All attention modules of a model in forward order, grouped into numbered layers."""

    model: str
    modules: tuple[ModuleInfo, ...]
    clip_seconds: float | None = None  # audio the measured forward covers: gives each query cell's duration

    @property
    def n_layers(self) -> int:
        return max((m.layer for m in self.modules), default=0)

    def counts(self) -> dict[str, int]:
        return {kind: sum(m.kind == kind for m in self.modules) for kind in KINDS}

    def select(self, spec: str) -> list[ModuleInfo]:
        """Modules matched by a layer spec (not `auto`: resolve that from a profile first)."""
        chosen = parse_layer_spec(spec, self)
        return [m for m in self.modules if (m.kind, m.layer) in chosen]

    def to_json(self) -> dict:
        return {"model": self.model, "n_layers": self.n_layers, "counts": self.counts(),
                "clip_seconds": self.clip_seconds, "modules": [asdict(m) for m in self.modules]}

    @classmethod
    def from_json(cls, data: dict) -> "LayerTable":
        modules = tuple(ModuleInfo(**{**m, "grid": tuple(m["grid"])}) for m in data["modules"])
        return cls(data["model"], modules, data.get("clip_seconds"))

    def cell_ms(self, module: ModuleInfo) -> float | None:
        """Milliseconds of audio one query cell of `module` spans in time (None: clip length unknown)."""
        return None if self.clip_seconds is None else 1000.0 * self.clip_seconds / module.grid[0]

    def format(self) -> str:
        """A plain-text table: layer, kind, alias, heads, tokens, grid (time x freq), ms per cell, module path."""
        rows = [f"{'layer':>5}  {'kind':5}  {'alias':22} {'heads':>5} {'query':>6} {'key':>5}  {'grid':9} "
                f"{'ms/cell':>7}  path"]
        for m in self.modules:
            grid, ms = f"{m.grid[0]}x{m.grid[1]}", self.cell_ms(m)
            rows.append(f"{m.layer:>5}  {m.kind:5}  {m.alias:22} {m.heads:>5} {m.query_tokens:>6} "
                        f"{m.key_tokens:>5}  {grid:9} {'-' if ms is None else f'{ms:.0f}':>7}  {m.path}")
        counts = self.counts()
        rows.append(f"{len({m.layer for m in self.modules})} layers, {len(self.modules)} attention modules "
                    f"({counts['self']} self, {counts['cross']} cross)")
        return "\n".join(rows)


def _short(position: str) -> str:
    short = position.replace("down_blocks.", "down").replace("up_blocks.", "up").replace("mid_block", "mid")
    return short.replace(".attentions.", ".a").replace("transformer_blocks.", "b").replace(".position", ".p")


def measure_layer_table(model) -> LayerTable:
    """Run one denoiser forward with hooks on every attention module and build the table from what ran."""
    calls: list[AttentionCall] = []
    paths = list(model.attention_modules())
    with AttentionHooks(model, paths, on_call=calls.append), torch.no_grad():
        model.denoiser(**model.dummy_denoiser_inputs(batch=1))
    if len(calls) != len(paths):
        missing = sorted(set(paths) - {c.path for c in calls})
        raise RuntimeError(f"{len(missing)} attention modules did not run in a forward pass (first: {missing[0]})")
    positions: dict[str, int] = {}
    transformers: dict[str, list[str]] = {}
    modules = []
    for call in calls:
        position = model.position_of(call.path)
        layer = positions.setdefault(position, len(positions) + 1)
        owner = call.path.rsplit(".", 1)[0]
        members = transformers.setdefault(position, [])
        if owner not in members:
            members.append(owner)
        query_tokens, key_tokens = call.query.shape[1], call.key.shape[1]
        alias = f"{_short(position)}.t{members.index(owner)}.{call.path.rsplit('.', 1)[1]}"
        modules.append(ModuleInfo(call.path, alias, call.kind, layer, position, call.module.heads, query_tokens,
                                  key_tokens, model.token_grid(query_tokens, call.latent_hw)))
    clip_samples = getattr(model, "clip_samples", None)
    seconds = clip_samples / model.sample_rate if clip_samples else getattr(model, "clip_seconds", None)
    return LayerTable(model.name, tuple(modules), seconds)


_SPEC_HELP = "e.g. 8-14, self:8-14, cross:*, up, down,mid, self:8-14+cross:1, all, none, auto"


def parse_layer_spec(spec: str, table: LayerTable) -> set[tuple[str, int]]:
    """`spec` -> the (kind, layer number) pairs it selects; `a+b` is the union of two specs.

    Raises MelodiaError naming the valid range.
    """
    text = spec.strip().lower()
    if text == "auto":
        raise MelodiaError("layer spec 'auto' needs a layer profile (--profile profile.json)")
    if text == "none":
        return set()
    return set().union(*(_parse_one(part.strip(), spec, table) for part in text.split("+")))


def _parse_one(text: str, spec: str, table: LayerTable) -> set[tuple[str, int]]:
    n = table.n_layers
    kinds, _, ranges = text.rpartition(":") if ":" in text else ("*", "", text)
    if kinds not in ("*", *KINDS):
        raise MelodiaError(f"bad layer spec {spec!r}: kind must be self, cross or * ({_SPEC_HELP})")
    chosen_kinds = KINDS if kinds == "*" else (kinds,)
    layers: set[int] = set()
    for item in ranges.split(","):
        item = item.strip()
        if item in ("*", "all"):
            layers |= set(range(1, n + 1))
        elif item in BLOCKS:
            block = {m.layer for m in table.modules if m.position.startswith(item)}
            if not block:
                raise MelodiaError(f"bad layer spec {spec!r}: {table.model} has no '{item}' block")
            layers |= block
        else:
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
            if not match:
                raise MelodiaError(f"bad layer spec {spec!r}: cannot read {item!r} ({_SPEC_HELP})")
            low, high = int(match[1]), int(match[2] or match[1])
            if not 1 <= low <= high <= n:
                raise MelodiaError(f"bad layer spec {spec!r}: {table.model} has layers 1-{n} ({_SPEC_HELP})")
            layers |= set(range(low, high + 1))
    return {(kind, layer) for kind in chosen_kinds for layer in layers}


def band_by_depth(blocks: int) -> str:
    """The paper's AudioLDM 2 band (self-attention positions 8-14 of 16: depth 7/16 to 14/16) at the same
    depth of a stack of `blocks` identical DiT blocks. A guess by depth, not a measurement.

    Examples:
        >>> band_by_depth(16), band_by_depth(24), band_by_depth(12), band_by_depth(6)
        ('self:8-14', 'self:11-21', 'self:6-10', 'self:3-5')
    """
    return f"self:{blocks * 7 // 16 + 1}-{max(1, round(blocks * 14 / 16))}"


def layer_names(modules: list[ModuleInfo]) -> list[str]:
    """The modules by the layer-spec language's names: "self:8", or "self:8/<alias>" where a layer holds several."""
    return typed_names([(m.kind, m.layer, m.alias) for m in modules])


def typed_names(entries: list[tuple[str, int, str]]) -> list[str]:
    """`layer_names` for (kind, layer, alias) triples, e.g. from a store's array attributes.

    Examples:
        >>> typed_names([("self", 8, "up1.a0.t0.attn1"), ("cross", 8, "up1.a0.t0.attn2"), ("cross", 8, "up1.a0.t1.attn2")])
        ['self:8', 'cross:8/up1.a0.t0.attn2', 'cross:8/up1.a0.t1.attn2']
    """
    counts: dict[tuple[str, int], int] = {}
    for kind, layer, _ in entries:
        counts[kind, layer] = counts.get((kind, layer), 0) + 1
    return [f"{kind}:{layer}" + (f"/{alias}" if counts[kind, layer] > 1 else "") for kind, layer, alias in entries]
