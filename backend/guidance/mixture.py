"""MixtureGuidance: the analytic prior of K captioned coloured meshes G_k.

For camera c and prompt y the data distribution is uniform over the renders z*_{k,c} whose caption
matches y (conditional) or over all K (unconditional). Its optimal denoiser is
x̂(z_t) = Σ_k π_k·z*_{k,c} with π = softmax_k(−‖z_t − √ᾱ_t·z*_{k,c}‖² / (2(1 − ᾱ_t))), and
ε̂ = (z_t − √ᾱ_t·x̂)/√(1 − ᾱ_t); classifier-free guidance combines the conditional and unconditional ε̂
as for Stable Diffusion: ε̂_u + s·(ε̂_c − ε̂_u). Unlike `TargetGuidance`, the noise, the prompt and the
guidance scale all change the answer, so tests can see whether each reaches the prior.

Captions match by words: a caption matches a prompt when every word of the caption appears in the prompt
(case-insensitive; words are runs of letters and digits; "a", "an" and "the" are ignored; the
view-dependent suffix such as ", front view" is not part of the prompt). A prompt no caption matches is
an error that lists the captions.

A caption may end in a view suffix itself ("a mug, front view"): with view-dependent prompts, a camera's
conditional distribution is then the matching captions that name its view, else those that name no view,
else every matching caption, so the prior's front can differ from its back as a text-to-image model's does.

A mixture file is TOML with one `[[target]]` table per mesh:

    [[target]]
    mesh = "red_cube.glb"      # relative to this file
    caption = "a red cube"
"""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import torch

from backend.cameras import VIEWS, Cameras
from backend.errors import InputError
from backend.guidance.analytic import AnalyticGuidance, epsilon_of
from backend.guidance.base import NoisePrediction, Prompt
from backend.mesh import Mesh, load_mesh

IGNORED_WORDS = frozenset({"a", "an", "the"})
_VIEW_SUFFIX = re.compile(rf",\s*(?:{'|'.join(VIEWS)}) view\s*$", re.IGNORECASE)
MIXTURE_HINT = 'write one [[target]] table per mesh, each with mesh = "PATH" (relative to the file) and caption = "..."'


def words(text: str) -> frozenset[str]:
    """The words a caption or prompt is matched by (view suffix and articles dropped)."""
    text = _VIEW_SUFFIX.sub("", text)
    return frozenset(re.findall(r"[a-z0-9]+", text.lower())) - IGNORED_WORDS


def caption_view(caption: str) -> int | None:
    """The index into `VIEWS` of a caption's own view suffix, or None."""
    found = _VIEW_SUFFIX.search(caption)
    return None if found is None else VIEWS.index(found.group(0).split()[-2].lower())


def mixture_denoise(z_t: torch.Tensor, alpha_bar: torch.Tensor, z_star: torch.Tensor,
                    members: torch.Tensor | None = None) -> torch.Tensor:
    """x̂ [B, C, H, W]: the posterior mean of z_0 under a uniform mixture of point masses z_star [K, B, C, H, W]
    (per latent, only the masses where `members` [K, B] is true)."""
    a = alpha_bar.view(1, -1, 1, 1, 1).to(z_t)
    d2 = ((z_t[None] - a.sqrt() * z_star) ** 2).flatten(2).sum(-1)  # [K, B]
    logits = -d2 / (2 * (1 - a.view(1, -1)))
    if members is not None:
        logits = logits.masked_fill(~members, float("-inf"))
    pi = torch.softmax(logits, dim=0)
    return (pi[..., None, None, None] * z_star).sum(0)


