"""Build an untrained TestbedPipeline (configs, tokenizer) and locate the shipped weights.

Examples:
    >>> pipe = build_untrained(["a", "sad", "waltz", "on", "violin"], seed=0)
    >>> len(pipe.unet.attn_processors)
    32
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from probing.paths import SHIPPED_WEIGHTS, package_root
from probing.testbed.codec import MelCodec
from probing.testbed.pipeline import TestbedPipeline

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
TEXT_DIM = 64

# AudioLDM 2's layout, scaled down: DownBlock2D + 3 cross-attention down blocks, a cross-attention
# mid block, 3 cross-attention up blocks + UpBlock2D, 2 layers per block: 16 attention positions.
UNET_CONFIG = dict(
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 48, 64, 96),
    layers_per_block=2,
    attention_head_dim=4,  # diffusers' name for the number of heads here
    cross_attention_dim=TEXT_DIM,
    norm_num_groups=8,
)

# The v2 codec folds time by 2 (32 ms per latent frame): attention positions then see 64/32/16 time
# cells over 4.096 s (64/128/256 ms per cell), no coarser than AudioLDM 2's 80/160/320 ms.
UNET_CODEC = dict(time_factor=2)

# clip_sample: predicted x0 is clipped to the range normalised log-mel latents occupy (|z| < 2.8 on
# the training set) when generating. v-prediction (Salimans & Ho 2022): the target stays well scaled
# at every noise level, where eps-prediction's x0 estimate blows up at high noise (v1 was eps).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                        clip_sample=True, clip_sample_range=3.0, set_alpha_to_one=False, steps_offset=1,
                        prediction_type="v_prediction")


def testbed_weights_dir(name: str = "testbed") -> Path:
    """Folder of a shipped, trained testbed pipeline (model_index.json + components; names: SHIPPED_WEIGHTS).

    >>> testbed_weights_dir("testbed-v2").name
    'weights_v2'
    """
    return package_root() / "testbed" / SHIPPED_WEIGHTS[name]


def build_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over `words`, appending </s> like T5."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted({w.lower() for w in words}):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_text_encoder(tokenizer: PreTrainedTokenizerFast) -> T5EncoderModel:
    """The testbeds' small T5 encoder (2 layers, width TEXT_DIM), randomly initialised."""
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=16, d_ff=128, num_layers=2,
                                   num_heads=4, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id))


def build_untrained(words: Iterable[str], seed: int = 0, codec: MelCodec | None = None) -> TestbedPipeline:
    """A randomly initialised testbed (v2: 2 x 4 fold, v-prediction) over the caption vocabulary `words`."""
    codec = codec or MelCodec(**UNET_CODEC)
    tokenizer = build_tokenizer(words)
    torch.manual_seed(seed)
    text_encoder = build_text_encoder(tokenizer)
    channels = codec.latent_shape[0]
    unet = UNet2DConditionModel(sample_size=codec.latent_shape[1:], in_channels=channels, out_channels=channels,
                                **UNET_CONFIG)
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    config = {k: v for k, v in codec.to_config().items() if k != "griffin_lim_iters"}
    return TestbedPipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, **config)
