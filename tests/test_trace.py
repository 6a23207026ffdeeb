"""`trace`: record while the user's own pipeline call runs; read by layer name and as a word's heat map."""
from __future__ import annotations

import numpy as np
import pytest

from probing.errors import MelodiaError
from probing.models import load_model
from probing.tracing import trace

PROMPT = "a happy waltz played on violin"


@pytest.fixture(scope="module")
def traced(untrained_testbed):
    pipe = untrained_testbed.pipeline
    with trace(pipe) as tc:
        pipe(PROMPT, num_inference_steps=3, guidance_scale=3.0)
    return tc


def test_the_users_call_is_recorded_and_the_pipeline_is_left_as_it_was(untrained_testbed, traced):
    assert type(untrained_testbed.pipeline).__name__ == "TestbedPipeline"
    assert type(untrained_testbed.pipeline) is not type(traced)  # the recording class is gone again
    assert traced.prompts == [PROMPT] and len(traced.layer_names) == 16
    layer = traced["cross:14"]
    assert layer.maps.shape == (3, layer.grid[0] * layer.grid[1], layer.maps.shape[2]) and len(layer.timesteps) == 3
    np.testing.assert_allclose(layer.maps.sum(axis=2), 1.0, atol=2e-3)  # softmax rows, heads averaged


def test_a_words_heat_map_reads_the_columns_of_its_own_token(untrained_testbed, traced):
    tokenizer = untrained_testbed.pipeline.tokenizer
    column = tokenizer(PROMPT)["input_ids"].index(tokenizer.convert_tokens_to_ids("violin"))
    layer = traced["cross:14"]
    expected = layer.maps[:, :, column].mean(axis=0).reshape(layer.grid)
    heat = traced.word_heat_map("Violin", layers="cross:14")  # case does not matter
    np.testing.assert_allclose(heat.values, expected, rtol=1e-6)
    finest = max((traced[name].grid for name in traced.layer_names), key=lambda g: g[0] * g[1])
    assert heat.layers == ["cross:14"] and traced.word_heat_map("violin").values.shape == finest  # all 16, resized


@pytest.mark.parametrize("word, needle", [("cello", "not a word of the prompt"), ("vio", "not a word of the prompt")])
def test_a_word_not_in_the_prompt_is_refused(traced, word, needle):
    with pytest.raises(MelodiaError, match=needle):
        traced.word_heat_map(word)


def test_reading_before_recording_says_what_to_do(untrained_testbed):
    with trace(untrained_testbed) as tc:
        pass
    with pytest.raises(MelodiaError, match="call the pipeline"):
        tc.word_heat_map("violin")
    with pytest.raises(MelodiaError, match="no recorded layer 'cross:99'"):
        tc["cross:99"]


def test_audioldm2_heat_maps_use_only_the_cross_attentions_that_attend_to_words():
    model = load_model("tiny-audioldm2")
    with trace(model.pipeline) as tc:
        model.pipeline("a sad waltz on violin", num_inference_steps=2, audio_length_in_s=2.56)
    heat = tc.word_heat_map("violin")
    assert heat.layers and all("t2" in name for name in heat.layers)  # t1 attends GPT-2's generated tokens
    assert len(heat.layers) < len([n for n in tc.layer_names if n.startswith("cross")])


def test_trace_is_the_function_at_the_package_top():
    import probing
    import probing.tracing  # noqa: F401  (a submodule import must not shadow the function)

    from probing import trace as top

    assert top is trace and callable(probing.trace)


def test_an_error_inside_the_block_leaves_the_pipeline_as_it_was_and_only_the_last_call_is_kept(untrained_testbed):
    pipe, original = untrained_testbed.pipeline, type(untrained_testbed.pipeline)
    with pytest.raises(ValueError), trace(pipe):
        raise ValueError("the user's cell failed")
    assert type(pipe) is original
    with trace(pipe) as tc:
        pipe("a sad march played on piano", num_inference_steps=4, guidance_scale=3.0)
        pipe(PROMPT, num_inference_steps=2, guidance_scale=3.0)
    assert tc.prompts == [PROMPT] and len(tc["cross:1"].timesteps) == 2  # not 4 + 2


def test_a_pooled_reduction_keeps_time_and_frequency_apart(untrained_testbed):
    from probing.maps import Reduction

    with trace(untrained_testbed, layers="cross:14", reduction=Reduction(grid=(8, 2))) as tc:
        untrained_testbed.pipeline(PROMPT, num_inference_steps=2, guidance_scale=3.0)
    assert tc["cross:14"].grid == (8, 2) and tc.word_heat_map("violin").values.shape == (8, 2)
