"""The capture store: one Zarr v3 group per run, one sharded array per captured map.

Layout (docs/store.md): arrays shaped ``(prompt, *spec.shape)``, a block of
``prompts_per_shard`` consecutive prompts per shard, fp16, blosc-zstd with shuffle,
``dimension_names`` set; beside them ``prompts``, ``labels/<attribute>``, ``template_id``
(-1 = unknown) and the per-prompt ``done`` mask. Shard ``s`` belongs to rank ``s % w``: a rank
writes whole shards of its own only, and sets ``done[i]`` after the maps of prompt ``i``; a killed
run resumes from ``done``. Maps are encoded by the zarrs codec pipeline (Rust) when it is
installed; the bytes are plain Zarr v3, so zarr-python and xarray read them without it.

Examples:
    >>> store = CaptureStore.create("memory://doc.zarr", prompts=["a", "b"], identity={"model": "m"},
    ...     specs=[ArraySpec("blk.attn1/self", (2, 4, 4), ("step", "query", "key"))])
    >>> store.pending()
    [0, 1]
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

import fsspec
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle
from zarr.core.sync import sync

from probing.errors import NotACaptureStoreError, StoreMismatchError

__all__ = ["ArraySpec", "CaptureStore", "NotACaptureStoreError", "StoreMismatchError", "open_capture"]

FORMAT, FORMAT_VERSION, PROMPT_DIM = "melodia-capture", 1, "prompt"
_RESERVED = {"prompts", "template_id", "done", "labels"}
MAX_PROMPTS_PER_SHARD = 8
SHARD_BYTES = 64 * 2**20  # at most this much of (uncompressed) maps per shard: capture holds two shards in memory
ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"
_codec_lock = threading.Lock()


def fast_codecs_available() -> bool:
    """True when the store encodes with the zarrs codec pipeline (Rust, PyPI `zarrs`): installed, and
    not switched off with the environment variable ``MELODIA_ZARRS=0``."""
    return os.environ.get("MELODIA_ZARRS", "1") != "0" and importlib.util.find_spec("zarrs") is not None


@contextlib.contextmanager
def _fast_codecs() -> Iterator[None]:
    """Arrays opened inside the block encode and decode with zarrs when it is installed.

    zarr-python picks an array's codec pipeline when the array object is built, so the global
    config is switched only for that moment (under a lock) and the user's own zarr use is untouched.
    With `OMP_NUM_THREADS` set (by the user or by probing.threads for a rank), zarrs' thread pool
    takes that many threads too.
    """
    if not fast_codecs_available():
        yield
        return
    settings = {"codec_pipeline.path": ZARRS_PIPELINE}
    threads = os.environ.get("OMP_NUM_THREADS", "")  # this process's share of the cores (probing.threads)
    if threads.isdigit() and int(threads) > 0:
        settings["threading.max_workers"] = int(threads)  # zarrs' own pool: no more threads than torch's
    with _codec_lock, zarr.config.set(settings):
        yield


def default_prompts_per_shard(n_prompts: int, world: int = 1, prompt_bytes: int = 0) -> int:
    """Prompts per shard for a new store: up to 8 (each shard object costs a write), but small enough
    that every one of `world` ranks owns several shards and a shard's maps stay within `SHARD_BYTES`
    (`prompt_bytes`: one prompt's maps, uncompressed).

    Examples:
        >>> default_prompts_per_shard(1024), default_prompts_per_shard(12, world=2)
        (8, 1)
        >>> default_prompts_per_shard(1024, prompt_bytes=40 * 2**20)   # 40 MB of maps per prompt
        1
    """
    by_size = SHARD_BYTES // prompt_bytes if prompt_bytes else MAX_PROMPTS_PER_SHARD
    return max(1, min(MAX_PROMPTS_PER_SHARD, by_size, n_prompts // (4 * max(1, world))))


def prompt_bytes(specs: list[ArraySpec]) -> int:
    """Bytes of one prompt's arrays, uncompressed."""
    return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in specs)


