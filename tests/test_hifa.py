"""HiFA: BGT+ against the analytic prior, √-annealed timesteps, z-variance, kernel-smoothed importance
sampling, the depth regulariser, `--method hifa` end to end, and the known-answer comparison with SDS."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from job_runs import paint_a_ball
from shapes import two_tone_box, two_tone_colour_rmse, voxel_iou
from test_generate_quality import FAST
from tiny_config import TINY

from backend.cameras import Cameras
from backend.cli import build_config, build_parser, main
from backend.compose import method_overrides
from backend.config import merge
from backend.depth import HIFA_WEIGHT, DepthConfig, MonocularDepth
from backend.errors import ConfigError, ModelNotFoundError
from backend.guidance.base import Guidance, NoisePrediction, Prompt
from backend.guidance.target import TargetGuidance, sd_scheduler
from backend.latent import latent_to_rgb, rgb_to_latent
from backend.mesh import Mesh
from backend.objectives.hifa import BGT, NATIVE_LATENT_ELEMENTS, WEIGHT, BGTConfig
from backend.regularisers import ramp, scale_invariant_disparity, z_variance
from backend.render.volume import VolumeConfig, VolumeRenderer, composite, smooth_weights
from backend.schedules import TimestepConfig, sample_timesteps
from backend.tasks.generate import GenerateConfig, generate, prepare_generate
from backend.tasks.paint import PaintConfig

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "backend" / "examples" / "toadstool" / "target.glb"


def hifa_config(**changes) -> GenerateConfig:
    return merge(merge(GenerateConfig(prompt="a box"), method_overrides("hifa", GenerateConfig)), {**TINY, **changes})


# -- timesteps -------------------------------------------------------------------------------------------


def test_sqrt_schedule_falls_from_980_to_300():
    config = TimestepConfig(schedule="sqrt", t_min=0.3, t_max=0.98)
    config.validate()

    def t(step: int, total: int = 400) -> list[int]:
        return sample_timesteps(config, step, total, 3, 1000, torch.Generator()).tolist()

    assert t(0) == [980] * 3  # start, the same for the whole batch
    assert t(100) == [640] * 3  # a quarter of the way: √¼ = ½ of the range
    assert t(200) == [round(980 - 680 * 0.5**0.5)] * 3 == [499] * 3  # middle
    assert t(400) == [300] * 3  # end
    steps = [t(s)[0] for s in range(0, 400, 7)]
    assert steps == sorted(steps, reverse=True)
    assert method_overrides("hifa")["timesteps"] == {"schedule": "sqrt", "t_min": 0.3, "t_max": 0.98}


# -- BGT / BGT+ ------------------------------------------------------------------------------------------


class Recording(TargetGuidance):
    """TargetGuidance that records the timesteps it is asked about."""

    def predict_noise(self, z_t, t, prompt, cameras):
        self.seen.append(int(t[0]))
        return super().predict_noise(z_t, t, prompt, cameras)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_multistep_estimate_is_the_target_exactly(eta):
    guidance = Recording(two_tone_box())
    cams = Cameras.orbit([10.0, 40.0, -5.0], [20.0, 200.0, 95.0], 1.3, 50.0)
    z_star = guidance.target_latents(cams, 8)
    bgt = BGT(guidance, 100.0, BGTConfig(eta=eta))
    z = torch.randn(z_star.shape, generator=torch.Generator().manual_seed(1))
    for t in ([980, 980, 980], [300, 700, 2]):
        guidance.seen = []
        z_hat = bgt.estimate(z, torch.tensor(t), Prompt("x"), cams, torch.Generator().manual_seed(0))
        assert torch.allclose(z_hat, z_star, atol=1e-4), float((z_hat - z_star).abs().max())
    # DDIM in 4 steps from t, by diffusers' DDIMScheduler (fewer when t < 4)
    guidance.seen = []
    bgt.estimate(z[:1], torch.tensor([980]), Prompt("x"), Cameras.orbit([10.0], [20.0], 1.3, 50.0),
                 torch.Generator())
    assert guidance.seen == [980, 730, 480, 230]


class ZeroTarget(Guidance):
    """The optimal denoiser of data concentrated on z* = 0, with the linear latent↔RGB maps as its VAE."""

    def __init__(self) -> None:
        self.scheduler = sd_scheduler()

    def predict_noise(self, z_t, t, prompt, cameras):
        eps = z_t / (1 - self.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        return NoisePrediction(eps, eps)

    def encode(self, images):
        return rgb_to_latent(images)

    def decode(self, latents):
        return latent_to_rgb(latents)


def test_bgt_loss_is_normalised_by_resolution_and_pulls_towards_the_estimate():
    guidance = ZeroTarget()
    plain = BGT(guidance, 100.0, BGTConfig(lambda_rgb=0.0))
    plus = BGT(guidance, 100.0)
    t = torch.tensor([500])
    losses = {}
    for size in (8, 32):
        z = torch.full((1, 4, size, size), 0.5, requires_grad=True)
        loss = plain.loss(z, None, t, Prompt("x"), None, torch.Generator())
        loss.backward()
        # ½·w·N_native·mean((z − ẑ)²) with ẑ = 0
        assert torch.allclose(z.grad, torch.full_like(z, WEIGHT * NATIVE_LATENT_ELEMENTS / z.numel() * 0.5))
        losses[size] = float(loss.detach())
        # BGT+ adds the image-space term: x = D(z) against x̂ = D(ẑ) = D(0) = ½
        rgb_term = float(plus.loss(z, None, t, Prompt("x"), None, torch.Generator()).detach()) - losses[size]
        expected = 0.5 * WEIGHT * 0.1 * 3 * 512**2 * float(((latent_to_rgb(z.detach()) - 0.5) ** 2).mean())
        assert rgb_term == pytest.approx(expected, rel=1e-4)
    assert losses[8] == pytest.approx(losses[32], rel=1e-6)
    assert losses[8] == pytest.approx(0.5 * WEIGHT * NATIVE_LATENT_ELEMENTS * 0.25, rel=1e-6)


# -- renderer and regularisers ---------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["boxcar", "trapezoidal"])
def test_kernel_smoothing_keeps_the_total_and_does_not_wrap(kernel):
    weights = torch.rand(5, 16, generator=torch.Generator().manual_seed(0))
    smoothed = smooth_weights(weights, kernel)
    assert torch.allclose(smoothed.sum(-1), weights.sum(-1), atol=1e-6)
    spikes = torch.zeros(3, 16)
    spikes[0, -1], spikes[1, 0], spikes[2, 7] = 1.0, 0.4, 0.8
    out = smooth_weights(spikes, kernel)
    assert torch.allclose(out.sum(-1), spikes.sum(-1), atol=1e-6)
    assert out[0, :-2].abs().max() == 0 and out[0, -2] > 0  # the last bin's spike stays in the last two
    assert out[1, 2:].abs().max() == 0 and out[1, 1] > 0
    assert torch.allclose(out[2, 6], out[2, 8]) and out[2, 5].abs() == 0 and out[2, 9].abs() == 0
    if kernel == "boxcar":
        assert torch.allclose(out[0, -2:], torch.tensor([0.5, 0.5]))
        assert torch.allclose(out[2, 6:9], torch.full((3,), 0.8 / 3))


def slab_field(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An opaque slab |y| < 0.1 whose single feature is y."""
    sigma = torch.where(points[:, 1].abs() < 0.1, 200.0, 0.0)
    return sigma, points[:, 1:2]


