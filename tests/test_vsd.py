"""VSD: its gradient for known predictions, the LoRA's own training on a tiny random SD, objectives that own
parameters (optimiser groups, checkpoints, resume), bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from job_runs import generate_losses, paint_a_ball
from shapes import two_tone_box
from test_mixture import CAMS, tall_and_flat
from tiny_config import TINY

from backend.cli import main
from backend.compose import method_overrides
from backend.config import merge
from backend.errors import ConfigError
from backend.guidance.base import Prompt
from backend.guidance.stable_diffusion import StableDiffusionGuidance
from backend.guidance.target import TargetGuidance
from backend.loop import Checkpointer
from backend.objectives.config import ObjectiveConfig, build_objective
from backend.objectives.vsd import VSDConfig
from backend.tasks.generate import GenerateConfig, generate, prepare_generate


def vsd_config(**vsd) -> ObjectiveConfig:
    return ObjectiveConfig(name="vsd", guidance_scale=7.5, vsd=VSDConfig(**vsd))


def test_vsd_gradient_is_the_weighted_gap_between_the_prior_and_its_model():
    """w(t)·(ε̂_pretrain − ε_φ): at the start, where an analytic prior's ε_φ is zero, it is w(t)·ε̂ in closed form
    (the mixture's CFG of its conditional and unconditional predictions); after ε_φ has moved off its start,
    it is checked against the prior's and the model's own predictions."""
    torch.manual_seed(0)
    mixture = tall_and_flat()
    prompt = Prompt("a tall red tower", view_dependent=False)
    vsd = build_objective(vsd_config(), mixture)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(3, 4, 8, 8, generator=gen) * 0.3
    noise = torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([200, 500, 900])
    a = mixture.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z + (1 - a).sqrt() * noise
    w = (1 - a)
    eps_c = mixture.predict_noise(z_t, t, prompt, CAMS).guided(1.0)
    eps_u = mixture.predict_noise(z_t, t, prompt, CAMS).guided(0.0)
    start = vsd.gradient(z, t, noise, prompt, CAMS)
    assert torch.allclose(start, w * (eps_u + 7.5 * (eps_c - eps_u)), atol=1e-4)
    with torch.no_grad():  # move ε_φ off its start
        for p in vsd.trainable.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    eps_pre = mixture.predict_noise(z_t, t, prompt, CAMS).guided(7.5)
    eps_phi = vsd.trainable(z_t, t, prompt, CAMS)
    assert float(eps_phi.detach().abs().max()) > 1e-2
    grad = vsd.gradient(z, t, noise, prompt, CAMS)
    assert torch.allclose(grad, w * (eps_pre - eps_phi), atol=1e-5)
    # the surrogate loss carries exactly that gradient to the latents (ε_φ's own loss reaches only φ)
    zz = z.clone().requires_grad_(True)
    seeded = torch.Generator().manual_seed(7)
    vsd.loss(zz, None, t, prompt, CAMS, seeded).backward()
    replay = torch.Generator().manual_seed(7)
    noise2 = torch.randn(z.shape, generator=replay)
    assert torch.allclose(zz.grad, vsd.gradient(z, t, noise2, prompt, CAMS) / 3, atol=1e-5)
    zz.grad = None
    vsd.model_loss(zz, prompt, CAMS, seeded).backward()
    assert zz.grad is None


def test_lora_of_a_tiny_sd_starts_as_the_unet_and_its_loss_falls():
    """A peft LoRA of the guidance's own U-Net: only the adapter and the camera MLP train, ε_φ starts equal to
    the U-Net's conditional prediction, the prior itself stays the pretrained U-Net, and ε_φ's diffusion loss
    on a fixed set of renders falls."""
    torch.manual_seed(0)
    guidance = StableDiffusionGuidance.random("tiny")
    prompt = Prompt("a red box")
    guidance.prepare(prompt)
    vsd = build_objective(vsd_config(lora_lr=1e-2, camera_dropout=0.0), guidance)
    trained = sum(p.numel() for p in vsd.trainable.parameters())
    assert 0 < trained < 0.2 * sum(p.numel() for p in guidance.unet.parameters())
    assert all(not k.startswith("unet.") or ".lora_" in k for k in vsd.trainable.state_dict())
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 16, 16, generator=gen)
    t = torch.tensor([100, 400, 800])
    assert torch.allclose(vsd.trainable(z, t, prompt, CAMS), guidance.predict_noise(z, t, prompt, CAMS).guided(1.0),
                          atol=1e-5)
    optimizer = torch.optim.Adam(vsd.param_groups())
    renders = torch.randn(3, 4, 16, 16, generator=gen) * 0.5

    def held_out() -> float:  # the same timesteps and noise each time
        with torch.no_grad():
            return float(vsd.model_loss(renders, prompt, CAMS, torch.Generator().manual_seed(123)))

    start = held_out()
    for _ in range(30):
        optimizer.zero_grad()
        vsd.model_loss(renders, prompt, CAMS, gen).backward()
        optimizer.step()
    end = held_out()
    print(f"LoRA diffusion loss on held-out noise: {start:.4f} -> {end:.4f}")
    assert end < 0.9 * start
    # the prior stays the pretrained U-Net: its own weights are frozen and its prediction is unchanged
    assert not any(p.requires_grad for n, p in guidance.unet.named_parameters() if ".vsd." not in n)
    fresh = StableDiffusionGuidance.random("tiny")
    assert torch.allclose(guidance.predict_noise(z, t, prompt, CAMS).guided(7.5),
                          fresh.predict_noise(z, t, prompt, CAMS).guided(7.5), atol=1e-5)
    # a second job on the same guidance starts a fresh LoRA
    again = build_objective(vsd_config(), guidance)
    assert torch.allclose(again.trainable(z, t, prompt, CAMS), guidance.predict_noise(z, t, prompt, CAMS).guided(1.0),
                          atol=1e-5)


def test_the_lora_sees_the_plain_prompt_while_the_prior_sees_the_view():
    """ProlificDreamer and threestudio give ε_φ the view-independent prompt (the camera tells it the view): at the
    start, where the LoRA is the U-Net, the gradient is w·(ε̂(view prompt, CFG) − ε(plain prompt)), and ε_φ's
    own loss is the same whichever prompt the step carries."""
    torch.manual_seed(0)
    guidance = StableDiffusionGuidance.random("tiny")
    viewed, plain = Prompt("a red box"), Prompt("a red box", view_dependent=False)
    vsd = build_objective(vsd_config(camera_dropout=0.0), guidance)
    gen = torch.Generator().manual_seed(0)
    z, noise = torch.randn(3, 4, 16, 16, generator=gen), torch.randn(3, 4, 16, 16, generator=gen)
    t = torch.tensor([100, 400, 800])
    a = guidance.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z + (1 - a).sqrt() * noise
    prior = guidance.predict_noise(z_t, t, viewed, CAMS).guided(7.5)
    eps_plain, eps_viewed = (guidance.predict_noise(z_t, t, p, CAMS).guided(1.0) for p in (plain, viewed))
    assert float((eps_plain - eps_viewed).abs().max()) > 1e-3  # the view suffix changes the U-Net's answer
    grad = vsd.gradient(z, t, noise, viewed, CAMS)
    assert torch.allclose(grad, (1 - a) * (prior - eps_plain), atol=1e-5)
    with torch.no_grad():
        losses = [float(vsd.model_loss(z, p, CAMS, torch.Generator().manual_seed(3))) for p in (viewed, plain)]
    assert losses[0] == losses[1]


def tiny_vsd_config(**changes) -> GenerateConfig:
    config = merge(GenerateConfig(prompt="a box"), method_overrides("vsd", GenerateConfig))
    return merge(config, {**TINY, "refine": {"iters": 0}, "objective": {"vsd": {"lora_lr": 1e-3}}, **changes})


def test_vsd_model_joins_the_optimiser_and_the_checkpoint():
    guidance = TargetGuidance(two_tone_box())
    job = prepare_generate(tiny_vsd_config(), guidance)
    optimizer = job.stages[0].enter()
    owned = {id(p) for p in job.objective.trainable.parameters()}
    groups = [g for g in optimizer.param_groups if {id(p) for p in g["params"]} & owned]
    assert len(groups) == 1 and groups[0]["lr"] == 1e-3 and {id(p) for p in groups[0]["params"]} == owned
    keys = job.checkpointed().state_dict().keys()
    assert any(k.startswith("objective.") for k in keys) and any(k.startswith("scene.nerf.") for k in keys)
    sds = prepare_generate(merge(GenerateConfig(prompt="a box"), TINY), guidance)
    assert not any(k.startswith("objective.") for k in sds.checkpointed().state_dict())


def test_killed_and_resumed_vsd_job_gives_the_same_losses(tmp_path):
    guidance = TargetGuidance(two_tone_box())
    config = tiny_vsd_config()

    def losses(job_dir, cancel_at=None):
        return generate_losses(config, guidance, job_dir, lambda losses: (losses["guidance"], losses["lora"]),
                               cancel_at)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = losses(tmp_path / "a")
    first = losses(tmp_path / "b", cancel_at=5)
    saved = Checkpointer(tmp_path / "b").load()
    assert any(k.startswith("objective.") for k in saved["scene"])
    second = losses(tmp_path / "b")
    assert len(first[:5] + second) == len(straight) == config.optim.iters
    assert np.allclose(first[:5] + second, straight, rtol=1e-4)


@pytest.mark.parametrize("table, message", [
    ("lora_rank = 0", "lora_rank"),
    ("lora_lr = -1.0", "lora_lr"),
    ("camera_dropout = 2.0", "camera_dropout"),
    ("lora_timesteps = {t_min = 0.5, t_max = 0.2}", "lora_timesteps"),
])
def test_bad_vsd_settings_are_clear_errors(table, message, tmp_path, capsys):
    (tmp_path / "c.toml").write_text(f"[objective.vsd]\n{table}\n")
    code = main(["generate", "--prompt", "a box", "--method", "vsd", "--config", str(tmp_path / "c.toml"),
                 "--guidance", "target:missing.glb", "--out", str(tmp_path / "o.glb")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_vsd_settings_validate_ranges():
    for bad in ({"lora_rank": 0}, {"lora_rank": 1000}, {"lora_lr": 0.0}, {"lora_lr": float("nan")},
                {"camera_dropout": -0.1}):
        with pytest.raises(ConfigError):
            VSDConfig(**bad).validate()
    cfg = VSDConfig()
    cfg.lora_timesteps.t_min = 0.9
    cfg.lora_timesteps.t_max = 0.1
    with pytest.raises(ConfigError, match="lora_timesteps"):
        cfg.validate()


def test_vsd_generates_through_the_latent_and_rgb_stages_of_a_tiny_sd(tiny_sd_dir, tmp_path):
    guidance = StableDiffusionGuidance.load(tiny_sd_dir)
    seen = []
    config = tiny_vsd_config(refine={"iters": 2, "resolution": 32}, optim={"iters": 3})
    result = generate(config, guidance, tmp_path / "a.glb", on_event=seen.append)
    training = [e for e in seen if hasattr(e, "losses") and not e.stage.startswith("export")]
    assert {e.stage for e in training} == {"latent", "rgb_refine"}
    assert all(np.isfinite(e.losses["guidance"]) and np.isfinite(e.losses["lora"]) for e in training)
    assert len(result.mesh.faces) > 0


def test_vsd_paints_on_a_tiny_sd(tiny_sd_dir, tmp_path):
    result, training = paint_a_ball(StableDiffusionGuidance.load(tiny_sd_dir), "vsd", 3, tmp_path / "ball.glb")
    assert {e.stage for e in training} == {"paint", "rgb_finetune"}
    assert all(np.isfinite(e.losses["lora"]) for e in training)
    assert result.texture.shape == (64, 64, 3)
