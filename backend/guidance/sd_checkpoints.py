"""Finding and loading a Stable Diffusion checkpoint with diffusers: a hub id, a diffusers folder, or a single
`.safetensors` / `.ckpt` file in the original LDM layout, with errors that say what to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.loaders.single_file_utils import SingleFileComponentError
from huggingface_hub import constants as hub_constants
from safetensors import SafetensorError, safe_open

from backend.errors import InputError, LatentForgeError, ModelNotFoundError

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


def load_pipeline(model: str | os.PathLike, dtype: torch.dtype,
                  config: str | os.PathLike | None = None) -> StableDiffusionPipeline:
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
    return pipe


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
