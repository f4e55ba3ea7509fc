"""A tiny random Stable Diffusion, built in code, saved the ways a user's checkpoint arrives.

No test can download weights, so tests build an SD-shaped pipeline with a few thousand random weights
(`backend.guidance.random_sd`'s "tiny" architecture: 2-block U-Net and VAE, 2-layer CLIP text model, a
byte-level CLIP tokenizer) and save it either as a
diffusers folder or as a single `.safetensors` file in the original LDM key layout. Both then go through
the same loading code (`StableDiffusionGuidance.load`) as a real checkpoint.

The LDM layout is produced by inverting diffusers' own single-file converters
(`diffusers.loaders.single_file_utils.convert_ldm_{unet,vae,clip}_checkpoint`); the test suite checks the
inversion by round-tripping through those converters and through `from_single_file`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import NamedTuple

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save_file
from transformers import CLIPTextModel

from backend.guidance.random_sd import TINY, write_tokenizer
from backend.guidance.random_sd import build_components as _build

#: LDM state-dict prefixes of the three sub-models in an original SD checkpoint
LDM_UNET, LDM_VAE, LDM_CLIP = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."

IMAGE_SIZE = TINY["vae"]["sample_size"]  # with 2 VAE blocks the latent is 16×16
LATENT_SIZE = TINY["unet"]["sample_size"]


class TinySingleFile(NamedTuple):
    checkpoint: Path  # .safetensors in the LDM layout
    config: Path  # a diffusers folder with the same architecture (configs only are needed)
    seed: int  # the checkpoint's weights are `build_components(seed=seed)`'s, not the config folder's


def build_components(prediction_type: str = "epsilon", seed: int = 0) -> dict:
    """The tiny pipeline's components (see `backend.guidance.random_sd`)."""
    return _build("tiny", prediction_type=prediction_type, seed=seed)


def save_tiny_sd(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Write a diffusers folder (model_index.json + one subfolder per component)."""
    pipe = StableDiffusionPipeline(
        **build_components(prediction_type, seed),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    # transformers 5 saves only tokenizer.json; SD's folders have the vocab/merges files, so test that path
    shutil.rmtree(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer")
    return folder


# ---------------------------------------------------------------------------------------------------------
# diffusers → original LDM key layout (the inverse of diffusers/loaders/single_file_utils.py)

_UNET_RESNET = {  # diffusers ResnetBlock2D → LDM ResBlock
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_resnet(rest: str) -> str:
    layer, param = rest.rsplit(".", 1)
    return f"{_UNET_RESNET[layer]}.{param}"


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel keys → `input_blocks` / `middle_block` / `output_blocks` (without prefix).

    LDM numbers the U-Net's layers flatly: input block 0 is conv_in, then each down block has
    `layers_per_block` (resnet, attention) pairs and, except the last, a downsampler of its own; each up
    block has `layers_per_block + 1` pairs, the last one also carrying the upsampler (at index 1 when the
    block has no attention, else 2).
    """
    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    per_block = config["layers_per_block"] + 1
    up_has_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + block * per_block + layer
            out[f"input_blocks.{index}.0.{_unet_resnet(rest)}" if kind == "resnets"
                else f"input_blocks.{index}.1.{rest}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            out[f"input_blocks.{1 + int(m[1]) * per_block + per_block - 1}.0.op.{m[2]}"] = value
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            out[f"middle_block.{2 * int(m[1])}.{_unet_resnet(m[2])}"] = value
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            out[f"middle_block.1.{m[1]}"] = value
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = block * per_block + layer
            out[f"output_blocks.{index}.0.{_unet_resnet(rest)}" if kind == "resnets"
                else f"output_blocks.{index}.1.{rest}"] = value
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            block = int(m[1])
            slot = 2 if up_has_attention[block] else 1
            out[f"output_blocks.{block * per_block + per_block - 1}.{slot}.conv.{m[2]}"] = value
        else:
            raise KeyError(f"no LDM name known for U-Net key {key!r}")
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """AutoencoderKL keys → LDM's `encoder.down.i.block.j` / `decoder.up.i…` layout (without prefix).

    LDM numbers the decoder's up blocks from the lowest resolution upwards in reverse, and stores the
    mid-block attention's projections as 1×1 convolutions rather than linear layers.
    """
    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            out[f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"] = value
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            out[f"encoder.down.{m[1]}.downsample.conv.{m[2]}"] = value
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            block = n_up - 1 - int(m[1])
            out[f"decoder.up.{block}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"] = value
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            out[f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"] = value
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            out[f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"] = value
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            if m[3] == "weight" and value.dim() == 2:
                value = value[:, :, None, None]  # LDM: 1×1 convolutions
            out[f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"] = value
        else:
            raise KeyError(f"no LDM name known for VAE key {key!r}")
    return out


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel keys → `text_model.*` (newer transformers drop that level; LDM files always have it)."""
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}


def to_ldm_checkpoint(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel) -> dict:
    """One state dict in the layout of the original SD 1.x `.ckpt` / `.safetensors` releases."""
    parts = (
        (LDM_UNET, unet_to_ldm(unet.state_dict(), unet.config)),
        (LDM_VAE, vae_to_ldm(vae.state_dict(), vae.config)),
        (LDM_CLIP, clip_to_ldm(text_encoder.state_dict())),
    )
    return {prefix + key: value.contiguous() for prefix, state in parts for key, value in state.items()}


def save_tiny_single_file(path: Path, config: Path, seed: int = 1) -> TinySingleFile:
    """Write a single-file LDM checkpoint whose weights differ from the config folder's (seed ≠ 0).

    Different weights make a loader that silently read the folder's weights instead of the file's fail.
    """
    c = build_components(seed=seed)
    save_file(to_ldm_checkpoint(c["unet"], c["vae"], c["text_encoder"]), str(path))
    return TinySingleFile(checkpoint=path, config=config, seed=seed)