def test_importance_samples_gather_at_the_surface_and_the_render_stays_consistent():
    rays = 6
    origins = torch.tensor([0.0, -3.0, 0.0]).expand(1, 1, rays, 3)
    directions = torch.tensor([0.0, 1.0, 0.0]).expand(1, 1, rays, 3)
    background = lambda d: torch.zeros(d.shape[0], 1)  # noqa: E731
    coarse = VolumeRenderer(VolumeConfig(samples=16), 1.0).render(slab_field, background, origins, directions)
    fine_renderer = VolumeRenderer(VolumeConfig(samples=16, importance_samples=32), 1.0)
    for generator in (None, torch.Generator().manual_seed(0)):
        out = fine_renderer.render(slab_field, background, origins, directions, generator)
        assert out.t_mid.shape == (rays, 48) and out.points.shape == (rays, 48, 3)
        assert (out.t_mid[:, 1:] >= out.t_mid[:, :-1]).all()
        o, d = origins.reshape(-1, 1, 3), directions.reshape(-1, 1, 3)
        assert torch.allclose(out.points, o + d * out.t_mid[..., None])
        assert torch.allclose(out.sigmas, slab_field(out.points.reshape(-1, 3))[0].view(rays, 48))
        assert torch.allclose(out.opacity.flatten(), out.weights.sum(-1))
        # the extra samples lie where the coarse pass found weight: the slab's front (y ≈ −0.1)
        near_surface = ((out.points[..., 1] + 0.1).abs() < 0.2).float().mean()
        assert near_surface > 0.5
        assert torch.allclose(out.opacity, torch.ones_like(out.opacity), atol=1e-4)
        assert torch.allclose(out.depth.flatten(), torch.full((rays,), 2.9), atol=0.05)
    # the default keeps the stratified samples only
    assert coarse.t_mid.shape == (rays, 16)
    assert torch.allclose(coarse.weights, composite(coarse.sigmas, torch.full((rays, 16), 2 / 16)))


