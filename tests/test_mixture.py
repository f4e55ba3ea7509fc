"""MixtureGuidance: its optimal denoiser, caption matching, classifier-free guidance, the mixture file and its
errors; and random backgrounds reaching both the scene's render and the prior's answer."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh
from shapes import BLUE, RED, two_tone_box

from backend.cameras import CameraConfig, Cameras, CameraSampler
from backend.cli import main
from backend.config import merge
from backend.errors import ConfigError, InputError
from backend.guidance import build_guidance
from backend.guidance.base import Prompt
from backend.guidance.mixture import MixtureGuidance, mixture_denoise, words
from backend.guidance.target import TargetGuidance
from backend.latent import rgb_to_latent
from backend.mesh import Mesh, to_file_frame
from backend.tasks.generate import GenerateConfig, NeRFScene
from backend.tasks.paint import LatentTexture

CAMS = Cameras.orbit([10.0, 40.0, -5.0], [20.0, 200.0, 95.0], 1.3, 50.0)


def box(extents, color) -> Mesh:
    b = trimesh.creation.box(extents)
    v = np.asarray(b.vertices, np.float32)
    return Mesh(v, np.asarray(b.faces), vertex_colors=np.tile(np.asarray(color, np.float32), (len(v), 1)))


def tall_and_flat() -> MixtureGuidance:
    return MixtureGuidance([box((0.5, 0.5, 1.4), RED), box((1.4, 1.4, 0.5), BLUE)],
                           ["a tall red tower", "a flat blue slab"])


def noised(z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, guidance) -> torch.Tensor:
    a = guidance.alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * z0 + (1 - a).sqrt() * eps


def test_the_noise_no_longer_cancels():
    """TargetGuidance's ε̂ − ε = √(ᾱ/(1−ᾱ))·(z − z*) whatever ε; the mixture's depends on ε."""
    mixture, target = tall_and_flat(), TargetGuidance(two_tone_box())
    t = torch.tensor([900, 900, 900])
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 8, 8, generator=gen) * 0.3
    eps1, eps2 = (torch.randn(3, 4, 8, 8, generator=gen) for _ in range(2))
    prompt = Prompt("a tall red tower")
    # (at scale 1 the mixture is its conditional part, a single target here, so the noise cancels again)
    for guidance, scale, depends in ((target, 100.0, False), (mixture, 0.0, True), (mixture, 100.0, True)):
        d1 = guidance.predict_noise(noised(z, t, eps1, guidance), t, prompt, CAMS).guided(scale) - eps1
        d2 = guidance.predict_noise(noised(z, t, eps2, guidance), t, prompt, CAMS).guided(scale) - eps2
        gap = float((d1 - d2).abs().max())
        assert (gap > 0.1) if depends else (gap < 1e-3), (type(guidance).__name__, scale, gap)


def test_mixture_denoiser_is_the_posterior_mean():
    gen = torch.Generator().manual_seed(1)
    z_star = torch.randn(3, 2, 4, 2, 2, generator=gen)  # K = 3 point masses, B = 2
    t = torch.tensor([300, 950])
    mixture = tall_and_flat()
    a = mixture.alphas_cumprod[t]
    z_t = noised(z_star[1], t, torch.randn(2, 4, 2, 2, generator=gen), mixture)
    # Bayes by hand: p(k | z_t) ∝ N(z_t; √ᾱ z*_k, (1 − ᾱ) I)
    log_lik = torch.stack([torch.distributions.Normal(a.sqrt().view(-1, 1, 1, 1) * z_star[k],
                                                      (1 - a).sqrt().view(-1, 1, 1, 1)).log_prob(z_t).flatten(1).sum(1)
                           for k in range(3)])
    expected = (torch.softmax(log_lik, 0)[..., None, None, None] * z_star).sum(0)
    assert torch.allclose(mixture_denoise(z_t, a, z_star), expected, atol=1e-5)
    # a single mass is TargetGuidance's answer
    assert torch.allclose(mixture_denoise(z_t, a, z_star[:1]), z_star[0])


def test_prompt_and_guidance_scale_reach_the_prior():
    mixture = tall_and_flat()
    single = MixtureGuidance([box((0.5, 0.5, 1.4), RED)], ["a tall red tower"])
    target = TargetGuidance(box((0.5, 0.5, 1.4), RED))
    t = torch.tensor([700, 700, 700])
    eps = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    z_t = noised(torch.zeros(3, 4, 8, 8), t, eps, mixture)
    tower, slab = Prompt("a tall red tower"), Prompt("A flat, blue slab!")
    # scale 0 is the unconditional mixture: the prompt does not matter
    assert torch.allclose(mixture.predict_noise(z_t, t, tower, CAMS).guided(0.0),
                          mixture.predict_noise(z_t, t, slab, CAMS).guided(0.0))
    # scale 1 is the conditional one: each prompt gets its own target, and CFG extrapolates from the mixture
    a = mixture.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_star = mixture.all_target_latents(CAMS, 8)
    for prompt, k in ((tower, 0), (slab, 1)):
        cond = mixture.predict_noise(z_t, t, prompt, CAMS).guided(1.0)
        assert torch.allclose(cond, (z_t - a.sqrt() * z_star[k]) / (1 - a).sqrt(), atol=1e-4)
        uncond = mixture.predict_noise(z_t, t, prompt, CAMS).guided(0.0)
        guided = mixture.predict_noise(z_t, t, prompt, CAMS).guided(7.5)
        assert torch.allclose(guided, uncond + 7.5 * (cond - uncond), atol=1e-3)
    assert not torch.allclose(mixture.predict_noise(z_t, t, tower, CAMS).guided(1.0),
                              mixture.predict_noise(z_t, t, slab, CAMS).guided(1.0))
    # one target: TargetGuidance, once both use the same frame
    single.set_frame(target.frame)
    assert torch.allclose(single.predict_noise(z_t, t, tower, CAMS).guided(100.0),
                          target.predict_noise(z_t, t, tower, CAMS).guided(100.0), atol=1e-4)


def test_captions_match_by_words():
    assert words("A red toadstool, front view") == {"red", "toadstool"}
    mixture = MixtureGuidance([box((0.5, 0.5, 1.4), RED), box((1.4, 1.4, 0.5), BLUE), box((1, 1, 1), RED)],
                              ["tower", "blue slab", "red tower"])
    assert mixture.matching(Prompt("a tall tower made of stone")) == [0]
    assert mixture.matching(Prompt("Red TOWER")) == [0, 2]  # both captions' words are in it: uniform over both
    assert mixture.matching(Prompt("a slab, blue")) == [1]
    with pytest.raises(InputError) as err:
        mixture.prepare(Prompt("a slab"))
    assert all(c in str(err.value) for c in ("'tower'", "'blue slab'", "'red tower'"))


def test_the_frame_is_fitted_over_all_targets():
    left, right = box((0.4, 0.4, 0.4), RED), box((0.4, 0.4, 0.4), BLUE)
    right = right.copy_with(vertices=right.vertices + np.float32([3.0, 0.0, 0.0]))
    mixture = MixtureGuidance([left, right], ["left", "right"])
    assert mixture.suggested_frame().center == pytest.approx((1.5, 0.0, 0.0))
    unit = np.concatenate([mixture.frame.to_unit(m.vertices) for m in (left, right)])
    assert np.linalg.norm(unit, axis=1).max() == pytest.approx(0.5, abs=1e-5)


# -- random backgrounds ----------------------------------------------------------------------------------


def test_random_backgrounds_are_drawn_with_their_probability_and_reach_the_answer():
    def drawn(config, default=0.0):
        sampler = CameraSampler(config, torch.Generator().manual_seed(0), "cpu", default)
        return [sampler.sample(2).background for _ in range(120)]

    assert all(b is None for b in drawn(CameraConfig()))  # Stable Diffusion's default: off
    half = drawn(CameraConfig(), default=0.5)
    on = [b for b in half if b is not None]
    assert 35 < len(on) < 85 and all(b.shape == (2, 3) and b.min() >= 0 and b.max() <= 1 for b in on)
    assert all(b is not None for b in drawn(CameraConfig(random_background=1.0), default=0.0))
    assert all(b is None for b in drawn(CameraConfig(random_background=0.0), default=0.5))
    with pytest.raises(ConfigError, match="random_background"):
        CameraConfig(random_background=1.5).validate()
    # the prior's answer sits on the step's colour where the mesh does not cover the pixel
    target = TargetGuidance(two_tone_box())
    green = torch.tensor([[0.1, 0.9, 0.2]]).expand(3, 3)
    plain = target.render_rgb(CAMS, 16)
    on_green = target.render_rgb(replace(CAMS, background=green), 16)
    assert torch.allclose(plain[:, :, 0, 0], torch.ones(3, 3)) and torch.allclose(on_green[:, :, 0, 0], green)


def test_scenes_composite_over_the_random_background():
    purple = torch.tensor([[0.6, 0.1, 0.7]]).expand(3, 3)
    cams = replace(CAMS, background=purple)
    config = merge(GenerateConfig(prompt="x"), {"resolution": 8, "render": {"samples": 8},
                                                "nerf": {"levels": 2, "log2_table_size": 10, "max_resolution": 32}})
    cpu = torch.device("cpu")
    scene = NeRFScene(config.nerf, config.render, cpu, torch.Generator().manual_seed(0), config.speed.resolve(cpu))
    with torch.no_grad():
        scene.nerf.sigma_net[-1].bias[0] = -30.0  # empty space: every pixel is background
        latent = scene.render(cams, 8, "latent", train=False).image
        rgb = scene.render(cams, 8, "albedo", train=False).image
    assert torch.allclose(latent, rgb_to_latent(purple)[:, :, None, None].expand_as(latent), atol=1e-4)
    assert torch.allclose(rgb, purple[:, :, None, None].expand_as(rgb), atol=1e-4)
    far = torch.tensor([[5.0, 5.0, 5.0], [6.0, 5.0, 5.0], [5.0, 6.0, 5.0]])  # a triangle no camera sees
    texture = LatentTexture(far, torch.tensor([[0, 1, 2]]), torch.rand(3, 2), 8)
    image = texture.render(cams, 8).image
    assert torch.allclose(image, rgb_to_latent(purple)[:, :, None, None].expand_as(image), atol=1e-5)


# -- the mixture file ------------------------------------------------------------------------------------


def save(mesh: Mesh, path, colored: bool = True):
    tm = trimesh.Trimesh(to_file_frame(mesh.vertices), mesh.faces, process=False)
    if colored:
        tm.visual.vertex_colors = (np.c_[mesh.vertex_colors, np.ones(len(mesh.vertices))] * 255).astype(np.uint8)
    tm.export(path)
    return path


def test_mixture_file_loads_through_the_registry(tmp_path):
    (tmp_path / "meshes").mkdir()
    save(box((0.5, 0.5, 1.4), RED), tmp_path / "meshes" / "tower.glb")
    save(box((1.4, 1.4, 0.5), BLUE), tmp_path / "meshes" / "slab.glb")
    (tmp_path / "m.toml").write_text('[[target]]\nmesh = "meshes/tower.glb"\ncaption = "a tower"\n\n'
                                     '[[target]]\nmesh = "meshes/slab.glb"\ncaption = "a slab"\n')
    guidance = build_guidance(f"mixture:{tmp_path / 'm.toml'}")
    assert isinstance(guidance, MixtureGuidance) and guidance.captions == ["a tower", "a slab"]
    assert "2 targets" in guidance.describe()
    with pytest.raises(ConfigError, match="names no file"):
        build_guidance("mixture:")


BAD_FILES = {
    "missing": (None, "does not exist"),
    "not TOML": ("[[target]\nmesh = ", "as TOML"),
    "no targets": ('title = "x"\n', "unknown settings title"),
    "empty": ("", "no [[target]] tables"),
    "no caption": ('[[target]]\nmesh = "tower.glb"\n', "needs mesh and caption"),
    "missing mesh": ('[[target]]\nmesh = "nowhere.glb"\ncaption = "a tower"\n', "does not exist"),
    "no colours": ('[[target]]\nmesh = "plain.glb"\ncaption = "a plain tower"\n', "has no colours"),
    "duplicate captions": ('[[target]]\nmesh = "tower.glb"\ncaption = "A tower"\n\n'
                           '[[target]]\nmesh = "tower.glb"\ncaption = "tower"\n', "are the same words"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_mixture_files_are_clear_errors_without_traceback(case, tmp_path, capsys):
    text, message = BAD_FILES[case]
    save(box((0.5, 0.5, 1.4), RED), tmp_path / "tower.glb")
    save(box((0.5, 0.5, 1.4), RED), tmp_path / "plain.glb", colored=False)
    path = tmp_path / "mixture.toml"
    if text is not None:
        path.write_text(text)
    argv = ["generate", "--prompt", "a tower", "--guidance", f"mixture:{path}", "--device", "cpu",
            "--out", str(tmp_path / "o.glb")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "o.glb").exists()


def test_a_prompt_no_caption_matches_is_a_clear_error(tmp_path, capsys):
    save(box((0.5, 0.5, 1.4), RED), tmp_path / "tower.glb")
    (tmp_path / "m.toml").write_text('[[target]]\nmesh = "tower.glb"\ncaption = "a red tower"\n')
    assert main(["generate", "--prompt", "a blue tower", "--guidance", f"mixture:{tmp_path / 'm.toml'}",
                 "--device", "cpu", "--out", str(tmp_path / "o.glb")]) == 2
    err = capsys.readouterr().err
    assert "matches none of the mixture's captions: 'a red tower'" in err and "Traceback" not in err
