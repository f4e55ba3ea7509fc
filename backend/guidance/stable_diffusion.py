"""Stable Diffusion 1.x / 2.x as the 2D prior, loaded with diffusers.

Only what score distillation needs is kept: the U-Net (noise prediction with classifier-free guidance),
the VAE (image↔latent, differentiable), the CLIP text encoder and tokenizer (prompt embeddings, computed
once per distinct string) and the noise schedule, as a `DDIMScheduler` built from the checkpoint's own
scheduler config so that ᾱ_t and the prediction type (ε or v) are the checkpoint's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionPipeline

from backend.cameras import VIEWS, Cameras
from backend.errors import InputError
from backend.guidance.base import Guidance, NoisePrediction, Prompt, v_to_epsilon
from backend.guidance.perp_neg import view_mix
from backend.guidance.sd_checkpoints import load_pipeline
from backend.speed import SpeedConfig
from backend.transfer import to_device

log = logging.getLogger(__name__)


class StableDiffusionGuidance(Guidance):
    """ε̂(z_t; y, t) from a Stable Diffusion U-Net with classifier-free guidance (and Perp-Neg when the prompt
    asks for it).

    Build it with `StableDiffusionGuidance.load(model)`; the constructor takes loaded components.
    """

    perp_neg_by_default = True

    def __init__(self, pipe: StableDiffusionPipeline, device: torch.device | str, name: str) -> None:
        self.device = torch.device(device)
        self.name = name
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.text_encoder = pipe.text_encoder
        self.tokenizer = pipe.tokenizer
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(self.device).eval().requires_grad_(False)
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = str(self.scheduler.config.prediction_type)
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(
                f"model {name!r} predicts {self.prediction_type!r}",
                "score distillation needs an epsilon or v_prediction checkpoint (SD 1.x / 2.x)",
            )
        sample_size = self.vae.config.sample_size
        self.image_size = int(sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_size = self.image_size // self.vae_scale_factor
        self._embeddings: dict[str, torch.Tensor] = {}
        self._tables: dict[Prompt, tuple[torch.Tensor, torch.Tensor]] = {}
        self._denoiser: Callable[..., object] = self.unet  # the U-Net, or its compiled form
        self._speed: tuple[str, str] = ("off", "off")  # (channels_last, compile_unet) applied

    @classmethod
    def load(
        cls,
        model: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        config: str | os.PathLike | None = None,
    ) -> StableDiffusionGuidance:
        """Stable Diffusion from a hub id, a diffusers folder or a single checkpoint file (see
        `backend.guidance.sd_checkpoints.load_pipeline`, which says where each kind is looked for and what it
        raises). Weights are float16 on CUDA and float32 elsewhere unless `dtype` says otherwise."""
        device = torch.device(device)
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        return cls(load_pipeline(model, dtype, config), device, os.fspath(model))

    @classmethod
    def random(
        cls, arch: str = "sd15", device: str | torch.device = "cpu", dtype: torch.dtype | None = None, seed: int = 0
    ) -> StableDiffusionGuidance:
        """An architecture of `backend.guidance.random_sd` with random weights (float16 on CUDA, as `load`)."""
        from backend.guidance.random_sd import build_components

        device = torch.device(device)
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        parts = build_components(arch, seed=seed, device=device)
        for name in ("unet", "vae", "text_encoder"):
            # torch's own `to`: diffusers' warns about float32-only modules, which these architectures lack
            torch.nn.Module.to(parts[name], dtype)
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        return cls(pipe, device, f"{arch} (random weights)")

    def accelerate(self, speed: SpeedConfig) -> None:
        """Apply `speed`'s channels-last and U-Net compile switches (resolved: no "auto"); idempotent."""
        wanted = (speed.channels_last, speed.compile_unet)
        if wanted == self._speed:
            return  # a worker reuses one guidance for many jobs: compile once
        fmt = torch.channels_last if speed.channels_last == "on" else torch.contiguous_format
        for module in (self.unet, self.vae):
            module.to(memory_format=fmt)
        self._denoiser = self.unet
        if speed.compile_unet != "off":
            # static shapes: every call of a job has the same batch (CFG's 2·B) and latent size
            self._denoiser = torch.compile(self.unet, mode=speed.compile_unet, dynamic=False)
        self._speed = wanted

    # -- prompts ---------------------------------------------------------------------------------------

    def prepare(self, prompt: Prompt) -> None:
        """Encode the negative prompt and the prompt for every view once, in one text-encoder call."""
        texts = [prompt.negative] + [prompt.for_view(v) for v in VIEWS]
        self._encode_missing(texts)

    def _encode_missing(self, texts: list[str]) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self._embeddings]
        if not missing:
            return
        max_length = self.tokenizer.model_max_length
        tokens = self.tokenizer(missing, padding="max_length", max_length=max_length, truncation=True,
                                return_tensors="pt")
        for text in missing:
            if len(self.tokenizer(text).input_ids) > max_length:
                log.warning("prompt %r is longer than %d tokens; its end is ignored", text, max_length)
        # SD's own pipelines pass the attention mask only to text encoders trained with one (few are)
        mask = tokens.attention_mask.to(self.device) if getattr(
            self.text_encoder.config, "use_attention_mask", False) else None
        with torch.no_grad():
            hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        self._embeddings.update(zip(missing, hidden, strict=True))

    def _embeddings_for(self, texts: list[str]) -> torch.Tensor:
        self._encode_missing(texts)
        return torch.stack([self._embeddings[t] for t in texts])

    def _prompt_table(self, prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
        """(negative [1, L, D], one conditional embedding per entry of `VIEWS` [4, L, D] or the plain text [1, L, D]).

        Built once per prompt, so a step picks its embeddings by indexing on the device, never by a host
        round trip through the cameras' view labels.
        """
        if prompt not in self._tables:
            views = VIEWS if prompt.view_dependent else ("",)
            self._tables[prompt] = (self._embeddings_for([prompt.negative]),
                                    self._embeddings_for([prompt.for_view(v) for v in views]))
        return self._tables[prompt]

    def conditional_embeddings(self, prompt: Prompt, cameras: Cameras) -> torch.Tensor:
        """The prompt's embedding per camera [B, L, D]: its view's when the prompt is view-dependent."""
        table = self._prompt_table(prompt)[1]
        if not prompt.view_dependent:
            return table.expand(cameras.batch, -1, -1)
        return table[cameras.view_indices().to(table.device)]

    def trainable_denoiser(self, rank: int) -> torch.nn.Module:
        """A LoRA of this U-Net, conditioned on the camera (see `backend.guidance.lora`)."""
        from backend.guidance.lora import LoRADenoiser

        return LoRADenoiser(self, rank)

    # -- the prior -------------------------------------------------------------------------------------

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, prompt: Prompt, cameras: Cameras) -> NoisePrediction:
        batch = z_t.shape[0]
        if cameras.batch != batch:
            raise ValueError(f"{cameras.batch} cameras for {batch} latents")
        negative, table = self._prompt_table(prompt)
        perp_neg = prompt.perp_neg and prompt.view_dependent
        if perp_neg:  # [positive blend, negative 1, negative 2], each [B, L, D]
            pos_idx, pos_w, neg_idx, neg_w = (v.to(table.device) for v in view_mix(cameras))
            cond = torch.cat([(pos_w[..., None, None] * table[pos_idx]).sum(1), *table[neg_idx].unbind(1)])
        else:
            cond = self.conditional_embeddings(prompt, cameras)
        parts = 1 + cond.shape[0] // batch
        t = to_device(torch.as_tensor(t), self.device).reshape(-1).expand(batch)
        with torch.no_grad():
            z_in = z_t.detach().to(self.device, self.unet.dtype)
            # one U-Net call for the unconditional and every conditional prediction
            raw = self.run_unet(z_in.repeat(parts, 1, 1, 1), t.repeat(parts),
                                torch.cat([negative.expand(batch, -1, -1), cond]).to(self.unet.dtype))
            out = raw.float()
            if out is raw and self._speed[1] == "reduce-overhead":
                out = out.clone()  # the graph's own output buffer: the next replay overwrites it
            if self.prediction_type == "v_prediction":
                # each part on its own: guidance combines parts with weights that sum to 1 and differences of
                # parts, where this affine map's offset cancels, so ε's combine exactly as the v's would
                out = v_to_epsilon(out, z_t.detach().float().repeat(parts, 1, 1, 1),
                                   self.alphas_cumprod[t.long()].repeat(parts))
            out_uncond, out_cond, *out_neg = out.chunk(parts)
        if perp_neg:
            return NoisePrediction(out_uncond, out_cond, torch.stack(out_neg), neg_w.to(out))
        return NoisePrediction(out_uncond, out_cond)

    @property
    def unet_compile_mode(self) -> str:
        """How the U-Net runs: "off" (eager), or the torch.compile mode applied by `accelerate`."""
        return self._speed[1]

    def run_unet(self, z: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The U-Net's raw output for one batch, called as every step calls it (compiled if switched on)."""
        if self._speed[1] == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # each call is a new replay of the captured graph
        return self._denoiser(z, t, encoder_hidden_states=hidden).sample

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """RGB [B, 3, H, W] in [0, 1] → latents [B, 4, h, w], scaled as the U-Net expects.

        Uses the posterior mean, not a sample: deterministic, and SD's posterior variance is negligible.
        """
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False)
        x = (2 * images - 1).to(self.device, self.vae.dtype)
        z = self.vae.encode(x).latent_dist.mean
        return ((z - self._shift) * self.vae.config.scaling_factor).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, 4, h, w] → RGB [B, 3, H, W] in [0, 1]."""
        z = latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor + self._shift
        x = self.vae.decode(z).sample
        return ((x.float() + 1) / 2).clamp(0, 1)

    @property
    def _shift(self) -> float:
        # SD 1.x/2.x VAEs have none; later VAEs centre their latents with it
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    def describe(self) -> str:
        dtype = str(self.unet.dtype).removeprefix("torch.")
        return f"Stable Diffusion {self.name} ({self.prediction_type}, {dtype})"


# -- loading -----------------------------------------------------------------------------------------------


# "name" or "owner/name": anything else with a separator in it can only be a path
