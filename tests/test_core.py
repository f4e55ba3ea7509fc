"""The optimisation's parts on their own: SDS maths, cameras, rasteriser, hash grid, loop, config."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from job_runs import generate_losses
from shapes import two_tone_box
from tiny_config import TINY

from backend.cameras import CameraConfig, Cameras, CameraSampler
from backend.config import from_dict, merge
from backend.errors import Cancelled, ConfigError
from backend.guidance.base import Guidance, NoisePrediction, Prompt, v_to_epsilon
from backend.guidance.target import TargetGuidance, sd_scheduler
from backend.latent import latent_to_rgb, rgb_to_latent
from backend.loop import Checkpointer, Stage, run_stages
from backend.objectives.sds import SDS
from backend.render.rasterize import interpolate, rasterize
from backend.render.volume import composite, intersect_sphere
from backend.scene.hashgrid import HashGrid
from backend.tasks.generate import GenerateConfig, generate


class KnownNoise(Guidance):
    """A prior whose prediction is a fixed tensor, so the SDS gradient has a closed form."""

    def __init__(self, eps_hat: torch.Tensor) -> None:
        self.scheduler = sd_scheduler()
        self.eps_hat = eps_hat

    def predict_noise(self, z_t, t, prompt, cameras):
        return NoisePrediction(self.eps_hat, self.eps_hat)

    def encode(self, images):
        return images

    def decode(self, latents):
        return latents


def test_sds_gradient_is_weighted_noise_residual():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    eps_hat = torch.randn(2, 4, 8, 8)
    guidance = KnownNoise(eps_hat)
    t = torch.tensor([100, 700])
    sds = SDS(guidance, 100.0)
    loss = sds.loss(z, None, t, Prompt("x"), None, gen)
    loss.backward()
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
    w = (1 - guidance.alphas_cumprod[t]).view(-1, 1, 1, 1)
    # the surrogate is averaged over the batch
    assert torch.allclose(z.grad, w * (eps_hat - noise) / 2, atol=1e-6)


def test_v_prediction_converts_to_epsilon():
    a = torch.tensor([0.3])
    z0, eps = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * z0  # the definition of v
    assert torch.allclose(v_to_epsilon(v, z_t, a), eps, atol=1e-6)


def test_target_guidance_is_the_optimal_denoiser():
    guidance = TargetGuidance(two_tone_box())
    cams = Cameras.orbit([10.0, 40.0], [20.0, 200.0], 1.3, 50.0)
    z_star = guidance.target_latents(cams, 8)
    t = torch.tensor([250, 900])
    a = guidance.alphas_cumprod[t].view(-1, 1, 1, 1)
    eps = torch.randn_like(z_star)
    z_t = a.sqrt() * z_star + (1 - a).sqrt() * eps
    assert torch.allclose(guidance.predict_noise(z_t, t, Prompt("x"), cams).guided(100.0), eps, atol=1e-4)
    rgb = torch.rand(1, 3, 16, 16)
    assert torch.allclose(latent_to_rgb(rgb_to_latent(rgb)), rgb, atol=1e-5)


def test_cameras_rays_and_projection_agree_and_views_are_labelled():
    cams = Cameras.orbit([0.0, 0.0, 0.0, 75.0], [0.0, 90.0, 180.0, 10.0], 2.0, 60.0)
    assert cams.view_labels() == ["front", "side", "back", "overhead"]
    assert torch.allclose(cams.c2w[0, :3, 3], torch.tensor([0.0, -2.0, 0.0]), atol=1e-6)
    o, d = cams.rays(16)
    point = o[:, 3, 12] + 1.7 * d[:, 3, 12]
    clip = torch.einsum("bij,bj->bi", cams.mvp(), torch.cat([point, torch.ones(4, 1)], -1))
    ndc = clip[:, :3] / clip[:, 3:]
    assert torch.allclose((ndc[:, 0] + 1) / 2 * 16 - 0.5, torch.full((4,), 12.0), atol=1e-3)
    assert torch.allclose((1 - ndc[:, 1]) / 2 * 16 - 0.5, torch.full((4,), 3.0), atol=1e-3)


def test_camera_sampler_respects_ranges_and_seed():
    config = CameraConfig(radius_range=(1.2, 1.4), elevation_range=(0.0, 30.0))
    a = CameraSampler(config, torch.Generator().manual_seed(1), "cpu").sample(64)
    b = CameraSampler(config, torch.Generator().manual_seed(1), "cpu").sample(64)
    assert torch.equal(a.c2w, b.c2w)
    assert a.radius.min() >= 1.2 and a.radius.max() <= 1.4
    assert a.elevation.min() >= -1e-4 and a.elevation.max() <= 30 + 1e-4
    with pytest.raises(ConfigError):
        CameraConfig(radius_range=(2.0, 1.0)).validate()


def test_sampled_cameras_carry_their_view_sectors_and_reach_straight_overhead():
    """camera.front_angle and camera.overhead_angle decide the view prompts of the cameras the sampler draws, and
    the default elevations reach DreamFusion's 90°."""
    def labels(**angles: float) -> list[str]:
        config = CameraConfig(azimuth_range=(25.0, 25.0), elevation_range=(70.0, 70.0), **angles)
        cams = CameraSampler(config, torch.Generator().manual_seed(0), "cpu").sample(2)
        return cams.take(torch.tensor([0])).view_labels()

    assert labels() == ["overhead"]  # 70° is above 90° − 30°
    assert labels(overhead_angle=10.0) == ["front"]  # below 80°; 25° from the front is inside its 70° sector
    assert labels(overhead_angle=10.0, front_angle=30.0) == ["side"]  # outside a 30° front sector
    with pytest.raises(ConfigError, match="front_angle"):
        CameraConfig(front_angle=0.0).validate()
    high = CameraSampler(CameraConfig(), torch.Generator().manual_seed(0), "cpu").sample(4000).elevation
    assert float(high.max()) > 85.0 and float(high.min()) >= -10.0 - 1e-4


