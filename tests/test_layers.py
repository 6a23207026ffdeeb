"""Layer tables are measured, numbered in forward order, and selected with one spec language."""
from __future__ import annotations

import pytest

from probing.errors import MelodiaError
from probing.layers import LayerTable, band_by_depth, measure_layer_table


@pytest.fixture(scope="module")
def table(untrained_testbed) -> LayerTable:
    return measure_layer_table(untrained_testbed)


def test_the_testbed_has_audioldm2s_sixteen_positions(table):
    assert table.n_layers == 16 and len(table.modules) == 32
    assert table.counts() == {"self": 16, "cross": 16}
    blocks = [m.position.split(".")[0] for m in table.modules if m.kind == "self"]
    assert blocks == ["down_blocks"] * 6 + ["mid_block"] + ["up_blocks"] * 9  # forward order, not name order
    tokens = [m.query_tokens for m in table.modules if m.kind == "self"]
    assert tokens == [512, 512, 128, 128, 32, 32, 32, 32, 32, 32, 128, 128, 128, 512, 512, 512]  # v2: 64x8 ... 16x2


def test_kinds_come_from_what_the_module_attended_to(table):
    for m in table.modules:
        assert m.kind == ("cross" if m.path.endswith("attn2") else "self")  # true for this UNet only
        assert m.key_tokens == (m.query_tokens if m.kind == "self" else 16)


@pytest.mark.parametrize("spec, expected", [
    ("8-14", {(k, n) for n in range(8, 15) for k in ("self", "cross")}),
    ("self:8-14", {("self", n) for n in range(8, 15)}),
    ("cross:*", {("cross", n) for n in range(1, 17)}),
    ("up", {(k, n) for n in range(8, 17) for k in ("self", "cross")}),
    ("self:down,mid", {("self", n) for n in range(1, 8)}),
    ("self:1,3,5-6", {("self", n) for n in (1, 3, 5, 6)}),
    ("self:8+cross:1-2", {("self", 8), ("cross", 1), ("cross", 2)}),
    ("none", set()),
    ("all", {(k, n) for n in range(1, 17) for k in ("self", "cross")}),
])
def test_layer_specs_select_what_they_say(table, spec, expected):
    assert {(m.kind, m.layer) for m in table.select(spec)} == expected


@pytest.mark.parametrize("spec, message", [
    ("self:20", "layers 1-16"), ("0-3", "layers 1-16"), ("9-8", "layers 1-16"), ("value:1", "kind must be"),
    ("eight", "cannot read"), ("auto", "needs a layer profile")])
def test_bad_specs_name_the_valid_range(table, spec, message):
    with pytest.raises(MelodiaError, match=message):
        table.select(spec)


def test_the_table_round_trips_through_json(table):
    assert LayerTable.from_json(table.to_json()) == table
    assert "16 layers, 32 attention modules (16 self, 16 cross)" in table.format()


def test_band_by_depth_is_the_papers_band_at_the_same_depth():
    """16 blocks: the paper's own 8-14; other depths keep 7/16 to 14/16 of the stack."""
    assert band_by_depth(16) == "self:8-14"
    for blocks in (2, 6, 12, 24, 48):
        first, last = map(int, band_by_depth(blocks).removeprefix("self:").split("-"))
        assert abs((first - 1) / blocks - 7 / 16) <= 1 / blocks and abs(last / blocks - 14 / 16) <= 0.5 / blocks + 1e-9
        assert 1 <= first <= last <= blocks