def test_z_variance_by_hand():
    z = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).expand(3, 4)
    w = torch.tensor([
        [0.0, 0.3, 0.5, 0.0],  # Σw = 0.8: mean 2.625, variance 0.375·0.625² + 0.625·0.375²
        [0.0, 0.0, 0.9, 0.0],  # a single spike: no variance
        [0.2, 0.0, 0.0, 0.2],  # Σw = 0.4 ≤ 0.5: mostly background, not regularised
    ])
    expected = (0.375 * 0.625**2 + 0.625 * 0.375**2) / 3
    assert float(z_variance(z, w)) == pytest.approx(expected, rel=1e-5)
    assert float(z_variance(z[1:2], w[1:2])) == 0.0
    # differentiable in the weights
    w = w.clone().requires_grad_(True)
    z_variance(z, w).backward()
    assert w.grad[0].abs().sum() > 0 and w.grad[2].abs().sum() == 0
    assert [ramp(s, 100) for s in (0, 25, 50, 90)] == [0.0, 0.5, 1.0, 1.0]


def test_scale_invariant_disparity():
    gen = torch.Generator().manual_seed(0)
    d = torch.rand(2, 8, 8, generator=gen) + 0.5
    mask = torch.ones(2, 8, 8, dtype=torch.bool)
    mask[1, :4] = False
    assert float(scale_invariant_disparity(d, 3.0 * d + 7.0, mask)) < 1e-10  # any scale and shift
    assert float(scale_invariant_disparity(0.1 * d, d, mask)) < 1e-10
    other = torch.rand(2, 8, 8, generator=gen)
    assert float(scale_invariant_disparity(d, other, mask)) > 0.1
    assert float(scale_invariant_disparity(d, other, torch.zeros_like(mask))) == 0.0


@pytest.fixture(scope="module")
def tiny_depth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DPT depth model with its image processor, saved as a user's model would be."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    folder = tmp_path_factory.mktemp("tiny-dpt")
    torch.manual_seed(0)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
                       image_size=32, patch_size=16, neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16,
                       backbone_out_indices=[0, 1, 2, 3], is_hybrid=False)
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_depth_model_loads_from_a_saved_folder_and_missing_ones_are_clear(tiny_depth_dir, tmp_path):
    depth = MonocularDepth.load(str(tiny_depth_dir))
    assert depth.size == (32, 32)
    out = depth.disparity(torch.rand(2, 3, 24, 24), 16)
    assert out.shape == (2, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ModelNotFoundError, match="no depth model folder"):
        MonocularDepth.load(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="could not load the depth model"):
        MonocularDepth.load(str(tmp_path / "empty"))


# -- methods and configs ---------------------------------------------------------------------------------


def test_hifa_s_depth_term_is_on_at_its_weight_whenever_a_depth_model_is_named(tiny_depth_dir):
    named = DepthConfig(model=str(tiny_depth_dir))
    assert named.weight_for("hifa") == HIFA_WEIGHT == 0.1  # HiFA's λ_d
    assert DepthConfig().weight_for("hifa") == 0.0  # no model: off (the CLI says so)
    assert named.weight_for("sds") == 0.0 and DepthConfig(model="m", weight=0.3).weight_for("sds") == 0.3
    job = prepare_generate(merge(merge(GenerateConfig(prompt="a box"), method_overrides("hifa", GenerateConfig)),
                                 {**TINY, "depth": {"model": str(tiny_depth_dir)}}), TargetGuidance(two_tone_box()))
    assert job.stages[0].step.regularisers["depth"][0] == 0.1


