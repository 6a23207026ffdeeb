"""Maps recomputed from hooked Q/K equal diffusers' own attention probabilities; reductions are exact."""
from __future__ import annotations

import pytest
import torch

from probing.hooks import AttentionHooks
from probing.maps import Reduction, reduce_call

SELF = "up_blocks.2.attentions.0.transformer_blocks.0.attn1"
CROSS = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
FULL = Reduction(heads="all", grid=None, batch="both")
TOLERANCE = 1e-6  # float32 softmax of the same logits, two code paths


@pytest.fixture(scope="module")
def calls(untrained_testbed):
    recorded = {}
    with AttentionHooks(untrained_testbed, [SELF, CROSS], on_call=lambda c: recorded.setdefault(c.path, c)):
        untrained_testbed.generate("a sad waltz", steps=1, guidance=3.0, seed=0, decode=False)
    return recorded


def reference(call):
    module = call.module
    batch = call.query.shape[0]
    query, key = module.head_to_batch_dim(call.query), module.head_to_batch_dim(call.key)
    mask = call.attention_mask
    if mask is not None:
        mask = module.prepare_attention_mask(mask, key.shape[1], batch)
    probs = module.get_attention_scores(query, key, mask)
    return probs.view(batch, module.heads, *probs.shape[1:])


@pytest.mark.parametrize("path", [SELF, CROSS])
def test_maps_equal_diffusers_reference_probabilities(untrained_testbed, calls, path):
    ours = reduce_call(untrained_testbed, calls[path], FULL)
    torch.testing.assert_close(ours, reference(calls[path]), atol=TOLERANCE, rtol=0)


def test_padding_tokens_get_no_attention(untrained_testbed, calls):
    maps = reduce_call(untrained_testbed, calls[CROSS], FULL)
    n_tokens = len(untrained_testbed.pipeline.tokenizer("a sad waltz").input_ids)
    assert maps[..., n_tokens:].max() < 1e-6
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5, rtol=0)


def test_pooling_averages_queries_and_keeps_key_mass(untrained_testbed, calls):
    full = reduce_call(untrained_testbed, calls[SELF], FULL)  # (2, heads, 512, 512) on a 64x8 grid
    pooled = reduce_call(untrained_testbed, calls[SELF], Reduction(heads="mean", grid=(16, 4), batch="both"))
    assert pooled.shape == (2, 1, 64, 64)
    torch.testing.assert_close(pooled.sum(-1), torch.ones(2, 1, 64), atol=1e-5, rtol=0)
    # axes: batch, query (time, dt, freq, df), key (time, dt, freq, df): 4x2 windows on both grids
    grid = full.mean(1).reshape(2, 16, 4, 4, 2, 16, 4, 4, 2)
    expected = grid.mean(dim=(2, 4)).sum(dim=(4, 6)).reshape(2, 64, 64)
    torch.testing.assert_close(pooled[:, 0], expected, atol=1e-6, rtol=0)


def test_chunking_does_not_change_the_maps(untrained_testbed, calls):
    whole = reduce_call(untrained_testbed, calls[SELF], Reduction(grid=(16, 4)))
    chunked = reduce_call(untrained_testbed, calls[SELF], Reduction(grid=(16, 4), memory_mb=0))
    torch.testing.assert_close(whole, chunked, atol=1e-6, rtol=0)