async def _gather(coroutines: list) -> None:
    await asyncio.gather(*coroutines)


def _jsonable(value):
    """`value` as it comes back from Zarr attrs (tuples -> lists, numpy scalars -> Python)."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


@dataclass(frozen=True)
class ArraySpec:
    """One captured map: its name, per-prompt shape and dimension names, dtype, attrs.

    Examples:
        >>> spec = ArraySpec("down.attn1/self", (10, 64, 64), ("step", "query", "key"))
        >>> spec.array_name, spec.inner_chunks                # one prompt's maps are one inner chunk
        ('down.attn1--self', (10, 64, 64))
        >>> ArraySpec("down.attn1/self", (10, 64, 64), ("step", "query", "key"), chunks=(1, 64, 64)).inner_chunks
        (1, 64, 64)
    """

    name: str
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    dtype: str = "float16"
    attrs: dict = field(default_factory=dict, hash=False)
    chunks: tuple[int, ...] | None = None  # inner chunk of one prompt; default: the whole prompt

    def __post_init__(self) -> None:
        chunks = None if self.chunks is None else tuple(int(c) for c in self.chunks)
        for key, value in [("shape", tuple(int(s) for s in self.shape)), ("dims", tuple(map(str, self.dims))),
                           ("dtype", str(np.dtype(self.dtype))), ("attrs", _jsonable(dict(self.attrs))),
                           ("chunks", chunks)]:
            object.__setattr__(self, key, value)  # normalised, so specs compare equal after a JSON round trip
        if not self.name or len(self.dims) != len(self.shape) or PROMPT_DIM in self.dims:
            raise ValueError(f"bad ArraySpec {self.name!r}: need a name and one dim name per axis of "
                             f"{self.shape}, without {PROMPT_DIM!r} (the store adds it); got {self.dims}")
        inner = self.inner_chunks
        if len(inner) != len(self.shape) or any(c < 1 or s % c for s, c in zip(self.shape, inner)):
            raise ValueError(f"ArraySpec {self.name!r}: chunks {self.chunks} must divide shape {self.shape}")

    @property
    def array_name(self) -> str:
        """Zarr array key: the name with '/' replaced by '--' (dots are kept)."""
        return self.name.replace("/", "--")

    @property
    def inner_chunks(self) -> tuple[int, ...]:
        """Chunk shape inside a prompt's shard: `chunks`, else the whole prompt.

        One inner chunk per shard by default: zarr-python's sharding codec costs per inner chunk
        (measured 35 vs 15 ms per prompt-array, benchmarks/zarr_throughput.py), and a reduced map
        of one prompt is small enough to read whole.
        """
        if self.chunks is not None:
            return self.chunks
        return self.shape

    def to_json(self) -> dict:
        """Plain dict for the layer table (inverse: ``ArraySpec(**d)``)."""
        return _jsonable(asdict(self))


def _package_version() -> str:
    try:
        return version("melodia")
    except PackageNotFoundError:
        return "0+unknown"


def _store_dims(specs: list[ArraySpec]) -> dict[str, tuple[str, ...]]:
    """Dimension names per array; a name used with several sizes becomes `name_<size>` so xarray opens."""
    sizes: dict[str, set[int]] = {}
    for spec in specs:
        for dim, size in zip(spec.dims, spec.shape):
            sizes.setdefault(dim, set()).add(size)
    return {s.name: (PROMPT_DIM, *(d if len(sizes[d]) == 1 else f"{d}_{n}" for d, n in zip(s.dims, s.shape)))
            for s in specs}


def _probe(url: str) -> dict | None:
    """The store's `melodia` attrs; None if nothing is there; NotACaptureStoreError otherwise."""
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(root) or (fs.isdir(root) and not fs.ls(root)):
        return None
    try:
        meta = zarr.open_group(url, mode="r", use_consolidated=False).attrs.get("melodia")
    except (FileNotFoundError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise NotACaptureStoreError(f"{url} exists but is not a melodia capture store: "
                                    "choose another path or pass overwrite=True (--overwrite) to replace it")
    return meta


def _plan(prompts: list[str], specs: list[ArraySpec], identity: dict, labels: dict | None = None,
          template_ids: list[int] | None = None, attrs: dict | None = None,
          prompts_per_shard: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Validate `create`'s arguments; return the `melodia` attrs and the per-prompt columns."""
    prompts, labels = [str(p) for p in prompts], labels or {}
    per_shard = (default_prompts_per_shard(len(prompts), prompt_bytes=prompt_bytes(specs)) if prompts_per_shard is None
                 else int(prompts_per_shard))
    if per_shard < 1:
        raise ValueError(f"prompts_per_shard must be >= 1, got {prompts_per_shard}")
    ids = np.full(len(prompts), -1, dtype=np.int64) if template_ids is None else np.asarray(template_ids, np.int64)
    names = [s.array_name for s in specs]
    if not prompts or not specs or len(set(names)) != len(names) or ids.shape != (len(prompts),):
        raise ValueError("need >= 1 prompt, >= 1 ArraySpec with distinct names ('/' maps to '--'), "
                         "and one template id per prompt")
    if set(names) & _RESERVED:
        raise ValueError(f"ArraySpec names {sorted(set(names) & _RESERVED)} are reserved; rename them")
    bad = [k for k, v in labels.items() if len(v) != len(prompts) or "/" in k or not k]
    if bad:
        raise ValueError(f"labels {bad}: each needs a '/'-free name and one value per prompt ({len(prompts)})")
    meta = _jsonable({"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": _package_version(),
                      "created_at": datetime.now(timezone.utc).isoformat(), "identity": identity,
                      "attrs": attrs or {}, "layers": [s.to_json() for s in specs], "labels": sorted(labels),
                      "n_prompts": len(prompts), "prompts_per_shard": per_shard, "initialised": False,
                      "prompts_sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()})
    columns = {"prompts": np.asarray(prompts, dtype=str), "template_id": ids,
               **{f"labels/{k}": np.asarray([str(x) for x in v], dtype=str) for k, v in labels.items()}}
    return meta, columns


def _raise_if_different(url: str, old: dict, new: dict) -> None:
    """StoreMismatchError saying what differs (identity, prompts, arrays) between two runs."""
    def short(value) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    diffs = [f"identity[{k!r}]: stored {short(old['identity'].get(k))} != given {short(new['identity'].get(k))}"
             for k in sorted(set(old["identity"]) | set(new["identity"]))
             if old["identity"].get(k) != new["identity"].get(k)]
    if old["prompts_sha256"] != new["prompts_sha256"]:
        diffs.append(f"prompt list ({old['n_prompts']} prompts stored, {new['n_prompts']} given, text differs)")
    old_specs, new_specs = ({s["name"]: s for s in m["layers"]} for m in (old, new))
    changed = [name for name in sorted(set(old_specs) | set(new_specs)) if old_specs.get(name) != new_specs.get(name)]
    if changed:
        diffs.append(f"{len(changed)} arrays differ (first: {changed[0]!r})")
    if diffs:
        raise StoreMismatchError(f"{url} holds another capture run ({'; '.join(diffs)}): "
                                 "choose another path or pass overwrite=True (--overwrite)")


class CaptureStore:
    """A capture run on disk (or any fsspec URL). Build with `create`, `open` or `open_for_rank`.

    Examples:
        >>> store = open_capture("memory://doc.zarr")
        >>> store.read("blk.attn1/self").shape
        (2, 2, 4, 4)
    """

    def __init__(self, url: str, group: zarr.Group, meta: dict) -> None:
        self.url, self._group = url, group
        self.read_only = group.read_only
        self.identity: dict = meta["identity"]
        self.attrs: dict = meta["attrs"]
        self.specs: list[ArraySpec] = [ArraySpec(**d) for d in meta["layers"]]
        self._specs = {s.name: s for s in self.specs}
        self.prompts: list[str] = [str(p) for p in group["prompts"][:]]
        self.labels: dict[str, list[str]] = {k: [str(v) for v in group[f"labels/{k}"][:]] for k in meta["labels"]}
        self.template_ids: np.ndarray = np.asarray(group["template_id"][:], dtype=np.int64)
        self.prompts_per_shard: int = int(meta.get("prompts_per_shard", 1))  # stores before it had 1
        self._arrays: dict[tuple[str, bool], zarr.Array] = {}  # opened once: every group lookup reads metadata
        self._written: np.ndarray | None = None  # done mask as this writer knows it (it owns the shards it writes)

    def _array(self, key: str, fast: bool = True) -> zarr.Array:
        """Array `key`, encoded by zarrs (`fast`) or by zarr-python, whose local writes replace a shard
        atomically (temporary file, then rename); zarrs overwrites it in place."""
        if (key, fast) not in self._arrays:
            if fast:
                with _fast_codecs():
                    self._arrays[key, fast] = self._group[key]
            else:
                self._arrays[key, fast] = self._group[key]
        return self._arrays[key, fast]

    @classmethod
    def create(cls, url: str, *, prompts: list[str], specs: list[ArraySpec], identity: dict,
               labels: dict[str, list[str]] | None = None, template_ids: list[int] | None = None,
               attrs: dict | None = None, overwrite: bool = False,
               prompts_per_shard: int | None = None) -> CaptureStore:
        """Create the store, or reopen it for resuming when it holds the same run.

        Same identity, prompts and specs -> the existing store (stored labels/attrs win); another
        run -> StoreMismatchError; anything else at `url` -> NotACaptureStoreError. Nothing is
        written in those cases. `overwrite=True` replaces whatever is there. One process only.
        `prompts_per_shard` (default `default_prompts_per_shard`) is a layout choice, not part of
        the run: a resumed store keeps its own.

        Examples:
            >>> s = CaptureStore.create("memory://c.zarr", prompts=["p"], identity={"model": "m"},
            ...     specs=[ArraySpec("a/self", (1, 2, 2), ("step", "query", "key"))], overwrite=True)
            >>> s.done_mask().tolist()
            [False]
        """
        url = str(url)
        meta, columns = _plan(prompts, specs, identity, labels, template_ids, attrs, prompts_per_shard)
        existing = None if overwrite else _probe(url)
        if existing is not None and existing.get("initialised"):
            _raise_if_different(url, existing, meta)
            return cls.open(url, mode="r+")
        # Absent, half-created (a crash before `initialised`), or overwrite: build it from scratch.
        group = zarr.create_group(url, overwrite=True, zarr_format=3, attributes={"melodia": meta})
        compressor = BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.shuffle)
        per_shard = meta["prompts_per_shard"]
        for spec, dims in zip(specs, _store_dims(specs).values()):
            fill = np.nan if np.dtype(spec.dtype).kind == "f" else 0
            group.create_array(spec.array_name, shape=(meta["n_prompts"], *spec.shape), dtype=spec.dtype,
                               shards=(per_shard, *spec.shape), chunks=(1, *spec.inner_chunks),
                               compressors=[compressor],
                               fill_value=fill, dimension_names=dims,
                               attributes={**spec.attrs, "melodia_name": spec.name, "melodia_dims": list(spec.dims)})
        for key, values in columns.items():
            group.create_array(key, shape=values.shape, dtype=str if values.dtype.kind == "U" else values.dtype,
                               chunks=values.shape, dimension_names=(PROMPT_DIM,),
                               fill_value=-1 if values.dtype.kind == "i" else "")[:] = values
        # One chunk per shard of prompts, so that ranks never write into the same object.
        group.create_array("done", shape=(meta["n_prompts"],), dtype=bool, chunks=(per_shard,), fill_value=False,
                           dimension_names=(PROMPT_DIM,))
        group.update_attributes({"melodia": {**meta, "initialised": True}})  # last: marks it complete
        return cls.open(url, mode="r+")

    @classmethod
    def open(cls, url: str, mode: str = "r") -> CaptureStore:
        """Open an existing, fully created store; mode "r" (read) or "r+" (write prompts).

        Examples:
            >>> s = CaptureStore.open("memory://doc.zarr")
            >>> len(s.prompts)
            2
        """
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}; use CaptureStore.create to make a store")
        url = str(url)
        meta = _probe(url)
        if meta is None:
            raise FileNotFoundError(f"no capture store at {url}: create it with CaptureStore.create")
        if not meta.get("initialised"):
            raise NotACaptureStoreError(f"{url} is half-created (its creation was interrupted): "
                                        "run CaptureStore.create again to rebuild it")
        group = zarr.open_group(url, mode=mode, use_consolidated=None if mode == "r" else False)
        return cls(url, group, meta)

    @classmethod
    def open_for_rank(cls, url: str, *, rank: int, world: int, timeout: float = 600.0, poll: float = 0.5,
                      **create_kwargs) -> CaptureStore:
        """Every rank calls this with the same arguments as `create`: rank 0 creates (or resumes),
        the others wait (up to `timeout` s) for a fully created store of the same run, then open it.
        Not safe with ``overwrite=True`` on a path holding an old run unless ranks barrier after it.

        Examples:
            >>> s = CaptureStore.open_for_rank("memory://doc.zarr", rank=1, world=2, prompts=["a", "b"],
            ...     identity={"model": "m"},
            ...     specs=[ArraySpec("blk.attn1/self", (2, 4, 4), ("step", "query", "key"))])
            >>> s.pending(rank=1, world=2)
            [1]
        """
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        if rank == 0:
            if create_kwargs.get("prompts_per_shard") is None:
                create_kwargs["prompts_per_shard"] = default_prompts_per_shard(
                    len(create_kwargs["prompts"]), world, prompt_bytes(create_kwargs["specs"]))
            return cls.create(url, **create_kwargs)
        overwrite = create_kwargs.pop("overwrite", False)
        meta, _ = _plan(**create_kwargs)
        deadline, last = time.monotonic() + timeout, "nothing there yet"
        while True:
            try:
                existing = _probe(str(url))
                if existing is not None and existing.get("initialised"):
                    _raise_if_different(str(url), existing, meta)
                    return cls.open(url, mode="r+")
            except StoreMismatchError as err:
                if not overwrite:  # rank 0 fails the same way; with overwrite it replaces the old store
                    raise
                last = str(err)
            except NotACaptureStoreError as err:  # also seen mid-creation (zarr.json not written yet)
                last = str(err)
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {rank}: rank 0 did not create the store at {url} within {timeout}s "
                                   f"(last seen: {last})")
            time.sleep(poll)

    def _check_writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"{self.url} is open read-only: use CaptureStore.open(url, mode='r+')")

    def done_mask(self) -> np.ndarray:
        """Bool per prompt: True once all its maps are written (read fresh from the store)."""
        return np.asarray(self._array("done", fast=False)[:], dtype=bool)

    def owner(self, index: int, world: int) -> int:
        """The rank (of `world`) that writes prompt `index`: the owner of its shard."""
        return (index // self.prompts_per_shard) % world

    def pending(self, rank: int = 0, world: int = 1) -> list[int]:
        """Prompt indices this rank still has to write (in its own shards) and not done yet.

        Examples:
            >>> s = open_capture("memory://doc.zarr")
            >>> s.pending(rank=0, world=2)
            [0]
        """
        done = self.done_mask()
        return [i for i in range(len(done)) if not done[i] and self.owner(i, world) == rank]

    def shard_batches(self, indices: list[int]) -> list[list[int]]:
        """`indices` grouped by shard, in order: the prompts to write together in one `write_prompts`.

        Examples:
            >>> open_capture("memory://doc.zarr").shard_batches([0, 1])
            [[0], [1]]
        """
        batches: dict[int, list[int]] = {}
        for index in indices:
            batches.setdefault(index // self.prompts_per_shard, []).append(index)
        return list(batches.values())

    def write_prompt(self, index: int, maps: dict[str, np.ndarray]) -> None:
        """Write every map of prompt `index`, then mark it done (`write_prompts` for one prompt).

        `maps` must hold exactly the spec names with their exact per-prompt shapes (ValueError,
        nothing written, otherwise). Values are cast to the spec dtype.

        Examples:
            >>> s = CaptureStore.open("memory://doc.zarr", mode="r+")
            >>> s.write_prompt(0, {"blk.attn1/self": np.zeros((2, 4, 4))})
        """
        self.write_prompts([index], {name: np.asarray(m)[None] for name, m in maps.items()})

    def write_prompts(self, indices: list[int], maps: dict[str, np.ndarray]) -> None:
        """Write the maps of several prompts, one array call each (`maps[name]` shaped
        ``(len(indices), *spec.shape)``), then mark them done. Fastest with the prompts of one shard
        (`shard_batches`): each shard object is then encoded and written once.

        Examples:
            >>> s = CaptureStore.open("memory://doc.zarr", mode="r+")
            >>> s.write_prompts([0, 1], {"blk.attn1/self": np.zeros((2, 2, 4, 4))})
        """
        self._check_writable()
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < len(self.prompts)]
        if bad or not indices or len(set(indices)) != len(indices):
            raise IndexError(f"prompt indices {indices} must be distinct and in [0, {len(self.prompts)})")
        where = f"prompt {indices[0]}" if len(indices) == 1 else f"prompts {indices}"
        missing, unknown = sorted(set(self._specs) - set(maps)), sorted(set(maps) - set(self._specs))
        if missing or unknown:
            raise ValueError(f"{where}: missing maps {missing}, unknown maps {unknown}")
        arrays = {name: np.asarray(m) for name, m in maps.items()}
        wrong = {n: a.shape[1:] for n, a in arrays.items()
                 if a.shape != (len(indices), *self._specs[n].shape)}
        if wrong:
            raise ValueError(f"{where}: wrong shapes {wrong}; expected "
                             f"{ {n: self._specs[n].shape for n in wrong} }")
        order = np.argsort(indices)
        runs = np.split(np.asarray(indices)[order], np.flatnonzero(np.diff(np.asarray(indices)[order]) != 1) + 1)
        spans = [slice(int(run[0]), int(run[-1]) + 1) for run in runs]
        fresh = self._fresh_shards(spans)
        writes = []
        for name, values in arrays.items():
            key = self._specs[name].array_name
            handles = [self._array(key, fast=whole)._async_array for whole in fresh]  # opened outside the loop
            writes.append(self._write_runs(handles, spans, values[order].astype(self._specs[name].dtype, copy=False)))
        sync(_gather(writes))  # every array concurrently (encoding runs in zarr's or zarrs' pool)
        done = self._array("done", fast=False)  # atomic: a torn `done` chunk would hide every prompt's state
        for span in spans:
            done[span] = True
            self._written[span] = True

    def _fresh_shards(self, spans: list[slice]) -> list[bool]:
        """Per span: does it cover whole shards that hold no finished prompt? Only those are written by zarrs
        (in place); a shard that keeps finished prompts is rewritten atomically, so a kill cannot tear them."""
        per_shard, n = self.prompts_per_shard, len(self.prompts)
        if self._written is None:  # read once: only the owner of a shard writes into it, so it stays true
            self._written = self.done_mask()
        return [span.start % per_shard == 0 and (span.stop % per_shard == 0 or span.stop == n)
                and not self._written[span].any() for span in spans]

    @staticmethod
    async def _write_runs(arrays: list, spans: list[slice], values: np.ndarray) -> None:
        """Write `values` (rows in span order) into the contiguous prompt `spans` of one array (through
        `arrays[i]` for span i), one span after the other: two spans in one shard written concurrently
        would lose one of them."""
        start = 0
        for array, span in zip(arrays, spans):
            stop = start + span.stop - span.start
            await array.setitem(span, values[start:stop])
            start = stop

    @property
    def layer_names(self) -> dict[str, str]:
        """Attention-map arrays by the layer-spec language's names ("self:8", "cross:8/<alias>" where a layer
        holds several) -> the array's name (`<module path>/<kind>`), in layer order.

        Examples:
            >>> open_capture("maps.zarr").layer_names              # a store written by melodia capture
            {'self:1': 'down_blocks.1.attentions.0.transformer_blocks.0.attn1/self', 'cross:1': ...}
        """
        from probing.layers import typed_names  # imports torch: only when asked

        maps = [s for s in self.specs if s.attrs.get("kind") in ("self", "cross") and "layer" in s.attrs]
        maps.sort(key=lambda s: (s.attrs["layer"], s.attrs["kind"] != "self"))
        names = typed_names([(s.attrs["kind"], s.attrs["layer"], s.attrs.get("alias") or s.attrs.get("module", s.name))
                             for s in maps])
        return dict(zip(names, (s.name for s in maps)))

    def spec(self, name: str) -> ArraySpec:
        """The spec of array `name`, or of the map a layer name ("self:8") stands for (KeyError naming the known
        arrays otherwise)."""
        if name not in self._specs:
            typed = self.layer_names
            if name in typed:
                return self._specs[typed[name]]
            raise KeyError(f"no array {name!r} in {self.url}; layer names: {sorted(typed)}; "
                           f"arrays: {sorted(self._specs)}")
        return self._specs[name]

    def read(self, name: str, prompts: slice | list[int] | None = None) -> np.ndarray:
        """Maps `name` (an array name or a layer name such as "cross:14") of the chosen prompts (all by
        default), shaped ``(n_prompts, *spec.shape)``.

        Examples:
            >>> s = open_capture("memory://doc.zarr")
            >>> s.read("blk.attn1/self", [0]).shape
            (1, 2, 4, 4)
        """
        array = self._array(self.spec(name).array_name)
        if prompts is None or isinstance(prompts, slice):
            return array[prompts if prompts is not None else slice(None)]
        return array.oindex[np.asarray(prompts, dtype=np.int64)]

    def consolidate(self) -> None:
        """Write consolidated metadata (once, by one process, after all ranks have finished).

        Examples:
            >>> CaptureStore.open("memory://doc.zarr", mode="r+").consolidate()
            >>> import xarray as xr; "blk.attn1--self" in xr.open_zarr("memory://doc.zarr", consolidated=True)
            True
        """
        self._check_writable()
        with warnings.catch_warnings():  # "consolidated metadata is not part of the v3 spec"
            warnings.simplefilter("ignore", UserWarning)
            zarr.consolidate_metadata(self.url)

    def to_xarray(self):
        """Lazy `xarray.Dataset` (needs xarray): maps as variables; prompts, labels, ids, done as coords.

        Examples:
            >>> ds = open_capture("memory://doc.zarr").to_xarray()
            >>> ds["blk.attn1--self"].dims
            ('prompt', 'step', 'query', 'key')
        """
        import xarray as xr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "falling back to non-consolidated"
            ds = xr.open_zarr(self.url, consolidated=None)
        labels = {f"label_{k}": (PROMPT_DIM, np.asarray(v)) for k, v in self.labels.items()}
        return ds.set_coords(["prompts", "template_id", "done"]).assign_coords(labels)


def open_capture(url: str) -> CaptureStore:
    """Open a capture store read-only.

    Examples:
        >>> store = open_capture("memory://doc.zarr")
        >>> store.identity["model"]
        'm'
    """
    return CaptureStore.open(url, mode="r")
