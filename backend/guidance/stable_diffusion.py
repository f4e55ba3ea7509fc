"""Stable Diffusion 1.x / 2.x as the 2D prior, loaded with diffusers.

Only what score distillation needs is kept: the U-Net (noise prediction with classifier-free guidance),
the VAE (image↔latent, differentiable), the CLIP text encoder and tokenizer (prompt embeddings, computed
once per distinct string) and the noise schedule, as a `DDIMScheduler` built from the checkpoint's own
scheduler config so that ᾱ_t and the prediction type (ε or v) are the checkpoint's.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from backend.cameras import VIEWS, Cameras
from backend.errors import InputError, LatentForgeError, ModelNotFoundError
from backend.guidance.base import Guidance, NoisePrediction, Prompt, v_to_epsilon
from backend.guidance.perp_neg import view_mix
from backend.speed import SpeedConfig
from backend.transfer import to_device

# huggingface_hub reads these once, when first imported: keep a download attempt with no network short
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "5")

from diffusers import DDIMScheduler, StableDiffusionPipeline  # noqa: E402
from diffusers.loaders.single_file_utils import SingleFileComponentError  # noqa: E402
from huggingface_hub import constants as hub_constants  # noqa: E402
from safetensors import SafetensorError, safe_open  # noqa: E402

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
CONFIG_ENV = "LATENTFORGE_SD_CONFIG"
LDM_UNET_PREFIX = "model.diffusion_model."
MODEL_HINT = (
    "point --model (or LATENTFORGE_MODEL) at a local diffusers folder (one with model_index.json) or a "
    "single .safetensors/.ckpt checkpoint; a hub id is downloaded once into the Hugging Face cache and "
    "needs network access that time"
)
# what a failed load raises: hub and file errors are OSErrors, bad repo ids ValueErrors
_LOAD_ERRORS = (OSError, ValueError)


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
        """Load Stable Diffusion from a hub id, a diffusers folder or a single checkpoint file.

        - hub id (e.g. "stable-diffusion-v1-5/stable-diffusion-v1-5"): the Hugging Face cache first, then
          a download;
        - a folder with model_index.json: loaded as it is, never touching the network;
        - a single `.safetensors` / `.ckpt` file in the original LDM layout (as on civitai and the original
          SD releases): `from_single_file`, which needs the matching diffusers configs. They come from
          `config` (a diffusers folder or hub id of the same architecture), else from the folder named by
          the environment variable LATENTFORGE_SD_CONFIG, else from the hub repo diffusers infers from
          the checkpoint (cached, or downloaded). Offline, pass `config` or set LATENTFORGE_SD_CONFIG.

        Weights are float16 on CUDA and float32 elsewhere unless `dtype` says otherwise. Raises
        `ModelNotFoundError` when the weights are neither on disk nor downloadable, `InputError` when a
        file is not a Stable Diffusion checkpoint.
        """
        device = torch.device(device)
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        name = os.fspath(model)
        path = Path(name).expanduser()
        if path.is_file():
            pipe = _load_single_file(path, dtype, config)
        elif path.is_dir():
            _require_diffusers_folder(path, "model")
            pipe = _load(StableDiffusionPipeline.from_pretrained, str(path), dtype, local_only=True,
                         not_found=lambda why: ModelNotFoundError(
                             f"could not load Stable Diffusion from {path}: {why}", MODEL_HINT))
        elif _looks_like_path(name):
            raise ModelNotFoundError(f"no model file or folder at {path}", MODEL_HINT)
        else:
            pipe = _load(StableDiffusionPipeline.from_pretrained, name, dtype, local_only=False,
                         not_found=lambda why: ModelNotFoundError(
                             f"{name!r} is no local file or folder, and as a hub id it is not in the Hugging "
                             f"Face cache ({hub_constants.HF_HUB_CACHE}) and could not be downloaded: {why}",
                             MODEL_HINT))
        return cls(pipe, device, name)

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
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "~"))
        or name.lower().endswith(SINGLE_FILE_SUFFIXES)
        or os.path.isabs(name)
        or not _HUB_ID.fullmatch(name)
    )


def _require_diffusers_folder(path: Path, what: str) -> None:
    if not (path / "model_index.json").is_file():
        raise ModelNotFoundError(
            f"the {what} folder {path} has no model_index.json, so it is not a diffusers model folder",
            MODEL_HINT)


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it again so that setting it later counts
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(hub_constants.HF_HUB_OFFLINE) or env in {"1", "ON", "YES", "TRUE"}


def _reason(error: BaseException) -> str:
    """The error's first line and its root cause, short enough for one line of CLI output."""

    def line(e: BaseException, limit: int) -> str:
        text = (str(e).strip().splitlines() or [""])[0]
        if len(text) <= limit:
            return text
        text = text[:limit].rsplit(" ", 1)[0]
        if text.count("(") > text.count(")"):  # never leave a parenthesis open: cut before it
            text = text[:text.rfind("(")].rstrip()
        return text.rstrip(" ,;:") + "…"

    root = error
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    top = line(error, 160) or type(error).__name__
    return top if root is error else f"{top}; cause: {type(root).__name__}: {line(root, 120)}"


