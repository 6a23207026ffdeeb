"""Capture: run prompts through a model and write every chosen layer's reduced maps to a Zarr store.

Each rank (torchrun / accelerate: RANK, WORLD_SIZE) captures the prompts of its own store shards
and writes each shard's prompts in one call; a killed run resumes from the store's `done` mask;
rank 0 consolidates the metadata once all prompts are in.

Examples:
    >>> from probing.models import load_model
    >>> from probing.prompts import load_prompts
    >>> model = load_model("testbed")
    >>> settings = CaptureSettings(layers="*", steps=2)
    >>> store = capture(model, load_prompts("testbed-small.yaml"), "maps.zarr", settings, progress=False)
    >>> bool(store.done_mask().all())
    True
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from probing.errors import MelodiaError
from probing.features import TEXT_EMBEDDING, TOKEN_SPANS
from probing.layers import LayerTable, ModuleInfo, measure_layer_table
from probing.maps import Reduction
from probing.prompts import PromptSet
from probing.recorder import AttentionRecorder
from probing.store import ArraySpec, CaptureStore
from probing.threads import configure_threads


@dataclass(frozen=True)
class CaptureSettings:
    """What a capture run records (part of the store's identity: a resume must match it)."""

    layers: str = "*"
    steps: int = 10
    step_indices: tuple[int, ...] | None = None  # which denoising steps to keep (None: all)
    guidance: float = 3.0
    seed: int = 0
    # prompt i starts from noise seed + i; False: every prompt from the same noise (the confounded protocol:
    # with one noise, any prompt dependence of a map is decodable, even a random denoiser's)
    seed_per_prompt: bool = True
    reduction: Reduction = Reduction()
    random_denoiser: int | None = None  # seed: capture a freshly initialised denoiser (the probes' baseline)


def config_hash(model) -> str:
    """A short hash of the denoiser's config: two stores of one hash come from one architecture."""
    config = json.dumps(dict(model.denoiser.config), sort_keys=True, default=str)
    return hashlib.sha256(config.encode()).hexdigest()[:16]


def pooled_text_embedding(model, prompt: str) -> np.ndarray:
    """Mean and max over tokens of every float tensor (not masks) the denoiser is conditioned on: the
    text-only baseline's input, one fixed-length vector per prompt."""
    with torch.no_grad():
        cond = model.encode_prompt([prompt], guidance=1.0)
    parts = []
    for name, value in cond.kwargs.items():  # attention masks (float in some families) vary with the prompt's length
        if torch.is_tensor(value) and value.is_floating_point() and "mask" not in name:
            sample = value[0].float()
            # (tokens, dim) -> mean and max over tokens, whatever the prompt's length; (dim,) as it is
            parts += [sample.mean(0), sample.amax(0)] if sample.ndim == 2 else [sample.reshape(-1)]
    if not parts:
        raise RuntimeError(f"{model.name}: encode_prompt returned no float tensor to embed")
    return torch.cat(parts).cpu().numpy()


@contextmanager
def randomized_denoiser(model, seed: int | None) -> Iterator[None]:
    """Within the block the denoiser has fresh seeded weights (same config); the text encoder stays.

    The probes' random-weights baseline: what the maps show when nothing was learned. None: no-op.
    """
    if seed is None:
        yield
        return
    key = "unet" if hasattr(model.pipeline, "unet") else "transformer"
    trained = model.denoiser
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(trained).from_config(trained.config).to(device=model.device, dtype=model.dtype).eval()
    model.pipeline.register_modules(**{key: fresh})
    try:
        yield
    finally:
        model.pipeline.register_modules(**{key: trained})


def prompt_token_spans(model, prompts: PromptSet) -> tuple[list[str], np.ndarray] | None:
    """(slot names + "prompt", (n_prompts, n_slots + 1, 2) token ranges on the key axis), or None when the
    prompt set has no slots or the model's cross-attention keys are not its prompt's tokens."""
    if not prompts.slot_spans or not prompts.labels:
        return None
    slots = sorted(prompts.labels)
    names = [*slots, "prompt"]
    rows = []
    for text, spans in zip(prompts.prompts, prompts.slot_spans):
        tokens = model.token_spans(text, {k: spans[k] for k in slots if k in spans})
        if tokens is None:
            return None
        rows.append([tokens.get(name, (-1, -1)) for name in names])
    return names, np.asarray(rows, dtype=np.int32)


def map_spec(module: ModuleInfo, n_steps: int, reduction: Reduction, word_keys: bool = False) -> ArraySpec:
    """The store array for one module's maps: (step, [cfg], [head], query, key)."""
    shape, dims = [n_steps], ["step"]
    if reduction.batch == "both":
        shape, dims = shape + [2], dims + ["cfg"]
    if reduction.heads == "all":
        shape, dims = shape + [module.heads], dims + ["head"]
    query_grid = reduction.pooled(module.grid)
    keys = query_grid[0] * query_grid[1] if module.kind == "self" else module.key_tokens
    attrs = {"module": module.path, "alias": module.alias, "kind": module.kind, "layer": module.layer,
             "query_grid": list(query_grid), "key_grid": list(query_grid) if module.kind == "self" else None,
             "word_keys": module.kind == "cross" and word_keys}
    return ArraySpec(f"{module.path}/{module.kind}", (*shape, query_grid[0] * query_grid[1], keys),
                     (*dims, "query", "key"), attrs=attrs)


def pad_keys(maps: np.ndarray, n_keys: int, path: str) -> np.ndarray:
    """Zero-pad the key axis of cross maps whose text length varies per prompt (T5 pads to the longest)."""
    missing = n_keys - maps.shape[-1]
    if missing < 0:
        raise RuntimeError(f"{path}: {maps.shape[-1]} keys, more than the {n_keys} of the layer table")
    return np.pad(maps, [(0, 0)] * (maps.ndim - 1) + [(0, missing)]) if missing else maps


def _timesteps(model, settings: CaptureSettings) -> list[float]:
    all_steps = model.sampling_timesteps(settings.steps)
    if settings.step_indices is None:
        return all_steps
    bad = [i for i in settings.step_indices if not 0 <= i < len(all_steps)]
    if bad:
        raise MelodiaError(f"step index {bad[0]} is outside 0-{len(all_steps) - 1} for --steps {settings.steps}")
    return [all_steps[i] for i in settings.step_indices]


def _with_context_tokens(table: LayerTable, tokens: int) -> LayerTable:
    """The table with every cross-attention module's key count raised to `tokens` (the prompts' longest context)."""
    modules = [replace(m, key_tokens=max(m.key_tokens, tokens)) if m.kind == "cross" else m for m in table.modules]
    return LayerTable(table.model, tuple(modules), table.clip_seconds)


def distributed_rank() -> tuple[int, int]:
    """(rank, world) from torchrun / accelerate environment variables; (0, 1) when run alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def open_store(model, prompts: PromptSet, url: str, settings: CaptureSettings, table: LayerTable,
               rank: int = 0, world: int = 1, overwrite: bool = False,
               spans: tuple[list[str], np.ndarray] | None = None) -> tuple[CaptureStore, list[ModuleInfo]]:
    """Create (or resume) the store for this run; returns it with the selected modules.

    `spans` (from `prompt_token_spans`) adds the per-prompt word token ranges array."""
    if settings.reduction.batch == "both" and settings.guidance <= 1.0:
        raise MelodiaError("batch=both keeps both halves of the CFG batch, but guidance <= 1 runs no CFG batch; "
                           "use batch=cond or --guidance above 1")
    modules = table.select(settings.layers)
    if not modules:
        raise MelodiaError(f"layer spec {settings.layers!r} selects no attention module of {model.name}")
    timesteps = _timesteps(model, settings)
    identity = {"model": model.name, "family": model.family, "config_hash": config_hash(model),
                "layers": settings.layers, "steps": settings.steps, "timesteps": timesteps,
                "guidance": settings.guidance, "seed": settings.seed, "reduction": settings.reduction.to_json()}
    if settings.random_denoiser is not None:
        identity["random_denoiser"] = settings.random_denoiser
    if settings.seed_per_prompt:
        identity["seed_per_prompt"] = True
    embedding = pooled_text_embedding(model, "")
    specs = [map_spec(m, len(timesteps), settings.reduction, spans is not None and model.keys_are_prompt_tokens(m))
             for m in modules]
    specs.append(ArraySpec(TEXT_EMBEDDING, embedding.shape, ("embedding",), "float32", attrs={"kind": "text"}))
    if spans is not None:
        specs.append(ArraySpec(TOKEN_SPANS, spans[1].shape[1:], ("slot", "bound"), "int32",
                               attrs={"kind": "spans", "slots": spans[0]}))
    store = CaptureStore.open_for_rank(url, rank=rank, world=world, prompts=prompts.prompts, specs=specs,
                                       identity=identity, labels=prompts.labels or None,
                                       template_ids=prompts.template_ids or None,
                                       attrs={"layer_table": table.to_json(), "prompt_set": prompts.name},
                                       overwrite=overwrite)
    return store, modules


def capture(model, prompts: PromptSet, url: str, settings: CaptureSettings = CaptureSettings(),
            overwrite: bool = False, progress: bool = True) -> CaptureStore:
    """Capture `prompts` into the store at `url` (resuming what is already there)."""
    with randomized_denoiser(model, settings.random_denoiser):
        return _capture(model, prompts, url, settings, overwrite, progress)


def _capture(model, prompts: PromptSet, url: str, settings: CaptureSettings, overwrite: bool,
             progress: bool) -> CaptureStore:
    rank, world = distributed_rank()
    configure_threads()  # one launch's ranks share the cores instead of fighting over them
    table = _with_context_tokens(measure_layer_table(model), model.context_tokens(prompts.prompts))
    spans = prompt_token_spans(model, prompts)
    store, modules = open_store(model, prompts, url, settings, table, rank, world, overwrite, spans)
    # The prompts of one shard are written together, in one call per array (each shard object encoded
    # once), while the next shard's prompts are generated: two shards of maps in memory at most, each
    # within the store's SHARD_BYTES.
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending_write = None
        todo = store.pending(rank, world)
        mine = sum(store.owner(i, world) == rank for i in range(len(store.prompts)))
        if progress and len(todo) < mine:
            print(f"resuming {store.url}: {mine - len(todo)} of {mine} prompts already captured", flush=True)
        bar = tqdm(total=len(todo), desc=f"capture (rank {rank}/{world})", disable=not progress)
        for batch in store.shard_batches(todo):
            stacked = {spec.name: np.empty((len(batch), *spec.shape), spec.dtype) for spec in store.specs}
            for row, index in enumerate(batch):  # each prompt's maps go straight into the shard's arrays
                for name, values in _capture_prompt(model, prompts, index, modules, store, settings, spans).items():
                    stacked[name][row] = values
                bar.update()
            if pending_write is not None:
                pending_write.result()  # re-raises a failed write here
            pending_write = writer.submit(store.write_prompts, batch, stacked)
        if pending_write is not None:
            pending_write.result()
        bar.close()
    _finish(store, rank, world)
    return store


def _capture_prompt(model, prompts: PromptSet, index: int, modules: list[ModuleInfo], store: CaptureStore,
                    settings: CaptureSettings, spans: tuple[list[str], np.ndarray] | None) -> dict[str, np.ndarray]:
    """Generate prompt `index` under the recorder; its maps (and text embedding, word spans) by array name."""
    timesteps = store.identity["timesteps"]
    with AttentionRecorder(model, modules, settings.reduction, timesteps=timesteps) as recorder:
        seed = settings.seed + index if settings.seed_per_prompt else settings.seed
        model.generate(prompts.prompts[index], settings.steps, settings.guidance, seed, decode=False)
    maps = _prompt_maps(recorder, modules, store.specs, timesteps, settings.reduction)
    maps[TEXT_EMBEDDING] = pooled_text_embedding(model, prompts.prompts[index])
    if spans is not None:
        maps[TOKEN_SPANS] = spans[1][index]
    return maps


def _prompt_maps(recorder: AttentionRecorder, modules: list[ModuleInfo], specs: list[ArraySpec],
                 timesteps: list[float], reduction: Reduction) -> dict[str, np.ndarray]:
    """The recorder's maps of one prompt, shaped as the store's arrays."""
    maps = {}
    for module, spec in zip(modules, specs):
        recorded, stacked = recorder.stacked(module.path)
        if recorded != timesteps:
            raise RuntimeError(f"{module.path}: recorded timesteps {recorded} differ from the plan {timesteps}")
        if reduction.heads == "mean":
            stacked = stacked[:, :, 0]
        stacked = stacked[:, 0] if reduction.batch == "cond" else stacked
        maps[spec.name] = pad_keys(stacked, spec.shape[-1], module.path)
    return maps


def _finish(store: CaptureStore, rank: int, world: int) -> None:
    """Wait for every rank (gloo barrier under torchrun), then rank 0 consolidates a complete store."""
    if world > 1 and torch.distributed.is_available() and "MASTER_ADDR" in os.environ:
        started_here = not torch.distributed.is_initialized()
        if started_here:
            torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
        torch.distributed.barrier()
        if started_here:
            torch.distributed.destroy_process_group()
    if rank == 0 and bool(np.all(store.done_mask())):
        store.consolidate()
