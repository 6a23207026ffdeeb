"""Specification of probing/store.py, the Zarr v3 capture store (docs/store.md)."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr

from probing.store import (ArraySpec, CaptureStore, NotACaptureStoreError, StoreMismatchError,
                           default_prompts_per_shard, fast_codecs_available, open_capture)

REPO = Path(__file__).resolve().parents[1]
WRITER = Path(__file__).with_name("_store_writer.py")
_spec = importlib.util.spec_from_file_location("_store_writer", WRITER)
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)
N = W.N_PROMPTS


def _writer(url: str, rank: int, world: int, delay: float, log: Path, per_shard: int = 1) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(WRITER), url, str(rank), str(world), str(delay), str(log),
                             str(per_shard)],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=60)  # also closes the pipe
    return proc.returncode, stderr


def _log(path: Path) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()] if path.exists() else []


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_all_prompts_hold_their_index(store: CaptureStore) -> None:
    assert store.done_mask().all()
    for k, spec in enumerate(W.SPECS):
        data = store.read(spec.name)
        expected = np.arange(N, dtype=np.float32)[:, None, None, None] + 0.5 * k
        np.testing.assert_array_equal(data, np.broadcast_to(expected, (N, *spec.shape)))


@pytest.fixture
def store(tmp_path) -> CaptureStore:
    return CaptureStore.create(str(tmp_path / "run.zarr"), **W.KWARGS, attrs={"note": "hi"})


def test_round_trip_keeps_maps_prompts_labels_and_ids(store):
    rng = np.random.default_rng(0)
    written = {i: {s.name: rng.random(s.shape, dtype=np.float32) for s in W.SPECS} for i in (0, 3, 7)}
    for i, maps in written.items():
        store.write_prompt(i, maps)
    again = open_capture(store.url)
    assert again.prompts == W.PROMPTS and again.labels == W.LABELS
    assert again.template_ids.tolist() == W.TEMPLATE_IDS
    assert again.identity == W.IDENTITY and again.attrs == {"note": "hi"} and again.specs == W.SPECS
    assert np.flatnonzero(again.done_mask()).tolist() == [0, 3, 7]
    for spec in W.SPECS:
        got = again.read(spec.name, [7, 0])
        assert got.dtype == np.float16 and got.shape == (2, *spec.shape)
        np.testing.assert_allclose(got, [written[7][spec.name], written[0][spec.name]], atol=1e-3)
        np.testing.assert_allclose(again.read(spec.name, slice(3, 4))[0], written[3][spec.name], atol=1e-3)
        assert np.isnan(again.read(spec.name, [1])).all()  # never written: NaN, not zeros
    meta = zarr.open_group(store.url, mode="r").attrs["melodia"]
    assert meta["initialised"] and meta["identity"]["model_id"] == "testbed/tiny"
    assert [layer["name"] for layer in meta["layers"]] == [s.name for s in W.SPECS]


def test_each_block_of_prompts_is_one_shard_with_named_dims_fp16_and_blosc_zstd(store):
    assert store.prompts_per_shard == 3  # 12 prompts: 3 per shard, so 4 ranks would still own a shard each
    for spec, key_dim in zip(W.SPECS, ("key_16", "key_7")):  # "key" has two sizes -> sized names
        array = zarr.open_array(store.url, path=spec.array_name, mode="r")
        assert array.shape == (N, *spec.shape) and array.dtype == np.float16
        assert array.shards == (3, *spec.shape) and array.chunks == (1, *spec.shape)
        assert array.metadata.dimension_names == ("prompt", "step", "query", key_dim)
        sharding = array.metadata.to_dict()["codecs"][0]
        assert sharding["name"] == "sharding_indexed"
        blosc = sharding["configuration"]["codecs"][-1]["configuration"]
        assert (blosc["cname"], blosc["shuffle"]) == ("zstd", "shuffle")
        assert array.attrs["module"] == spec.attrs["module"] and array.attrs["melodia_name"] == spec.name
    store.write_prompt(2, W.maps_for(2))
    shard_dir = Path(store.url) / W.SPECS[0].array_name / "c"
    assert [p.relative_to(shard_dir).as_posix() for p in shard_dir.rglob("*") if p.is_file()] == ["0/0/0/0"]
    assert zarr.open_array(store.url, path="done", mode="r").chunks == (3,)  # done: one chunk per shard too


def test_prompts_of_one_shard_are_written_in_one_call_and_read_back_in_order(store):
    batch = [5, 3, 4]  # any order: rows follow the indices
    maps = {s.name: np.stack([W.maps_for(i)[s.name] for i in batch]) for s in W.SPECS}
    store.write_prompts(batch, maps)
    assert np.flatnonzero(store.done_mask()).tolist() == [3, 4, 5]
    for k, spec in enumerate(W.SPECS):
        np.testing.assert_array_equal(store.read(spec.name, [3, 4, 5])[:, 0, 0, 0], np.array([3, 4, 5]) + 0.5 * k)
    with pytest.raises(ValueError, match="wrong shapes"):  # one row per index
        store.write_prompts([6, 7], {s.name: maps[s.name][:1] for s in W.SPECS})
    with pytest.raises(IndexError, match="distinct"):
        store.write_prompts([6, 6], {s.name: maps[s.name][:2] for s in W.SPECS})
    assert not store.done_mask()[6:].any()


def test_a_shard_resumed_with_holes_keeps_the_prompts_already_in_it(store):
    store.write_prompt(7, W.maps_for(7))  # shard 2 holds prompts 6-8: 7 is done, 6 and 8 come later, together
    assert store.shard_batches(store.pending()) == [[0, 1, 2], [3, 4, 5], [6, 8], [9, 10, 11]]
    store.write_prompts([6, 8], {s.name: np.stack([W.maps_for(i)[s.name] for i in (6, 8)]) for s in W.SPECS})
    np.testing.assert_array_equal(store.read(W.SPECS[0].name, [6, 7, 8])[:, 0, 0, 0], [6, 7, 8])


def test_ranks_own_whole_shards():
    store = CaptureStore.create(f"memory://melodia-test-{uuid.uuid4().hex}/r.zarr", **W.KWARGS, prompts_per_shard=2)
    assert [store.pending(rank, 3) for rank in range(3)] == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]
    assert store.shard_batches([2, 3, 8]) == [[2, 3], [8]]


def test_the_default_shard_leaves_every_rank_work():
    assert default_prompts_per_shard(1024) == 8 and default_prompts_per_shard(1024, world=64) == 4
    assert default_prompts_per_shard(12, world=2) == 1 and default_prompts_per_shard(3) == 1


def test_wrong_or_missing_maps_raise_and_leave_the_prompt_pending(store):
    maps = W.maps_for(4)
    bad_shape = {**maps, W.SPECS[1].name: np.zeros((2, 16, 8))}
    with pytest.raises(ValueError, match="wrong shapes"):
        store.write_prompt(4, bad_shape)
    with pytest.raises(ValueError, match="missing maps"):
        store.write_prompt(4, {W.SPECS[0].name: maps[W.SPECS[0].name]})
    with pytest.raises(ValueError, match="unknown maps"):
        store.write_prompt(4, {**maps, "extra": np.zeros(1)})
    assert not store.done_mask()[4] and 4 in store.pending()
    assert np.isnan(store.read(W.SPECS[0].name, [4])).all()  # nothing was written
    with pytest.raises(PermissionError):
        open_capture(store.url).write_prompt(4, maps)


def test_a_write_that_crashes_half_way_leaves_the_prompt_pending(store, monkeypatch):
    calls, real_setitem = [], zarr.AsyncArray.setitem

    async def crash_on_second_array(self, key, value):
        calls.append(self.path)
        if len(calls) == 2:
            raise OSError("disk vanished")
        await real_setitem(self, key, value)

    monkeypatch.setattr(zarr.AsyncArray, "setitem", crash_on_second_array)
    with pytest.raises(OSError):
        store.write_prompt(6, W.maps_for(6))
    monkeypatch.undo()
    assert W.SPECS[0].array_name in calls and not store.done_mask()[6] and 6 in store.pending()


def test_same_run_resumes_and_other_runs_fail_without_writing(store, tmp_path):
    store.write_prompt(5, W.maps_for(5))
    assert CaptureStore.create(store.url, **W.KWARGS).done_mask()[5]  # same run: resume, nothing wiped
    root = Path(store.url)
    before = _snapshot(root)
    other_spec = ArraySpec(W.SPECS[0].name, (3, 16, 16), ("step", "query", "key"))
    for change, says in [({"identity": {**W.IDENTITY, "config_hash": "zzz"}}, "config_hash"),
                         ({"prompts": W.PROMPTS[:-1] + ["other"]}, "prompt list"),
                         ({"specs": [other_spec, W.SPECS[1]]}, W.SPECS[0].name)]:
        with pytest.raises(StoreMismatchError, match=says) as err:
            CaptureStore.create(store.url, **{**W.KWARGS, **change})
        assert "overwrite" in str(err.value)
        assert _snapshot(root) == before
    replaced = CaptureStore.create(store.url, **{**W.KWARGS, "identity": {"model_id": "new"}}, overwrite=True)
    assert replaced.identity == {"model_id": "new"} and not replaced.done_mask().any()


def test_a_path_that_is_not_a_capture_store_is_refused_untouched(tmp_path):
    folder = tmp_path / "music"
    folder.mkdir()
    (folder / "song.wav").write_bytes(b"RIFF")
    plain = zarr.create_group(str(tmp_path / "plain.zarr"), zarr_format=3, attributes={"x": 1})
    for path in (folder, tmp_path / "plain.zarr"):
        before = _snapshot(path)
        with pytest.raises(NotACaptureStoreError, match="not a melodia capture store"):
            CaptureStore.create(str(path), **W.KWARGS)
        with pytest.raises(NotACaptureStoreError):
            open_capture(str(path))
        assert _snapshot(path) == before
    assert plain.attrs["x"] == 1
    with pytest.raises(FileNotFoundError, match="no capture store"):
        open_capture(str(tmp_path / "absent.zarr"))


def test_a_half_created_store_is_not_opened_and_create_rebuilds_it(store):
    group = zarr.open_group(store.url, mode="r+")
    group.update_attributes({"melodia": {**group.attrs["melodia"], "initialised": False}})
    with pytest.raises(NotACaptureStoreError, match="half-created"):
        open_capture(store.url)
    assert CaptureStore.create(store.url, **W.KWARGS).pending() == list(range(N))


@pytest.mark.parametrize("per_shard", [1, 3])
def test_a_killed_capture_resumes_without_losing_or_rewriting_a_prompt(tmp_path, per_shard):
    url, log = str(tmp_path / "run.zarr"), tmp_path / "log.txt"
    proc = _writer(url, 0, 1, 0.25, log, per_shard)
    deadline = time.monotonic() + 30
    while len(_log(log)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    returncode, stderr = _finish(proc)
    assert returncode == -signal.SIGKILL, stderr
    done = open_capture(url).done_mask()
    assert 3 <= done.sum() < N
    first = {i for _, i in _log(log)}
    assert first <= set(np.flatnonzero(done))
    missing = [i for i in range(N) if not done[i]]
    assert CaptureStore.open(url, mode="r+").pending() == missing
    log.unlink()
    resumed = _writer(url, 0, 1, 0.0, log, per_shard)
    returncode, stderr = _finish(resumed)
    assert returncode == 0, stderr
    assert sorted(i for _, i in _log(log)) == missing  # only the missing ones were written, each once
    _assert_all_prompts_hold_their_index(open_capture(url))


@pytest.mark.parametrize("per_shard, owned", [(1, [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]]),
                                               (3, [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10, 11]])])
def test_two_ranks_writing_one_store_concurrently_lose_nothing(tmp_path, per_shard, owned):
    url = str(tmp_path / "run.zarr")
    logs = [tmp_path / f"rank{r}.txt" for r in (0, 1)]
    procs = [_writer(url, r, 2, 0.01, logs[r], per_shard) for r in (1, 0)]  # rank 1 starts first and must wait
    for returncode, stderr in map(_finish, procs):
        assert returncode == 0, stderr
    for rank in (0, 1):
        assert [i for _, i in _log(logs[rank])] == owned[rank]
    _assert_all_prompts_hold_their_index(open_capture(url))


@pytest.mark.skipif(not fast_codecs_available(), reason="zarrs not installed")
def test_maps_are_encoded_by_zarrs_without_changing_the_users_zarr_config(store):
    before = zarr.config.get("codec_pipeline.path")
    store.write_prompt(0, W.maps_for(0))
    pipeline = store._array(W.SPECS[0].array_name)._async_array.codec_pipeline
    assert type(pipeline).__module__.startswith("zarrs")
    assert zarr.config.get("codec_pipeline.path") == before
    plain = zarr.open_array(store.url, path=W.SPECS[0].array_name, mode="r")  # the default pipeline reads it
    assert not type(plain._async_array.codec_pipeline).__module__.startswith("zarrs")
    assert float(plain[0, 0, 0, 0]) == 0.0 and np.isnan(plain[1, 0, 0, 0])


def test_melodia_zarrs_0_switches_the_store_to_zarr_pythons_codecs(store, monkeypatch):
    monkeypatch.setenv("MELODIA_ZARRS", "0")
    store.write_prompt(1, W.maps_for(1))
    assert not type(store._array(W.SPECS[0].array_name)._async_array.codec_pipeline).__module__.startswith("zarrs")
    assert float(store.read(W.SPECS[0].name, [1])[0, 0, 0, 0]) == 1.0


def test_other_ranks_time_out_or_fail_clearly(store, tmp_path):
    with pytest.raises(TimeoutError, match="rank 0 did not create"):
        CaptureStore.open_for_rank(str(tmp_path / "never.zarr"), rank=1, world=2, timeout=0.2, poll=0.05,
                                   **W.KWARGS)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TimeoutError, match="not a melodia capture store"):
        CaptureStore.open_for_rank(str(tmp_path / "other"), rank=1, world=2, timeout=0.2, poll=0.05, **W.KWARGS)
    with pytest.raises(StoreMismatchError):
        CaptureStore.open_for_rank(store.url, rank=1, world=2, **{**W.KWARGS, "identity": {"model_id": "x"}})
    assert CaptureStore.open_for_rank(store.url, rank=1, world=2, **W.KWARGS).pending(1, 2) == [3, 4, 5, 9, 10, 11]


def test_plain_xarray_reads_the_consolidated_store_without_melodia(store, tmp_path):
    for i in range(N):
        store.write_prompt(i, W.maps_for(i))
    store.consolidate()
    assert "consolidated_metadata" in json.loads((Path(store.url) / "zarr.json").read_text())
    (Path(store.url) / W.SPECS[0].array_name / "c" / "3" / "0" / "0" / "0").write_bytes(b"corrupt")  # lazy: unread
    code = (
        "import json, sys, xarray as xr\n"
        f"ds = xr.open_zarr({store.url!r}, consolidated=True)\n"
        f"cross = ds[{W.SPECS[1].array_name!r}]\n"
        "print(json.dumps({'dims': {k: list(v.dims) for k, v in ds.data_vars.items()},\n"
        "    'value': float(cross.isel(prompt=5).mean()),\n"
        "    'prompt': str(ds['prompts'].values[2]), 'done': bool(ds['done'].values.all()),\n"
        "    'model': ds.attrs['melodia']['identity']['model_id'],\n"
        "    'melodia_imported': any(m.split('.')[0] == 'probing' for m in sys.modules)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["dims"][W.SPECS[1].array_name] == ["prompt", "step", "query", "key_7"]
    assert seen["dims"]["prompts"] == ["prompt"]
    assert seen["value"] == 5.5 and seen["prompt"] == W.PROMPTS[2] and seen["done"]
    assert seen["model"] == "testbed/tiny" and not seen["melodia_imported"]


def test_a_memory_url_works_end_to_end():
    url = f"memory://melodia-test-{uuid.uuid4().hex}/run.zarr"
    store = CaptureStore.create(url, **W.KWARGS, prompts_per_shard=1)
    for i in store.pending(rank=1, world=3):
        store.write_prompt(i, W.maps_for(i))
    assert open_capture(url).pending() == [i for i in range(N) if i % 3 != 1]
    for i in store.pending():
        store.write_prompt(i, W.maps_for(i))
    store.consolidate()
    _assert_all_prompts_hold_their_index(open_capture(url))
    ds = open_capture(url).to_xarray()
    assert ds["label_mood"].values.tolist() == W.LABELS["mood"]
    assert float(ds[W.SPECS[0].array_name].isel(prompt=3).max()) == 3.0


def test_only_fresh_whole_shards_are_written_in_place(store, monkeypatch):
    used, real = [], CaptureStore._array

    def spy(self, key, fast=True):
        used.append((key, fast))
        return real(self, key, fast)

    monkeypatch.setattr(CaptureStore, "_array", spy)
    whole = [0, 1, 2]  # shard 0, nothing in it done: encoded in one go (zarrs, in place)
    store.write_prompts(whole, {s.name: np.stack([W.maps_for(i)[s.name] for i in whole]) for s in W.SPECS})
    assert (W.SPECS[0].array_name, True) in used and ("done", False) in used and ("done", True) not in used
    used.clear()
    store.write_prompt(4, W.maps_for(4))  # part of shard 1: read, modified and replaced atomically
    assert (W.SPECS[0].array_name, False) in used and (W.SPECS[0].array_name, True) not in used
    used.clear()
    rest = [3, 5]  # shard 1 again, now holding a finished prompt: atomically too
    store.write_prompts(rest, {s.name: np.stack([W.maps_for(i)[s.name] for i in rest]) for s in W.SPECS})
    assert (W.SPECS[0].array_name, True) not in used
    np.testing.assert_array_equal(store.read(W.SPECS[0].name, list(range(6)))[:, 0, 0, 0], np.arange(6))


def test_a_shard_holds_at_most_64_mb_of_maps():
    big = ArraySpec("big/self", (10, 1024, 1024), ("step", "query", "key"))  # 20 MB a prompt in fp16
    store = CaptureStore.create(f"memory://melodia-test-{uuid.uuid4().hex}/b.zarr", prompts=[str(i) for i in range(64)],
                                specs=[big], identity={"m": 1})
    assert store.prompts_per_shard == 3


@pytest.mark.skipif(not fast_codecs_available(), reason="zarrs not installed")
def test_zarrs_threads_follow_the_process_share_of_the_cores(monkeypatch):
    from probing.store import _fast_codecs

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with _fast_codecs():
        assert zarr.config.get("threading.max_workers") == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    with _fast_codecs():
        assert zarr.config.get("threading.max_workers") is None  # zarrs' default: every core
