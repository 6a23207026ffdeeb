"""What every registered family must do, checked on its tiny model: one test per family, from the registry.

Family-specific behaviour (samplers, masks, RoPE, codecs) is tested in the family's own file.
"""
from __future__ import annotations

import pytest

from _adapter_checks import check_capture_changes_nothing
from probing.models import load_model
from probing.models.registry import adapter_class, families
from probing.tracing import trace

# Upstream noise: torchsde's Brownian tree warns on float rounding at the ends of the sigma range.
pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning", "ignore::FutureWarning")

TINY = [(family.tiny, name) for name, family in families().items() if family.tiny]
PROMPT = "a sad waltz played on violin"


@pytest.fixture(scope="module", params=TINY, ids=[tiny for tiny, _ in TINY])
def tiny(request):
    name, family = request.param
    model = load_model(name)
    if hasattr(model, "clip_seconds"):
        model.clip_seconds = 1.0  # a short clip keeps each family's checks to seconds
    return model, family


def test_load_model_picks_the_registered_adapter(tiny):
    model, family = tiny
    assert type(model) is adapter_class(family) and model.family == family
    assert type(load_model(model.pipeline)) is type(model)  # the same object, wrapped again by its class


def test_capture_records_every_module_every_step_and_changes_nothing_but_rounding(tiny):
    model, _ = tiny
    recorder = check_capture_changes_nothing(model, lambda: model.generate(PROMPT, steps=2, guidance=3.0, seed=0))
    assert recorder.modules and all(len(recorder.records[m.path]) == 2 for m in recorder.modules)


def test_a_word_heat_map_from_the_pipeline_object_where_keys_are_prompt_tokens(tiny):
    model, _ = tiny
    with trace(model.pipeline) as tc:
        model.generate(PROMPT, steps=2, guidance=3.0, seed=0)  # the pipeline's own __call__
    cross = [m for m in tc.recorder.modules if m.kind == "cross"]
    assert cross and all(len(tc.recorder.records[m.path]) == 2 for m in cross)
    if any(model.keys_are_prompt_tokens(m) for m in cross):
        heat = tc.word_heat_map("violin")
        assert heat.values.ndim == 2 and heat.values.min() >= 0 and heat.values.max() > 0
