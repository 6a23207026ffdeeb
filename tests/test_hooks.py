"""Hooks and the recorder: they see everything, change nothing, and leave nothing behind."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from conftest import all_hooks
from probing.hooks import AttentionHooks
from probing.maps import Reduction, reduce_call
from probing.recorder import AttentionRecorder

PROMPT = "a sad waltz played on violin"
SELF = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
CROSS = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"


def latents(model, steps=3, guidance=3.0):
    return model.generate(PROMPT, steps=steps, guidance=guidance, seed=0, decode=False)


def test_recording_in_two_passes_never_changes_the_output(untrained_testbed):
    before = latents(untrained_testbed)
    with AttentionRecorder(untrained_testbed, "*", one_pass=False) as recorder:
        during = latents(untrained_testbed)
    assert np.array_equal(before, during)
    assert all(len(recorder.records[m.path]) == 3 for m in recorder.modules)  # every module, every step
    assert recorder.one_pass_calls == 0


def test_one_pass_makes_output_and_map_from_the_same_probabilities(untrained_testbed):
    before = latents(untrained_testbed)
    with AttentionRecorder(untrained_testbed, "*", one_pass=False) as second_pass:
        latents(untrained_testbed)
    with AttentionRecorder(untrained_testbed, "*") as one_pass:
        during = latents(untrained_testbed)
    assert one_pass.one_pass_calls == 3 * len(one_pass.modules)  # every recorded call took the one pass
    error = np.abs(during - before).max()
    assert 0 < error < 1e-4 * np.abs(before).max()  # float rounding, not the same kernel: not bit for bit
    for module in one_pass.modules:
        np.testing.assert_allclose(one_pass.stacked(module.path)[1].astype(np.float32),
                                   second_pass.stacked(module.path)[1].astype(np.float32), rtol=0, atol=1e-3)


def test_steps_not_recorded_keep_torchs_attention_bit_for_bit(untrained_testbed):
    sdpa = torch.nn.functional.scaled_dot_product_attention
    before = latents(untrained_testbed)
    with AttentionRecorder(untrained_testbed, "*", timesteps=[-1.0]) as recorder:  # no step has t = -1
        assert torch.nn.functional.scaled_dot_product_attention is not sdpa  # the wrapper is in place...
        during = latents(untrained_testbed)
    assert np.array_equal(before, during) and recorder.one_pass_calls == 0  # ...and passed every call through
    assert torch.nn.functional.scaled_dot_product_attention is sdpa


def test_no_hook_remains_after_an_exception(untrained_testbed):
    assert all_hooks(untrained_testbed) == 0
    with pytest.raises(KeyboardInterrupt):
        with AttentionRecorder(untrained_testbed, "*"):
            assert all_hooks(untrained_testbed) > 0
            raise KeyboardInterrupt
    assert all_hooks(untrained_testbed) == 0


def test_nested_hooks_remove_only_their_own(untrained_testbed):
    outer_calls, inner_calls = [], []
    with AttentionHooks(untrained_testbed, [SELF], on_call=outer_calls.append):
        with AttentionHooks(untrained_testbed, [SELF], on_call=inner_calls.append):
            latents(untrained_testbed, steps=1)
        latents(untrained_testbed, steps=1)
    assert len(inner_calls) == 1 and len(outer_calls) == 2
    assert all_hooks(untrained_testbed) == 0


def test_a_forward_with_missing_calls_fails_loudly(untrained_testbed):
    with pytest.raises(RuntimeError, match="expected 2 attention calls"):
        with AttentionHooks(untrained_testbed, [SELF], expected_per_forward=2):
            latents(untrained_testbed, steps=1)
    assert all_hooks(untrained_testbed) == 0


def test_timestep_comes_from_the_denoiser_call(untrained_testbed):
    seen = []
    with AttentionHooks(untrained_testbed, [SELF], on_call=lambda c: seen.append(c.timestep)):
        latents(untrained_testbed, steps=4)
    untrained_testbed.scheduler.set_timesteps(4)
    assert seen == [float(t) for t in untrained_testbed.scheduler.timesteps]


def test_replacing_q_and_k_steers_the_model(untrained_testbed):
    identity = lambda call, which, tensor: tensor.clone()  # noqa: E731
    with AttentionHooks(untrained_testbed, [SELF], replace=identity):
        same = latents(untrained_testbed)
    zero_q = lambda call, which, tensor: torch.zeros_like(tensor) if which == "q" else None  # noqa: E731
    with AttentionHooks(untrained_testbed, [SELF], replace=zero_q):
        changed = latents(untrained_testbed)
    assert np.array_equal(same, latents(untrained_testbed))
    assert not np.allclose(changed, same)


def test_a_replacement_of_the_wrong_shape_is_refused(untrained_testbed):
    wrong = lambda call, which, tensor: tensor[:, :1]  # noqa: E731
    with pytest.raises(RuntimeError, match="replacement q has shape"):
        with AttentionHooks(untrained_testbed, [SELF], replace=wrong):
            latents(untrained_testbed, steps=1)


def test_the_recorder_releases_hooked_tensors(untrained_testbed):
    refs = []
    with AttentionHooks(untrained_testbed, [SELF, CROSS], on_call=lambda c: refs.append(weakref.ref(c.query))):
        latents(untrained_testbed, steps=2)
    gc.collect()
    assert refs and all(ref() is None for ref in refs)


def test_the_recorder_keeps_the_text_conditioned_half(untrained_testbed):
    calls = []
    with AttentionHooks(untrained_testbed, [CROSS], on_call=calls.append):
        latents(untrained_testbed, steps=1)
    both = reduce_call(untrained_testbed, calls[0], Reduction(batch="both"))
    with AttentionRecorder(untrained_testbed, [m for m in AttentionRecorder(untrained_testbed, "cross:1").modules
                                               if m.path == CROSS]) as recorder:
        latents(untrained_testbed, steps=1)
    _, kept = recorder.stacked(CROSS)
    assert both.shape[0] == 2 and kept.shape[1] == 1
    torch.testing.assert_close(torch.from_numpy(kept[0, 0]).float(), both[1], atol=1e-3, rtol=0)
    assert not torch.allclose(both[0], both[1], atol=1e-3)  # uncond and cond really differ


def test_nested_recorders_both_record_and_restore_torchs_attention(untrained_testbed):
    sdpa = torch.nn.functional.scaled_dot_product_attention
    # both built before either context opens: building one measures the layer table with a forward
    outer, inner = AttentionRecorder(untrained_testbed, "*"), AttentionRecorder(untrained_testbed, "*")
    with outer:
        with inner:
            latents(untrained_testbed, steps=1)
    assert torch.nn.functional.scaled_dot_product_attention is sdpa
    assert inner.one_pass_calls == len(inner.modules) and outer.one_pass_calls == 0  # the inner one attended
    for module in inner.modules:
        np.testing.assert_allclose(inner.stacked(module.path)[1].astype(np.float32),
                                   outer.stacked(module.path)[1].astype(np.float32), rtol=0, atol=1e-3)


def test_recorders_closed_out_of_order_restore_torchs_attention(untrained_testbed):
    sdpa = torch.nn.functional.scaled_dot_product_attention
    first, second = AttentionRecorder(untrained_testbed, "*"), AttentionRecorder(untrained_testbed, "*")
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first one closes while the second is still open
    latents(untrained_testbed, steps=1)
    assert second.one_pass_calls == len(second.modules) and first.one_pass_calls == 0
    second.__exit__(None, None, None)
    assert torch.nn.functional.scaled_dot_product_attention is sdpa


def test_attention_that_needs_gradients_keeps_torchs_sdpa(untrained_testbed):
    model = untrained_testbed
    inputs = model.dummy_denoiser_inputs(batch=2)
    context = inputs["encoder_hidden_states"].clone().requires_grad_()
    with AttentionRecorder(model, "*", n_prompts=1) as recorder:
        out = model.denoiser(**{**inputs, "encoder_hidden_states": context}).sample
    out.square().sum().backward()
    assert context.grad is not None and context.grad.abs().sum() > 0  # reached through cross-attention
    assert recorder.one_pass_calls == 0 and all(len(r) == 1 for r in recorder.records.values())
