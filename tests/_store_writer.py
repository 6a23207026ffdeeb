"""A capture writer run as a real subprocess by tests/test_store.py.

Usage: python tests/_store_writer.py URL RANK WORLD DELAY_S LOG_PATH [PROMPTS_PER_SHARD]
Opens the store with `CaptureStore.open_for_rank`, writes its pending prompts (each map holds its
prompt index), appends "rank index" to LOG_PATH after each finished prompt, sleeps DELAY_S between.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from probing.store import ArraySpec, CaptureStore

N_PROMPTS = 12
PROMPTS = [f"a {style} piece number {i}" for i, style in zip(range(N_PROMPTS), ["jazz", "rock", "folk"] * 4)]
LABELS = {"style": [p.split()[1] for p in PROMPTS], "mood": ["calm", "dark"] * (N_PROMPTS // 2)}
TEMPLATE_IDS = [i % 3 if i % 4 else -1 for i in range(N_PROMPTS)]
IDENTITY = {"model_id": "testbed/tiny", "config_hash": "abc123", "reduction": {"heads": "mean"},
            "timesteps": [999, 500], "seed": 0}
SPECS = [
    ArraySpec("down_blocks.0.attentions.0.transformer_blocks.0.attn1/self", (2, 16, 16), ("step", "query", "key"),
              attrs={"module": "down_blocks.0.attentions.0.transformer_blocks.0.attn1", "kind": "self", "layer": 0}),
    ArraySpec("down_blocks.0.attentions.0.transformer_blocks.0.attn2/cross", (2, 16, 7), ("step", "query", "key"),
              attrs={"module": "down_blocks.0.attentions.0.transformer_blocks.0.attn2", "kind": "cross",
                     "layer": 0, "n_tokens": 7}),
]
KWARGS = dict(prompts=PROMPTS, specs=SPECS, identity=IDENTITY, labels=LABELS, template_ids=TEMPLATE_IDS)


def maps_for(index: int) -> dict[str, np.ndarray]:
    """Maps of prompt `index`: every value encodes the index (exact in fp16)."""
    return {s.name: np.full(s.shape, index + 0.5 * k, dtype=np.float32) for k, s in enumerate(SPECS)}


def main(url: str, rank: int, world: int, delay: float, log_path: str, per_shard: int | None = None) -> None:
    store = CaptureStore.open_for_rank(url, rank=rank, world=world, timeout=60, poll=0.05, **KWARGS,
                                       prompts_per_shard=per_shard)
    for index in store.pending(rank, world):
        store.write_prompt(index, maps_for(index))
        with open(log_path, "a") as log:
            log.write(f"{rank} {index}\n")
        time.sleep(delay)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5],
         int(sys.argv[6]) if len(sys.argv) > 6 else None)