def _load(
    loader: Callable[..., StableDiffusionPipeline],
    source: str,
    dtype: torch.dtype,
    local_only: bool,
    not_found: Callable[[str], LatentForgeError],
    **kwargs: object,
) -> StableDiffusionPipeline:
    """Call a diffusers loader on the local cache first, then (unless local_only or offline) online.

    `not_found(reason)` builds the error a person sees when that fails.
    """
    # no safety checker: nothing is generated for people to see, and it would cost a 1.2 GB download
    kwargs = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False,
              "dtype": dtype, **kwargs}
    try:
        return loader(source, local_files_only=True, **kwargs)
    except _LOAD_ERRORS as err:
        if local_only or _offline():
            why = "offline mode is on (HF_HUB_OFFLINE)" if _offline() and not local_only else _reason(err)
            raise not_found(why) from err
    try:
        return loader(source, local_files_only=False, **kwargs)
    except _LOAD_ERRORS as err:
        raise not_found(_reason(err)) from err


def _load_single_file(
    path: Path, dtype: torch.dtype, config: str | os.PathLike | None
) -> StableDiffusionPipeline:
    if not path.name.lower().endswith(SINGLE_FILE_SUFFIXES):
        raise InputError(f"{path} is not a .safetensors or .ckpt checkpoint", MODEL_HINT)
    _check_ldm_layout(path)
    config_hint = (f"a single-file checkpoint needs the diffusers configs of its architecture: pass "
                   f"config= or set {CONFIG_ENV} to a diffusers folder of the same model, e.g. a copy of "
                   "stable-diffusion-v1-5 (its weights are not needed)")
    config = os.fspath(config) if config is not None else os.environ.get(CONFIG_ENV) or None
    config_path = Path(config).expanduser() if config is not None else None
    if config_path is not None and config_path.is_dir():
        _require_diffusers_folder(config_path, "config")
        # all on disk: a failure is the file's, or the config's fit to it, never a download's
        config, local_only, error = str(config_path), True, InputError
        what = f"could not load the checkpoint {path} with the configs in {config_path}"
    elif config is not None and _looks_like_path(config):
        raise ModelNotFoundError(f"no config folder at {config_path} for the checkpoint {path}", config_hint)
    else:
        # diffusers fetches the configs (not the weights) of `config`, or of the hub repo it infers from
        # the weights, from the Hugging Face cache or the network
        local_only, error = False, ModelNotFoundError
        what = (f"the diffusers configs for the checkpoint {path} (from "
                f"{config or 'the hub repo diffusers infers from the weights'}) are not in the Hugging Face "
                f"cache ({hub_constants.HF_HUB_CACHE}) and could not be downloaded")
    try:
        return _load(StableDiffusionPipeline.from_single_file, str(path), dtype, local_only=local_only,
                     config=config, not_found=lambda why: error(f"{what}: {why}", config_hint))
    except SingleFileComponentError as err:  # e.g. a .ckpt without VAE or text-encoder weights
        raise InputError(f"{path} is not a complete Stable Diffusion checkpoint: {_reason(err)}",
                         MODEL_HINT) from err


def _check_ldm_layout(path: Path) -> None:
    """Reject unreadable files and diffusers-layout files up front, from the safetensors header alone."""
    if not path.name.lower().endswith(".safetensors"):
        return  # a .ckpt is a pickle: nothing to learn without loading all of it
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path} is not a readable .safetensors file: {_reason(err)}",
                         "download it again; it may be truncated") from err
    if not any(k.startswith(LDM_UNET_PREFIX) for k in keys):
        raise InputError(
            f"{path} holds no Stable Diffusion U-Net in the original (LDM) layout ({LDM_UNET_PREFIX}* weights)",
            "a file of a single diffusers model or a LoRA is not a checkpoint; a diffusers folder is loaded as "
            "a folder: point --model at it",
        )
