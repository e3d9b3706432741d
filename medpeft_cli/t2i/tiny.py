"""`tiny-sd`: a Stable Diffusion pipeline small enough for a laptop CPU, built from configs (no download).

It has the architecture of SD-1.x at toy width: a UNet2DConditionModel of ~0.8M parameters (two
levels, cross-attention on the first), a CLIP text encoder of 2 layers x 32 channels with its own
CLIP BPE tokenizer, a 3-level AutoencoderKL (images 4x larger than latents) and SD-1.x's noise
schedule with a DDIM sampler. All weights are random (seed 0). It is written once with
`save_pretrained` to <data_dir>/t2i/pipelines/tiny-sd-v1/ and from then on loaded by exactly the code
that loads real SD pipelines, so tests and the offline default exercise the real loading path.

Change anything here and bump TINY_VERSION: results are keyed by pipeline name, and the row's
backbone checksum tells the versions apart.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections import Counter
from itertools import pairwise
from pathlib import Path

TINY_VERSION = "tiny-sd-v1"
SEED = 0
MAX_TOKENS = 32  # caption tokens (real SD-1.x: 77); the synthetic captions need about 15

# Words the tokenizer learns as single tokens: the synthetic captions' vocabulary and common words of
# chest X-ray reports. Any other text still tokenizes (byte-level fallback), only in more pieces.
WORDS = """
a an and the of with in on no is are there image dermoscopy lesion lesions skin round oval irregular
lobulated smooth textured patterned streaked streaks dotted dots network reticular interior border
centre small medium large light pale dark brown pigmented photo photograph close-up view
chest x-ray radiograph frontal lateral pa ap view heart lungs lung left right bilateral pleural effusion
pneumonia pneumothorax atelectasis consolidation edema cardiomegaly opacity opacities normal acute
cardiopulmonary process findings unchanged mild moderate severe stable silhouette size enlarged
""".split()


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges (Sennrich et al., ACL 2016) that turn each word into one token; deterministic
    (most frequent pair first, ties broken alphabetically)."""
    words = sorted({w.lower() for w in words})
    seqs = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in words]
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for s in seqs for p in pairwise(s))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = []
        for s in seqs:
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            merged.append(tuple(out))
        seqs = merged


def build_tokenizer():
    """A CLIPTokenizer (byte-level BPE, `</w>` word ends, CLIP's normaliser) over WORDS."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    # CLIP's pre-tokenizer splits text into letter runs ("x-ray" -> "x", "-", "ray"): learn those.
    merges = learn_merges(re.findall(r"[a-z]+", " ".join(WORDS)))
    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet), *(a + b for a, b in merges), "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def build_pipeline():
    """The tiny StableDiffusionPipeline, random weights from SEED (the global RNG is left untouched)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=MAX_TOKENS, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=32, layers_per_block=1, norm_num_groups=8,
            block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        )
    # SD-1.x's training noise schedule; DDIM samples it in few steps.
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def tiny_pipeline_dir(data_dir: Path) -> Path:
    """The saved tiny pipeline under data_dir (built and saved on first use; atomic, so concurrent
    first uses are safe)."""
    final = Path(data_dir) / "t2i" / "pipelines" / TINY_VERSION
    if (final / "model_index.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{TINY_VERSION}-{uuid.uuid4().hex[:8]}"
    try:
        build_pipeline().save_pretrained(str(tmp))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "model_index.json").is_file():  # not someone else's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
