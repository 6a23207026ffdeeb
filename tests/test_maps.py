"""Maps recomputed from hooked Q/K equal diffusers' own attention probabilities; reductions are exact."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probing.hooks import AttentionHooks
from probing.maps import Reduction, additive_mask, attention_probs_reduced, attention_reduced, reduce_call

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


@pytest.mark.parametrize("mask_batch", [None, 1, 2])
def test_one_pass_output_is_torchs_attention_and_its_map_the_second_pass_map(mask_batch):
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 4, 32, 8, generator=generator) for _ in range(3))
    mask = None
    if mask_batch is not None:  # additive: the last 2 time rows of keys hidden, also by a batch-1 mask that broadcasts
        mask = torch.zeros(mask_batch, 1, 1, 32)
        mask[..., -8:] = float("-inf")
    reduction = Reduction(heads="mean", grid=(4, 2), memory_mb=0)  # one query row per chunk: chunking exercised
    reduced, output = attention_reduced(query, key, 8 ** -0.5, mask, (8, 4), (8, 4), reduction, value=value,
                                        rows=slice(1, None))
    torch.testing.assert_close(output, F.scaled_dot_product_attention(query, key, value, attn_mask=mask),
                               atol=1e-5, rtol=1e-5)
    second_pass = attention_probs_reduced(query[1:], key[1:], 8 ** -0.5, None if mask is None else mask[-1:],
                                          (8, 4), (8, 4), reduction)
    torch.testing.assert_close(reduced, second_pass, atol=1e-6, rtol=1e-6)
    assert reduced.shape == (1, 1, 8, 8)
    if mask is not None:  # the hidden keys' pooled cell (the last time row of the 4x2 key grid) holds no mass
        assert reduced[..., -2:].abs().max() == 0 and reduced[..., :-2].sum(-1).sub(1).abs().max() < 1e-5


def test_a_row_with_every_key_masked_attends_to_nothing_as_in_torch():
    generator = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(2, 2, 8, 4, generator=generator) for _ in range(3))
    mask = torch.zeros(2, 1, 1, 8)
    mask[0] = float("-inf")  # the first batch row may attend to no key at all
    reduced, output = attention_reduced(query, key, 0.5, mask, (8, 1), None, Reduction(grid=None), value=value)
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.5)
    assert torch.isfinite(output).all() and torch.isfinite(reduced).all() and reduced[0].abs().max() == 0
    torch.testing.assert_close(output, expected.nan_to_num(0.0), atol=1e-5, rtol=1e-5)


def test_a_boolean_mask_becomes_additive_and_masks_what_sdpa_masks():
    keep = torch.tensor([[True, False, True]])
    mask = additive_mask(keep, torch.float64)
    assert mask.dtype == torch.float64 and mask[0, 0] == 0 and mask[0, 1] == float("-inf")
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    boolean = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask(keep)), boolean)
    assert not torch.allclose(F.scaled_dot_product_attention(q, k, v), boolean)  # the mask matters here
    already = torch.tensor([0.0, -1.0])
    assert additive_mask(already) is already