class MixtureGuidance(AnalyticGuidance):
    def __init__(self, meshes: list[Mesh], captions: list[str], device: torch.device | str = "cpu",
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        if not meshes or len(meshes) != len(captions):
            raise InputError("a mixture needs at least one mesh and one caption per mesh", MIXTURE_HINT)
        self.captions = list(captions)
        self._words = [words(c) for c in captions]
        for caption, w in zip(captions, self._words, strict=True):
            if not w:
                raise InputError(f"the mixture caption {caption!r} has no words to match a prompt by")
        self._views = [caption_view(c) for c in captions]
        seen: dict[tuple[frozenset[str], int | None], str] = {}
        for caption, key in zip(captions, zip(self._words, self._views, strict=True), strict=True):
            if key in seen:
                raise InputError(f"the mixture captions {seen[key]!r} and {caption!r} are the same words",
                                 "give every target its own caption")
            seen[key] = caption
        super().__init__(meshes, device, background, names=[f"mixture target {c!r}'s mesh" for c in captions])
        self.meshes = meshes

    @staticmethod
    def from_file(path: str | Path, device: torch.device | str = "cpu") -> MixtureGuidance:
        meshes, captions = read_mixture(path)
        return MixtureGuidance(meshes, captions, device)

    def matching(self, prompt: Prompt | str) -> list[int]:
        """The targets whose caption matches the prompt, or an `InputError` naming the captions."""
        text = prompt.text if isinstance(prompt, Prompt) else prompt
        said = words(text)
        found = [k for k, w in enumerate(self._words) if w <= said]
        if not found:
            listed = "; ".join(repr(c) for c in self.captions)
            raise InputError(f"the prompt {text!r} matches none of the mixture's captions: {listed}",
                             "use every word of one caption in the prompt")
        return found

    def members(self, prompt: Prompt, cameras: Cameras) -> torch.Tensor:
        """[K, B]: which targets the conditional distribution of each camera's prompt holds."""
        matched = torch.zeros(len(self.captions), dtype=torch.bool, device=self.device)
        matched[self.matching(prompt)] = True
        members = matched[:, None].expand(-1, cameras.batch)
        if not prompt.view_dependent or all(v is None for v in self._views):
            return members
        views = torch.tensor([-1 if v is None else v for v in self._views], device=self.device)[:, None]
        named = members & (views == cameras.view_indices().to(self.device)[None])  # captions naming the view
        plain = members & (views == -1)  # else the captions that name none, else every match
        return torch.where(named.any(0), named, torch.where(plain.any(0), plain, members))

    def prepare(self, prompt: Prompt) -> None:
        self.matching(prompt)  # an unmatched prompt fails before the first step

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, prompt: Prompt, cameras: Cameras) -> NoisePrediction:
        with torch.no_grad():
            z_star = self.all_target_latents(cameras, z_t.shape[-1]).to(z_t)
            a = self.alphas_cumprod[t]
            eps_uncond = epsilon_of(z_t, a, mixture_denoise(z_t, a, z_star))
            eps_cond = epsilon_of(z_t, a, mixture_denoise(z_t, a, z_star, self.members(prompt, cameras)))
        return NoisePrediction(eps_uncond.float(), eps_cond.float())

    def describe(self) -> str:
        return f"MixtureGuidance ({len(self.captions)} targets: {'; '.join(self.captions)})"


def read_mixture(path: str | Path) -> tuple[list[Mesh], list[str]]:
    """The meshes and captions a mixture file lists, or an `InputError` that says what to fix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"the mixture file {str(path)!r} does not exist", MIXTURE_HINT)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read the mixture file {path.name!r} as TOML: {exc}", MIXTURE_HINT) from exc
    extra = sorted(set(data) - {"target"})
    if extra:
        raise InputError(f"the mixture file {path.name!r} has unknown settings {', '.join(extra)}", MIXTURE_HINT)
    tables = data.get("target")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise InputError(f"the mixture file {path.name!r} lists no [[target]] tables", MIXTURE_HINT)
    meshes, captions = [], []
    for i, table in enumerate(tables, 1):
        unknown = sorted(set(table) - {"mesh", "caption"})
        mesh, caption = table.get("mesh"), table.get("caption")
        if unknown or not isinstance(mesh, str) or not mesh or not isinstance(caption, str):
            problem = f"unknown keys {', '.join(unknown)}" if unknown else "needs mesh and caption as text"
            raise InputError(f"target {i} of the mixture file {path.name!r} {problem}", MIXTURE_HINT)
        meshes.append(load_mesh(path.parent / mesh, f"mixture target {caption!r}'s mesh"))
        captions.append(caption)
    return meshes, captions