def test_method_defaults_and_their_precedence(tmp_path):
    generate_hifa = method_overrides("hifa", GenerateConfig)
    assert generate_hifa["objective"] == {"name": "hifa"}
    assert generate_hifa["render"]["importance_samples"] > 0 and generate_hifa["optim"]["lambda_zvar"] > 0
    assert set(method_overrides("hifa", PaintConfig)) == {"objective", "timesteps"}  # no volume renderer
    assert method_overrides("sds") == {"objective": {"name": "sds"}}
    with pytest.raises(ConfigError, match="unknown method 'magic'") as err:
        method_overrides("magic")
    assert "hifa, sds" in str(err.value)

    def config(cls, *argv, file=None):
        if file is not None:
            (tmp_path / "c.json").write_text(json.dumps(file))
            argv = (*argv, "--config", str(tmp_path / "c.json"))
        command = "generate" if cls is GenerateConfig else "paint"
        extra = ["--mesh", "m.obj"] if command == "paint" else []
        return build_config(command, build_parser().parse_args([command, "--out", "o.glb", *extra, *argv]))

    assert config(GenerateConfig).timesteps.schedule == "uniform"
    picked = config(GenerateConfig, "--method", "hifa")
    assert (picked.objective.name, picked.timesteps.schedule, picked.timesteps.t_min) == ("hifa", "sqrt", 0.3)
    assert picked.render.importance_samples > 0 and picked.optim.lambda_zvar > 0
    # a config file that picks the method gets its defaults, and its own settings beat them
    from_file = config(GenerateConfig, file={"objective": {"name": "hifa"}, "timesteps": {"t_min": 0.4}})
    assert (from_file.timesteps.schedule, from_file.timesteps.t_min) == ("sqrt", 0.4)
    # the flag beats the file
    flag = config(GenerateConfig, "--method", "sds", file={"objective": {"name": "hifa"}})
    assert (flag.objective.name, flag.timesteps.schedule, flag.render.importance_samples) == ("sds", "uniform", 0)
    painted = config(PaintConfig, "--method", "hifa")
    assert (painted.objective.name, painted.timesteps.schedule) == ("hifa", "sqrt")


