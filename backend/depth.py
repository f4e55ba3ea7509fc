"""HiFA's optional depth regulariser: the render's disparity should match a monocular depth model's.

Any transformers depth-estimation model works (DPT, Depth Anything, ...): a hub id, or a folder saved
with `save_pretrained`, loaded through `AutoModelForDepthEstimation`. These models predict relative
disparity (larger is nearer), so the loss compares disparities, up to scale and shift.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from backend.errors import ConfigError, ModelNotFoundError
from backend.regularisers import scale_invariant_disparity
from backend.scene.base import Regulariser, SceneRender

DEPTH_HINT = ("give depth.model a folder saved with save_pretrained, or the hub id of a transformers "
              "depth-estimation model (e.g. Intel/dpt-hybrid-midas) that is cached or can be downloaded")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
MIN_OPACITY = 0.5  # pixels the depth loss looks at: those that are mostly object


HIFA_WEIGHT = 0.1  # HiFA's λ_d (its code's lambda_depthreg)


@dataclass
class DepthConfig:
    """HiFA's total loss has the depth term (λ_d 0.1), so with --method hifa it is on whenever a depth model is
    named. None is named by default: it would be a second large download the artist did not ask for, and
    without one the job runs without the term and says so (the rest of HiFA does not depend on it)."""

    model: str = ""  # folder or hub id of a depth-estimation model
    # annealed to 0 over training as t is. None: HiFA's λ_d with --method hifa and a model, else off; 0: off
    weight: float | None = None

    def validate(self) -> None:
        if self.weight is not None and not self.weight >= 0:
            raise ConfigError(f"depth.weight must be ≥ 0, got {self.weight}")
        if self.weight and not self.model.strip():
            raise ConfigError("depth.weight is set but depth.model names no model", DEPTH_HINT)

    def weight_for(self, method: str) -> float:
        """The term's weight in a job of `method`: the one set, else HiFA's with a model named, else 0."""
        if self.weight is not None:
            return self.weight
        return HIFA_WEIGHT if method == "hifa" and self.model.strip() else 0.0


class MonocularDepth:
    """A depth-estimation model with its input size and normalisation, fed RGB tensors directly."""

    def __init__(self, model: torch.nn.Module, size: tuple[int, int], mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        self.model = model.eval().requires_grad_(False)
        self.size = size
        device = next(model.parameters()).device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    @staticmethod
    def load(source: str, device: torch.device | str = "cpu") -> MonocularDepth:
        """From a folder saved with `save_pretrained` or a hub id (cache first, then a download)."""
        from transformers import AutoModelForDepthEstimation

        path = Path(source).expanduser()
        local = path.is_dir()
        if not local and (source.startswith((".", "~")) or path.is_absolute() or not _HUB_ID.fullmatch(source)):
            raise ModelNotFoundError(f"no depth model folder at {path}", DEPTH_HINT)
        name = str(path) if local else source
        try:
            model = AutoModelForDepthEstimation.from_pretrained(name, local_files_only=local)
        except (OSError, ValueError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ModelNotFoundError(f"could not load the depth model {source!r}: {reason}", DEPTH_HINT) from err
        size, mean, std = _input_format(model, name, local)
        return MonocularDepth(model.to(device), size, mean, std)

    @torch.no_grad()
    def disparity(self, rgb: torch.Tensor, size: int) -> torch.Tensor:
        """RGB [B, 3, H, W] in [0, 1] → relative disparity [B, size, size]."""
        x = F.interpolate(rgb.float(), size=self.size, mode="bilinear", align_corners=False)
        x = ((x - self.mean) / self.std).to(self.mean.device, next(self.model.parameters()).dtype)
        out = self.model(pixel_values=x).predicted_depth.float()
        return F.interpolate(out[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def _input_format(model: torch.nn.Module, name: str, local: bool) -> tuple[tuple[int, int], tuple, tuple]:
    """Input size and normalisation from the model's image processor, else from its config."""
    from transformers import AutoImageProcessor

    side = int(getattr(model.config, "image_size", 384))
    size, mean, std = (side, side), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    try:
        processor = AutoImageProcessor.from_pretrained(name, local_files_only=local)
    except (OSError, ValueError):
        return size, mean, std
    proc_size = getattr(processor, "size", None) or {}  # a dict or transformers' SizeDict: both have .get
    height, width = proc_size.get("height"), proc_size.get("width")
    if height and width:
        size = (int(height), int(width))
    mean = tuple(getattr(processor, "image_mean", None) or mean)
    std = tuple(getattr(processor, "image_std", None) or std)
    return size, mean, std


def depth_regulariser(depth: MonocularDepth, decode: Callable[[torch.Tensor], torch.Tensor]) -> Regulariser:
    """The loss for a volume render: its disparity against the model's estimate from the render's RGB
    (latent renders through `decode`), weighted 1 − √(step/total) so the prior shapes coarse geometry
    early and lets go as details form (as HiFA's reference anneals it)."""

    def loss(render: SceneRender, step: int, total: int) -> torch.Tensor:
        out = render.rays
        with torch.no_grad():
            rgb = decode(render.image) if render.latent else render.image
        target = depth.disparity(rgb, out.depth.shape[-1])
        distance = out.depth / out.opacity.clamp(min=1e-5)
        disparity = 1 / distance.clamp(min=1e-3)
        anneal = 1 - math.sqrt(min(step / max(total, 1), 1.0))
        return anneal * scale_invariant_disparity(disparity, target, out.opacity.detach() > MIN_OPACITY)

    return loss
