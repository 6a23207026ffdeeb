"""Capture into the Zarr store: round trip, resume after a kill, two ranks, plain xarray."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from probing.capture import CaptureSettings, capture
from probing.prompts import PromptSet
from probing.recorder import AttentionRecorder
from probing.store import CaptureStore, NotACaptureStoreError

PROMPTS = PromptSet(["a sad waltz on violin", "a happy march on piano", "a calm ballad on flute"],
                    {"instrument": ["violin", "piano", "flute"]}, [0, 1, 2], "three")
SETTINGS = CaptureSettings(layers="self:8+cross:1-2", steps=3)


def test_capture_stores_what_the_recorder_saw(untrained_testbed, tmp_path):
    store = capture(untrained_testbed, PROMPTS, str(tmp_path / "s.zarr"), SETTINGS, progress=False)
    assert store.done_mask().all() and len(store.specs) == 3 + 1  # three maps + the text embedding
    assert store.labels == {"instrument": ["violin", "piano", "flute"]} and list(store.template_ids) == [0, 1, 2]
    with AttentionRecorder(untrained_testbed, SETTINGS.layers) as recorder:
        untrained_testbed.generate(PROMPTS.prompts[1], 3, 3.0, SETTINGS.seed + 1, decode=False)  # noise per prompt
    for module, spec in zip(recorder.modules, store.specs):
        _, maps = recorder.stacked(module.path)
        np.testing.assert_array_equal(store.read(spec.name, [1])[0], maps[:, 0, 0])
    # the layer-spec language's names reach the same arrays in the store and the recorder
    assert list(store.layer_names) == ["cross:1", "cross:2", "self:8"] == sorted(recorder.layer_names)
    for name, array in store.layer_names.items():
        assert array == f"{recorder.layer_names[name]}/{name.split(':')[0]}"
        np.testing.assert_array_equal(store.read(name, [1])[0], recorder.stacked(name)[1][:, 0, 0])
    with pytest.raises(KeyError, match="layer names: .*self:8"):
        store.read("self:9")
    dataset = xr.open_zarr(tmp_path / "s.zarr")
    assert dataset.sizes["prompt"] == 3 and "done" in dataset


def run_cli(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "editing.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **kwargs)


@pytest.fixture()
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    moods, styles, instruments = ("sad", "happy"), ("waltz", "march"), ("violin", "piano")
    path.write_text("\n".join(f"a {m} {s} on {i}" for m in moods for s in styles for i in instruments))
    return path


def test_a_killed_capture_resumes_without_losing_or_repeating_prompts(untrained_testbed_dir, prompts_file, tmp_path):
    url = str(tmp_path / "killed.zarr")
    args = ["capture", "--model", untrained_testbed_dir, "--prompts", str(prompts_file), "--store", url,
            "--layers", "cross:1", "--steps", "2"]
    first = run_cli(*args)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        try:
            if 2 <= CaptureStore.open(url).done_mask().sum() < 8:
                break
        except (FileNotFoundError, NotACaptureStoreError):  # not created yet, or being created
            pass
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_before = int(CaptureStore.open(url).done_mask().sum())
    assert 2 <= done_before < 8
    second = run_cli(*args)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert f"{8 - done_before}/{8 - done_before}" in err  # the progress bar counted only the missing prompts
    store = CaptureStore.open(url)
    assert store.done_mask().all()
    maps = store.read(store.specs[0].name)
    assert np.isfinite(maps).all() and not np.array_equal(maps[0], maps[1])  # each prompt its own maps


def test_two_ranks_under_torchrun_write_one_complete_store(untrained_testbed_dir, prompts_file, tmp_path):
    url = str(tmp_path / "ranks.zarr")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               "-m", "editing.cli", "capture", "--model", untrained_testbed_dir, "--prompts", str(prompts_file),
               "--store", url, "--layers", "cross:1", "--steps", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    store = CaptureStore.open(url)
    assert store.done_mask().all()
    assert np.isfinite(store.read(store.specs[0].name)).all()
    assert json.loads(Path(url, "zarr.json").read_text()).get("consolidated_metadata")  # rank 0 consolidated


def test_text_maps_of_prompts_with_different_lengths_share_one_array(tmp_path):
    from probing.models import load_model

    model = load_model("tiny-audioldm2")
    model.clip_seconds = 1.28
    prompts = PromptSet(["violin", "a very long and slow and sad waltz played on a quiet old violin"], {}, [-1, -1])
    store = capture(model, prompts, str(tmp_path / "t5.zarr"), CaptureSettings(layers="cross:1", steps=2),
                    progress=False)
    t5 = next(spec for spec in store.specs if spec.attrs.get("alias", "").endswith("t2.attn2"))
    maps = store.read(t5.name)
    short_keys = (maps[0] > 1e-6).any(axis=(0, 1)).sum()
    long_keys = (maps[1] > 1e-6).any(axis=(0, 1)).sum()
    assert short_keys < long_keys <= maps.shape[-1]  # padding columns stay zero, real tokens carry attention


def test_seed_per_prompt_gives_one_prompt_text_two_different_noises(untrained_testbed, tmp_path):
    twice = PromptSet(["a sad waltz on violin"] * 2, {}, [0, 1])
    maps = {}
    for per_prompt in (False, True):
        settings = CaptureSettings(layers="self:8", steps=2, seed_per_prompt=per_prompt)
        store = capture(untrained_testbed, twice, str(tmp_path / f"{per_prompt}.zarr"), settings, progress=False)
        maps[per_prompt] = store.read(store.specs[0].name)
    np.testing.assert_array_equal(maps[False][0], maps[False][1])
    assert not np.allclose(maps[True][0], maps[True][1]) and np.array_equal(maps[True][0], maps[False][0])
