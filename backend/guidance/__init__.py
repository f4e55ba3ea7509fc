"""Guidance registry: `sd:MODEL` (Stable Diffusion), `target:MESH` (the analytic known-answer prior) or
`mixture:FILE.toml` (the analytic prior of several captioned meshes)."""

from __future__ import annotations

import os
import re

# huggingface_hub reads these once, when first imported, and every model load imports it through this package
# first: keep a download attempt with no network short (a user's own settings win)
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "5")

import torch  # noqa: E402

from backend.errors import ConfigError  # noqa: E402
from backend.guidance.base import Guidance, Prompt  # noqa: E402

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def default_model() -> str:
    """`LATENTFORGE_MODEL` if set (a hub id, a diffusers folder or a .safetensors file), else SD 1.5."""
    return os.environ.get("LATENTFORGE_MODEL") or DEFAULT_MODEL


def build_guidance(spec: str, device: torch.device | str = "cpu") -> Guidance:
    """Build a guidance from `sd:MODEL`, `target:PATH`, `mixture:FILE.toml` or a bare model (taken as `sd:`)."""
    kind, sep, arg = spec.partition(":")
    if sep and kind not in GUIDANCES and re.fullmatch(r"[A-Za-z][A-Za-z0-9_+-]+", kind):
        # a scheme, not a path: hub ids hold no colon, and a Windows drive is one letter ("C:\\...")
        raise ConfigError(f"unknown guidance scheme {kind + ':'!r} in {spec!r}",
                          f"choose one of {', '.join(k + ':' for k in GUIDANCES)}, e.g. sd:MODEL or target:MESH.glb")
    if not sep or kind not in GUIDANCES:
        # a bare hub id or path, e.g. "runwayml/stable-diffusion-v1-5" or "C:\\models\\sd15.safetensors"
        kind, arg = "sd", spec
    if not arg:
        if kind == "sd":
            arg = default_model()
        else:
            example = "mixture:PATH/TO/MIXTURE.toml" if kind == "mixture" else "target:PATH/TO/MESH.glb"
            raise ConfigError(f"guidance {spec!r} names no file", f"write {example}")
    return GUIDANCES[kind](arg, torch.device(device))


def _sd(arg: str, device: torch.device) -> Guidance:
    from backend.guidance.stable_diffusion import StableDiffusionGuidance

    return StableDiffusionGuidance.load(arg, device=device)


def _target(arg: str, device: torch.device) -> Guidance:
    from backend.guidance.target import TargetGuidance

    return TargetGuidance.from_file(arg, device=device)


def _mixture(arg: str, device: torch.device) -> Guidance:
    from backend.guidance.mixture import MixtureGuidance

    return MixtureGuidance.from_file(arg, device=device)


GUIDANCES = {"sd": _sd, "target": _target, "mixture": _mixture}

__all__ = ["DEFAULT_MODEL", "GUIDANCES", "Guidance", "Prompt", "build_guidance", "default_model"]
