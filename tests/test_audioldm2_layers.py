"""The layer table of the real `cvssp/audioldm2-music` UNet (pinned config, built on the meta device).

The expected table is derived here from the architecture (docs/audioldm2-layers.md), not pasted from the
code under test: 16 positions in forward order, 3 transformers each (self only, GPT-2 cross, T5 cross),
8 heads everywhere, and the query tokens of a 10.24 s clip (latent 8 x 256 x 16).
"""
from __future__ import annotations

import pytest

from probing.models.audioldm2 import DUMMY_T5_TOKENS, GENERATED_TOKENS, reference_layer_table

# (block, positions in it, query tokens at 10.24 s): layers 1-2, 3-4, 5-6, 7, 8-10, 11-13, 14-16.
BLOCKS = [("down_blocks.1", 2, 1024), ("down_blocks.2", 2, 256), ("down_blocks.3", 2, 64), ("mid_block", 1, 64),
          ("up_blocks.0", 3, 64), ("up_blocks.1", 3, 256), ("up_blocks.2", 3, 1024)]
GRIDS = {1024: (128, 8), 256: (64, 4), 64: (32, 2)}  # time x freq of the latent at each resolution


def expected_modules() -> list[tuple[str, str, int, int, int]]:
    """(path, kind, layer, query tokens, key tokens) for all 96 modules, in forward order."""
    rows, layer = [], 0
    for block, positions, tokens in BLOCKS:
        for position in range(positions):
            layer += 1
            for transformer in range(3):  # 0: self only (its attn2 is self too), 1: GPT-2, 2: T5
                for attention in ("attn1", "attn2"):
                    path = f"{block}.attentions.{3 * position + transformer}.transformer_blocks.0.{attention}"
                    cross = attention == "attn2" and transformer > 0
                    keys = tokens if not cross else (GENERATED_TOKENS if transformer == 1 else DUMMY_T5_TOKENS)
                    rows.append((path, "cross" if cross else "self", layer, tokens, keys))
    return rows


@pytest.fixture(scope="module")
def table():
    return reference_layer_table()


def test_the_expected_table_itself_has_the_documented_shape():
    rows = expected_modules()
    assert len(rows) == 96 and sum(kind == "self" for _, kind, *_ in rows) == 64
    assert GENERATED_TOKENS == 8


def test_real_music_unet_has_16_layers_and_96_modules(table):
    assert table.model == "cvssp/audioldm2-music"
    assert table.n_layers == 16 and len(table.modules) == 96
    assert table.counts() == {"self": 64, "cross": 32}
    assert {m.heads for m in table.modules} == {8}


def test_real_music_unet_module_paths_kinds_layers_and_tokens_are_pinned(table):
    measured = [(m.path, m.kind, m.layer, m.query_tokens, m.key_tokens) for m in table.modules]
    assert measured == expected_modules()
    assert all(m.grid == GRIDS[m.query_tokens] for m in table.modules)


def test_positions_group_three_transformers(table):
    for block, positions, _ in BLOCKS:
        for position in range(positions):
            members = [m for m in table.modules if m.position == f"{block}.position{position}"]
            assert len(members) == 6 and len({m.layer for m in members}) == 1
            assert [m.alias.split(".")[-2] for m in members] == ["t0", "t0", "t1", "t1", "t2", "t2"]


def test_paper_layers_8_to_14_are_up0_up1_and_the_first_position_of_up2(table):
    chosen = [m.path for m in table.select("self:8-14")]
    expected = [path for path, kind, layer, _, _ in expected_modules() if kind == "self" and (
        path.startswith(("up_blocks.0.", "up_blocks.1.")) or
        (path.startswith("up_blocks.2.attentions.") and int(path.split(".")[3]) < 3))]
    assert chosen == expected and len(chosen) == 3 * 4 + 3 * 4 + 4
