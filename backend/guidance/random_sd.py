"""Stable Diffusion architectures as data, built with random weights.

With no checkpoint on disk, a benchmark still times the real network: `ARCHS["sd15"]` is Stable
Diffusion 1.5's published component configs (random weights: compute is the same, quality is not).
`ARCHS["tiny"]` is a few-thousand-weight pipeline of the same block types that tests save and load
through the same code as a user's checkpoint.

The tokenizer is always a byte-level CLIP tokenizer (every character a token): it needs no download,
and the text encoder runs once per job, so its vocabulary never shows in a step's cost.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# SD 1.5's noise schedule (its scheduler_config.json); both architectures use it
SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

SD15 = {
    # 860 M parameters; 64×64 latents of 512×512 images
    "unet": {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 768,
        "attention_head_dim": 8,  # diffusers' name for SD 1.x's 8 heads
        "norm_num_groups": 32,
        "act_fn": "silu",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "downsample_padding": 1,
    },
    "vae": {
        "sample_size": 512,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "scaling_factor": 0.18215,
    },
    # CLIP ViT-L/14's text tower
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
}

TINY = {
    # 2-block U-Net and VAE (latent 16×16 of a 32×32 image), 2-layer text model
    "unet": {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        # SD's order: attention in the high-resolution blocks, none in the lowest
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 4,
    },
    "vae": {
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "latent_channels": 4,
    },
    "text_encoder": {  # vocab_size: the tokenizer's own
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
    },
}

ARCHS: dict[str, dict[str, dict[str, Any]]] = {"sd15": SD15, "tiny": TINY}

_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def write_tokenizer(folder: Path) -> Path:
    """A CLIP tokenizer folder as SD ships it: vocab.json, merges.txt, tokenizer_config.json.

    Byte-level BPE with no merges: every character is a token.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    symbols = alphabet + [s + "</w>" for s in alphabet] + [_BOS, _EOS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": _BOS,
              "eos_token": _EOS, "pad_token": _EOS, "unk_token": _EOS}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def byte_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(write_tokenizer(Path(tmp)))


def build_components(
    arch: str = "tiny",
    *,
    prediction_type: str = "epsilon",
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """A pipeline's components with random weights, deterministic in `seed` without touching the global RNG.

    Built directly on `device` (initialising SD 1.5's 1 G weights on a GPU takes a moment, on a CPU a while).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    spec = ARCHS[arch]
    device = torch.device(device)
    tokenizer = byte_tokenizer()
    text_config = {"vocab_size": len(tokenizer), **spec["text_encoder"], "bos_token_id": tokenizer.bos_token_id,
                   "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**spec["unet"])
        vae = AutoencoderKL(**spec["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    scheduler = PNDMScheduler(**SCHEDULER, prediction_type=prediction_type)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