@pytest.mark.parametrize(
    "args, file, message",
    [
        (["--method", "magic"], None, "unknown method 'magic'"),
        (["--method", "hifa"], {"objective": {"hifa": {"lambda_rgb": -0.5}}}, "lambda_rgb must be ≥ 0"),
        (["--method", "hifa"], {"objective": {"hifa": {"denoise_steps": 0}}}, "denoise_steps must be at least 1"),
        ([], {"objective": {"name": "hifa", "hifa": {"eta": 2.0}}}, "eta must be in [0, 1]"),
        (["--method", "hifa"], {"optim": {"lambda_zvar": -1.0}}, "lambda_zvar"),
        (["--method", "hifa"], {"render": {"kernel": "gaussian"}}, "unknown render.kernel"),
        (["--method", "hifa"], {"render": {"importance_samples": -4}}, "importance_samples"),
        (["--method", "hifa"], {"depth": {"weight": 0.1}}, "names no model"),
        (["--method", "hifa"], {"depth": {"weight": 0.1, "model": "{tmp}/no-depth"}}, "no depth model folder"),
    ],
)
def test_bad_hifa_settings_are_clear_errors_without_traceback(args, file, message, tmp_path, capsys):
    argv = ["generate", "--prompt", "a box", "--guidance", f"target:{TARGET}", "--device", "cpu",
            "--out", str(tmp_path / "o.glb"), *args]
    if file is not None:
        path = tmp_path / "c.json"
        path.write_text(json.dumps({**TINY, **file}).replace("{tmp}", str(tmp_path)))
        argv += ["--config", str(path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.glb").exists()


# -- end to end ------------------------------------------------------------------------------------------


def test_cli_method_hifa_on_a_tiny_sd(tiny_sd_dir, tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "asset.glb"
    proc = subprocess.run([sys.executable, "-m", "backend", "generate", "--method", "hifa", "--prompt", "a toadstool",
                           "--model", str(tiny_sd_dir), "--device", "cpu", "--config", str(config), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "latent" in proc.stderr and "rgb_refine" in proc.stderr
    mesh = trimesh.load(out, force="mesh")
    assert len(mesh.faces) > 0 and mesh.visual.material.baseColorTexture is not None


def test_cli_method_hifa_on_target_guidance(tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "asset.glb"
    assert main(["generate", "--method", "hifa", "--prompt", "x", "--guidance", f"target:{TARGET}", "--device", "cpu",
                 "--config", str(config), "--out", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert "zvar" in err  # the regulariser is on and reported
    assert "depth term (weight 0.1) is off: no depth model is named" in err
    # the summary measures the asset against the known answer
    assert "against the reference mesh: voxel IoU" in printed and "° off on average" in printed
    assert len(trimesh.load(out, force="mesh").faces) > 0


def test_hifa_with_a_sketch_and_the_depth_regulariser(tiny_depth_dir, tmp_path):
    seen = []
    block = trimesh.creation.box((1.0, 0.6, 0.8))
    sketch = Mesh(np.asarray(block.vertices, np.float32), np.asarray(block.faces))
    config = hifa_config(refine={"iters": 2, "resolution": 32}, sketch={"grid_resolution": 32},
                         depth={"model": str(tiny_depth_dir), "weight": 0.1})
    result = generate(config, TargetGuidance(two_tone_box()), tmp_path / "s.glb", sketch=sketch, on_event=seen.append)
    losses = [e.losses for e in seen if hasattr(e, "losses") and not e.stage.startswith("export")]
    assert {"guidance", "sketch", "zvar", "depth", "sparsity"} <= set(losses[-1])
    assert all(np.isfinite(v) for e in losses for v in e.values())
    assert len(result.mesh.faces) > 0


def test_paint_with_hifa_on_a_tiny_sd(tiny_sd_dir, tmp_path):
    from backend.guidance.stable_diffusion import StableDiffusionGuidance

    result, training = paint_a_ball(StableDiffusionGuidance.load(tiny_sd_dir), "hifa", 4, tmp_path / "ball.glb")
    assert {e.stage for e in training} == {"paint", "rgb_finetune"}
    assert all(np.isfinite(e.losses["guidance"]) for e in training)
    assert result.texture.shape == (64, 64, 3)


# -- known answer ----------------------------------------------------------------------------------------


# smaller than the SDS known-answer test's settings so that both runs fit in a few CPU minutes
REDUCED = {
    **FAST,
    "resolution": 24,
    "optim": {"iters": 200, "lr": 5e-3},
    "render": {"samples": 24},
    # the SDS known-answer test's iso-level for its sparser-than-default sampling
    "export": {**FAST["export"], "grid_resolution": 64, "texture_size": 128},
}


def reconstruct(method: str, folder: Path) -> tuple[float, float, float]:
    """Voxel IoU, colour RMSE away from the seam, and seconds, for `method` on the two-tone box."""
    target = two_tone_box()
    config = merge(merge(GenerateConfig(prompt="a two-tone box"), method_overrides(method, GenerateConfig)), REDUCED)
    start = time.perf_counter()
    result = generate(config, TargetGuidance(target), folder / f"{method}.glb")
    seconds = time.perf_counter() - start
    return voxel_iou(result.mesh, target), two_tone_colour_rmse(result.mesh, result.texture), seconds


@pytest.mark.slow
def test_hifa_reconstructs_the_known_box_at_least_as_well_as_sds(tmp_path):
    sds_iou, sds_rmse, sds_s = reconstruct("sds", tmp_path)
    hifa_iou, hifa_rmse, hifa_s = reconstruct("hifa", tmp_path)
    steps = REDUCED["optim"]["iters"]
    print(f"known-answer box, {steps} steps at {REDUCED['resolution']}²: "
          f"sds IoU {sds_iou:.3f}, colour RMSE {sds_rmse:.3f} ({sds_s:.0f} s); "
          f"hifa IoU {hifa_iou:.3f}, colour RMSE {hifa_rmse:.3f} ({hifa_s:.0f} s)")
    assert hifa_iou >= 0.8
    assert hifa_iou >= sds_iou - 0.02
    # HiFA's crisper surfaces leave the baked colours a little further off at this scale (see the report);
    # this only guards against broken colours (grey everywhere is ≈ 0.4 away)
    assert hifa_rmse <= 0.25