def test_rasteriser_matches_hand_computed_coverage_and_barycentrics():
    # one triangle in clip space (w = 1) covering the lower-left half of a 4×4 image
    pos = torch.tensor([[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [-1.0, 1.0, 0.0, 1.0]])
    tri = torch.tensor([[0, 1, 2]])
    rast = rasterize(pos, tri, (4, 4))[0]
    covered = rast[..., 3] > 0
    # pixel centre (col + .5, row + .5) is inside when x_ndc + y_ndc ≤ 0, i.e. col + (3 − row) ≤ 3
    expected = torch.tensor([[c <= r for c in range(4)] for r in range(4)])
    assert torch.equal(covered, expected)
    # the pixel at row 3, col 0 has centre ndc (−0.75, −0.75): barycentrics (0.5, 0.125, 0.125)
    u, v = rast[3, 0, 0], rast[3, 0, 1]
    assert math.isclose(u, 0.75, abs_tol=1e-6) and math.isclose(v, 0.125, abs_tol=1e-6)
    colors = torch.eye(3)
    img = interpolate(colors, rast[None], tri)[0]
    assert torch.allclose(img[3, 0], torch.tensor([0.75, 0.125, 0.125]))
    # a nearer triangle wins the z test
    front = torch.tensor([[-1.0, -1.0, -0.5, 1.0], [1.0, -1.0, -0.5, 1.0], [-1.0, 1.0, -0.5, 1.0]])
    both = rasterize(torch.cat([pos, front]), torch.tensor([[0, 1, 2], [3, 4, 5]]), (4, 4))[0]
    assert (both[..., 3][covered] == 2).all()


def test_hash_grid_is_continuous_and_trainable():
    grid = HashGrid(levels=4, features=2, log2_table_size=10, base_resolution=4, max_resolution=32)
    torch.nn.init.normal_(grid.embeddings)
    x = torch.rand(100, 3)
    y = grid(x)
    assert y.shape == (100, 8)
    assert torch.allclose(grid(x + 1e-6), y, atol=1e-3)
    y.sum().backward()
    assert grid.embeddings.grad.abs().sum() > 0


def test_volume_compositing_of_an_opaque_slab():
    o = torch.tensor([[0.0, -3.0, 0.0]])
    d = torch.tensor([[0.0, 1.0, 0.0]])
    near, far = intersect_sphere(o, d, 1.0)
    assert torch.allclose(near, torch.tensor([2.0])) and torch.allclose(far, torch.tensor([4.0]))
    sigma = torch.tensor([[0.0, 1e4, 1e4, 0.0]])
    w = composite(sigma, torch.full((1, 4), 0.1))
    assert torch.allclose(w, torch.tensor([[0.0, 1.0, 0.0, 0.0]]), atol=1e-6)


def tiny_generate_config(**changes) -> GenerateConfig:
    return merge(GenerateConfig(prompt="a box"), {**TINY, **changes})


def test_loop_cancels_and_resumes_from_its_checkpoint(tmp_path):
    guidance = TargetGuidance(two_tone_box())
    config = tiny_generate_config()
    cancel = threading.Event()
    seen = []

    def stop_at_step_7(event):
        seen.append(event)
        if getattr(event, "step", 0) == 7 and getattr(event, "stage", "") == "latent":
            cancel.set()

    with pytest.raises(Cancelled):
        generate(config, guidance, tmp_path / "a.glb", on_event=stop_at_step_7, cancel=cancel, job_dir=tmp_path)
    assert not (tmp_path / "a.glb").exists()
    saved = Checkpointer(tmp_path).load()
    assert (saved["stage"], saved["step"]) == (0, 5)  # checkpoint_every = 5
    resumed = []
    generate(config, guidance, tmp_path / "a.glb", on_event=resumed.append, job_dir=tmp_path)
    steps = [(e.stage, e.step) for e in resumed if hasattr(e, "step") and not e.stage.startswith("export")]
    assert steps[0] == ("latent", 6) and steps[-1] == ("rgb_refine", 3)
    assert (tmp_path / "a.glb").is_file()


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    guidance = TargetGuidance(two_tone_box())
    config = tiny_generate_config(refine={"iters": 0})

    def losses(job_dir, cancel_at=None):
        return generate_losses(config, guidance, job_dir, lambda losses: losses["guidance"], cancel_at)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = losses(tmp_path / "a")
    first = losses(tmp_path / "b", cancel_at=5)
    second = losses(tmp_path / "b")
    assert np.allclose(first[:5] + second, straight, rtol=1e-4)


def test_stage_loop_reports_eta_and_losses():
    param = torch.nn.Parameter(torch.tensor([3.0]))
    module = torch.nn.Module()
    module.p = param
    events = []
    stage = Stage("fit", 20, lambda: torch.optim.SGD([param], lr=0.1),
                  lambda i, n: {"total": (param**2).sum()})
    run_stages([stage], module, torch.Generator(), on_event=events.append)
    assert abs(float(param.detach())) < 0.1
    assert events[-1].step == 20 and events[-1].eta_s == 0


def test_config_refuses_typos_nan_and_wrong_types():
    with pytest.raises(ConfigError, match="unknown setting"):
        from_dict(GenerateConfig, {"optim": {"itres": 5}})
    with pytest.raises(ConfigError, match="finite"):
        from_dict(GenerateConfig, {"optim": {"lr": float("nan")}})
    with pytest.raises(ConfigError, match="whole number"):
        from_dict(GenerateConfig, {"seed": 1.5})
    with pytest.raises(ConfigError, match="t_min"):
        merge(GenerateConfig(prompt="x"), {"timesteps": {"t_min": 0.9, "t_max": 0.1}}).validate()
    assert merge(GenerateConfig(), {"camera": {"fov_range": [30, 60]}}).camera.fov_range == (30.0, 60.0)
