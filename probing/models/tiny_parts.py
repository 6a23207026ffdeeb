"""Parts the tiny models share: in-memory tokenizers over a fixed list of music words, seeded
construction, and the pinned configs of real checkpoints' denoisers. Imports no model family.

Examples:
    >>> tokenizer = t5_tokenizer(128)
    >>> tokenizer.tokenize("a sad waltz")
    ['▁a', '▁sad', '▁waltz']
"""
from __future__ import annotations

import json
import math
import string
from collections import Counter
from pathlib import Path

import torch
from tokenizers import pre_tokenizers

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# The tokenizers' vocabulary: each of these words is one token, so the per-token cross-attention
# maps of a tiny model line up with words as they do in a real model. Other text is spelled in
# characters (bytes for the BPE tokenizers), never lost.
WORDS = sorted(set("""
    piano violin guitar cello flute trumpet drums bass synth organ harp saxophone clarinet voice strings
    waltz march jazz rock pop classical ambient techno folk blues ballad lullaby funk
    happy sad calm energetic dark bright gentle melancholic dreamy loud soft slow fast
    a an the on in with and of by melody song music tune played playing rhythm beat solo piece
    """.split()))


def bpe_merges(words: list[list[str]]) -> list[tuple[str, str]]:
    """Learn BPE merges until every word is one symbol; ties go to the smallest pair, so it is deterministic."""
    words = [list(w) for w in words]
    merges = []
    while pairs := Counter(p for w in words for p in zip(w, w[1:])):
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i : i + 2] = [w[i] + w[i + 1]]
                i += 1
    return merges


def byte_alphabet() -> list[str]:
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def roberta_tokenizer(model_max_length: int = 77):
    """A byte-level BPE `RobertaTokenizer` (the CLAP text tokenizer of AudioLDM 2), built in memory."""
    from transformers import RobertaTokenizer

    merges = bpe_merges([list(w) for w in WORDS] + [["Ġ", *w] for w in WORDS])  # "Ġ": a leading space
    # RoBERTa order: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4 (ClapTextConfig pad_token_id=1).
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + byte_alphabet() + [a + b for a, b in merges]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def clip_tokenizer(model_max_length: int = 77):
    """A `CLIPTokenizer` (byte-level BPE with `</w>` word ends), built in memory."""
    from transformers import CLIPTokenizer

    merges = bpe_merges([[*w[:-1], w[-1] + "</w>"] for w in WORDS])
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # last, as in CLIP's vocabulary
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def t5_tokenizer(model_max_length: int = 128):
    """A unigram `T5Tokenizer` (as used by Flan-T5 and T5-base), built in memory, without extra ids."""
    from transformers import T5Tokenizer

    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [(f"▁{w}", -2.0) for w in WORDS] + [(c, -10.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def seeded(seed: int, build):
    torch.manual_seed(seed)
    return build()


def unit_gain(module: torch.nn.Module) -> torch.nn.Module:
    """Re-draw conv weights with variance 1/fan-in. HiFi-GAN's own init (std 0.01) makes a tiny
    vocoder output about 1e-10; this one gives audio at a normal level (RMS about 0.1)."""
    for conv in module.modules():
        if isinstance(conv, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            upsampling = conv.stride[0] if isinstance(conv, torch.nn.ConvTranspose1d) else 1
            fan_in = conv.in_channels * conv.kernel_size[0] / upsampling
            torch.nn.init.normal_(conv.weight, std=1 / math.sqrt(fan_in))
    return module


def load_reference_config(name: str) -> dict:
    """The pinned config of a real checkpoint's denoiser, for building it on the meta device.

    Args:
        name: a family's `reference_config` (probing.models.registry), e.g. `"audioldm2_music_unet"`
            (`cvssp/audioldm2-music`, `AudioLDM2UNet2DConditionModel`).

    Examples:
        >>> load_reference_config("audioldm2_music_unet")["block_out_channels"]
        [128, 256, 384, 640]
    """
    known = sorted(path.stem for path in CONFIG_DIR.glob("*.json"))
    if name not in known:
        raise ValueError(f"unknown reference config {name!r}: expected one of {', '.join(known)}")
    config = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_comment")}
