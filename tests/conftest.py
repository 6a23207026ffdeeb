"""Shared fixtures: an untrained testbed (fast, no shipped weights needed) and offline settings."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub on test machines: fail fast, never hang

import pytest
import torch

from probing.models.testbed import TestbedModel
from probing.testbed.build import build_untrained
from probing.testbed.dit import build_untrained_dit

WORDS = "a an the sad happy calm waltz march ballad played on violin piano flute in mood".split()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One thread: deterministic timings-free tests that do not thrash a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def untrained_testbed() -> TestbedModel:
    pipe = build_untrained(WORDS, seed=0)
    pipe.set_progress_bar_config(disable=True)
    return TestbedModel(pipe, "testbed-untrained")


@pytest.fixture(scope="session")
def untrained_testbed_dir(tmp_path_factory, untrained_testbed) -> str:
    """The untrained testbed saved as a pipeline folder, for CLI runs with --model DIR."""
    folder = tmp_path_factory.mktemp("models") / "testbed-untrained"
    untrained_testbed.pipeline.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def untrained_testbed_dit():
    """The flow-matching DiT testbed with random weights (probing.models.testbed_dit.TestbedDiTModel); the
    layers LongCat initialises to zero are re-drawn, else an untrained DiT predicts 0 everywhere."""
    from probing.models.longcat import live_outputs
    from probing.models.testbed_dit import TestbedDiTModel

    pipe = build_untrained_dit(WORDS, seed=0)
    live_outputs(pipe.transformer)
    pipe.set_progress_bar_config(disable=True)
    return TestbedDiTModel(pipe, "testbed-dit-untrained")


@pytest.fixture(scope="session")
def tiny_stable_audio():
    """Stable Audio Open's pipeline with a tiny config and random weights (offline)."""
    from probing.models import load_model

    return load_model("tiny-stable-audio")


def all_hooks(model) -> int:
    """How many forward hooks/pre-hooks sit on the denoiser and every attention module and projection."""
    modules = [model.denoiser]
    for attention in model.attention_modules().values():
        modules += [attention, *{id(t.projection): t.projection for t in model.qk_taps(attention)}.values()]
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)
