"""StableDiffusionGuidance on tiny random SD models, loaded through the same code as a real checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors.torch import save_file
from tiny_sd import IMAGE_SIZE, LATENT_SIZE, TinySingleFile, build_components, to_ldm_checkpoint

from backend.cameras import Cameras
from backend.errors import InputError, ModelNotFoundError
from backend.guidance.base import Prompt
from backend.guidance.sd_checkpoints import CONFIG_ENV
from backend.guidance.stable_diffusion import StableDiffusionGuidance

PROMPT = Prompt("a teddy bear", negative="blurry")
MODULES = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def sd(tiny_sd_dir: Path) -> StableDiffusionGuidance:
    return StableDiffusionGuidance.load(tiny_sd_dir)


@pytest.fixture(scope="module")
def sd_vpred(tiny_sd_vpred_dir: Path) -> StableDiffusionGuidance:
    return StableDiffusionGuidance.load(tiny_sd_vpred_dir)


def four_views() -> tuple[Cameras, list[str]]:
    cameras = Cameras.orbit(elevation=[0.0, 10.0, 5.0, 75.0], azimuth=[0.0, 90.0, 180.0, 30.0],
                            radius=1.2, fov=50.0)
    return cameras, ["front", "side", "back", "overhead"]


def latents(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 4, LATENT_SIZE, LATENT_SIZE, generator=torch.Generator().manual_seed(seed))


def embed_by_hand(g: StableDiffusionGuidance, texts: list[str]) -> torch.Tensor:
    ids = g.tokenizer(texts, padding="max_length", max_length=77, truncation=True,
                      return_tensors="pt").input_ids
    with torch.no_grad():
        return g.text_encoder(ids)[0]


def unet_by_hand(
    g: StableDiffusionGuidance, z: torch.Tensor, t: torch.Tensor, emb: torch.Tensor
) -> torch.Tensor:
    with torch.no_grad():
        return g.unet(z, t, encoder_hidden_states=emb).sample


def uncond_cond_by_hand(
    g: StableDiffusionGuidance, z: torch.Tensor, t: torch.Tensor, views: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    cond = embed_by_hand(g, [PROMPT.for_view(v) for v in views])
    uncond = embed_by_hand(g, [PROMPT.negative]).expand_as(cond)
    return unet_by_hand(g, z, t, uncond), unet_by_hand(g, z, t, cond)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# -- loading -------------------------------------------------------------------------------------------------


def test_loads_a_diffusers_folder(sd: StableDiffusionGuidance, tiny_sd_dir: Path) -> None:
    assert (sd.image_size, sd.latent_size, sd.vae_scale_factor) == (IMAGE_SIZE, LATENT_SIZE, 2)
    assert type(sd.scheduler).__name__ == "DDIMScheduler"
    assert sd.scheduler.config.beta_schedule == "scaled_linear" and sd.num_train_timesteps == 1000
    assert sd.prediction_type == "epsilon"
    for name in MODULES:
        module = getattr(sd, name)
        assert not module.training
        assert all(not p.requires_grad and p.dtype == torch.float32 for p in module.parameters())
    assert str(tiny_sd_dir) in sd.describe() and "epsilon" in sd.describe()
    # the tokenizer came from SD-style vocab.json + merges.txt: one token per character, plus BOS/EOS
    assert len(sd.tokenizer("ab").input_ids) == 4


def test_v_prediction_comes_from_the_scheduler_config(sd_vpred: StableDiffusionGuidance) -> None:
    assert sd_vpred.prediction_type == "v_prediction"
    assert sd_vpred.scheduler.config.prediction_type == "v_prediction"


def test_ldm_layout_round_trips_through_diffusers_converters() -> None:
    c = build_components(seed=3)
    checkpoint = to_ldm_checkpoint(c["unet"], c["vae"], c["text_encoder"])
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."))
               for k in checkpoint)
    def flat(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # CLIPTextModel's keys lost their "text_model." level in transformers 5
        return {k.removeprefix("text_model."): v for k, v in state.items()}

    back = {
        "unet": convert_ldm_unet_checkpoint(checkpoint, c["unet"].config),
        "vae": convert_ldm_vae_checkpoint(checkpoint, c["vae"].config),
        "text_encoder": flat(convert_ldm_clip_checkpoint(checkpoint)),
    }
    for name, state in back.items():
        reference = flat(c[name].state_dict())
        assert state.keys() == reference.keys(), name
        assert all(torch.equal(state[k], reference[k]) for k in reference), name


def test_loads_a_single_file_checkpoint_with_its_own_weights(
    tiny_sd_single_file: TinySingleFile, sd: StableDiffusionGuidance
) -> None:
    g = StableDiffusionGuidance.load(tiny_sd_single_file.checkpoint, config=tiny_sd_single_file.config)
    reference = build_components(seed=tiny_sd_single_file.seed)
    for name in MODULES:
        assert_same_weights(getattr(g, name), reference[name])
        # the config folder's own weights differ, so they were not what got loaded
        first = next(iter(getattr(g, name).parameters()))
        assert not torch.equal(first, next(iter(getattr(sd, name).parameters())))
    assert (g.image_size, g.latent_size, g.prediction_type) == (IMAGE_SIZE, LATENT_SIZE, "epsilon")
    cameras, _ = four_views()
    assert torch.isfinite(g.predict_noise(latents(4), torch.tensor(500), PROMPT, cameras).guided(7.5)).all()


def test_single_file_config_from_environment(
    tiny_sd_single_file: TinySingleFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tiny_sd_single_file.config))
    g = StableDiffusionGuidance.load(str(tiny_sd_single_file.checkpoint))
    assert_same_weights(g.unet, build_components(seed=tiny_sd_single_file.seed)["unet"])


def test_loads_a_pickled_ckpt(tiny_sd_dir: Path, tmp_path: Path) -> None:
    c = build_components(seed=2)
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": to_ldm_checkpoint(c["unet"], c["vae"], c["text_encoder"])}, path)
    g = StableDiffusionGuidance.load(path, config=tiny_sd_dir)
    assert_same_weights(g.vae, c["vae"])


def test_diffusers_layout_or_broken_file_is_rejected(tiny_sd_dir: Path, tmp_path: Path) -> None:
    diffusers_layout = tmp_path / "unet-only.safetensors"
    save_file(build_components()["unet"].state_dict(), str(diffusers_layout))
    with pytest.raises(InputError, match="LDM"):
        StableDiffusionGuidance.load(diffusers_layout, config=tiny_sd_dir)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(b"\x00" * 4)
    with pytest.raises(InputError, match="readable"):
        StableDiffusionGuidance.load(truncated, config=tiny_sd_dir)


@pytest.mark.parametrize("name", ["missing.safetensors", "models/v1/sd15", "./sd15", "ABSOLUTE"])
def test_missing_local_path_names_it(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a path must fail before any look-up, offline or not
    if name == "ABSOLUTE":
        name = str(tmp_path / "nowhere" / "sd15")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        StableDiffusionGuidance.load(name)
    assert time.perf_counter() - start < 0.5
    assert str(Path(name)) in info.value.message
    assert "--model" in info.value.hint


def test_folder_without_model_index_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        StableDiffusionGuidance.load(tmp_path)


def test_unknown_hub_id_offline_fails_fast_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        StableDiffusionGuidance.load("latentforge-tests/no-such-model")
    assert time.perf_counter() - start < 5
    assert "latentforge-tests/no-such-model" in info.value.message
    assert "Hugging Face cache" in info.value.message and "offline" in info.value.message
    assert "--model" in info.value.hint and "LATENTFORGE_MODEL" in info.value.hint
    assert info.value.code == "model_not_found"


# -- noise prediction ----------------------------------------------------------------------------------------


def test_predict_noise_shape_dtype_and_finite(sd: StableDiffusionGuidance, tiny_sd_dir: Path) -> None:
    cameras, _ = four_views()
    z = latents(4).requires_grad_()
    eps = sd.predict_noise(z, torch.tensor([10, 250, 500, 990]), PROMPT, cameras).guided(7.5)
    assert eps.shape == z.shape and eps.dtype == torch.float32 and not eps.requires_grad
    assert torch.isfinite(eps).all()
    # a lower-precision U-Net still takes and returns float32
    low = StableDiffusionGuidance.load(tiny_sd_dir, dtype=torch.bfloat16)
    assert low.unet.dtype == torch.bfloat16
    eps_low = low.predict_noise(z, torch.tensor(500), PROMPT, cameras).guided(7.5)
    assert eps_low.dtype == torch.float32 and torch.isfinite(eps_low).all()


@pytest.mark.parametrize("scale", [1.0, 7.5])
def test_cfg_matches_a_hand_computation(sd: StableDiffusionGuidance, scale: float) -> None:
    cameras, views = four_views()
    assert cameras.view_labels() == views
    z, t = latents(4), torch.tensor([100, 400, 700, 900])
    eps_u, eps_c = uncond_cond_by_hand(sd, z, t, views)
    eps = sd.predict_noise(z, t, PROMPT, cameras).guided(scale)
    # the guidance runs both halves in one U-Net batch, the hand computation in two: float32 rounding of
    # about 2e-6 per half, which the combination multiplies by the scale
    torch.testing.assert_close(eps, eps_u + scale * (eps_c - eps_u), rtol=1e-4, atol=1e-5 * max(1.0, scale))
    if scale == 1.0:
        torch.testing.assert_close(eps, eps_c, rtol=1e-4, atol=1e-5)


def test_view_independent_prompt_uses_the_plain_text(sd: StableDiffusionGuidance) -> None:
    cameras, _ = four_views()
    z, t = latents(4), torch.tensor(300)
    prompt = Prompt("a teddy bear", negative="blurry", view_dependent=False)
    cond = embed_by_hand(sd, [prompt.text] * 4)
    expected = unet_by_hand(sd, z, t.expand(4), cond)
    torch.testing.assert_close(sd.predict_noise(z, t, prompt, cameras).guided(1.0), expected, rtol=1e-4, atol=1e-5)


def test_v_prediction_is_converted_to_noise(sd_vpred: StableDiffusionGuidance) -> None:
    cameras, views = four_views()
    z, t, scale = latents(4, seed=1), torch.tensor([50, 300, 600, 950]), 5.0
    v_u, v_c = uncond_cond_by_hand(sd_vpred, z, t, views)
    v = v_u + scale * (v_c - v_u)
    alpha_bar = sd_vpred.scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    # z_t = √ᾱ·x0 + √(1−ᾱ)·ε and v = √ᾱ·ε − √(1−ᾱ)·x0  ⇒  ε = √ᾱ·v + √(1−ᾱ)·z_t
    expected = alpha_bar.sqrt() * v + (1 - alpha_bar).sqrt() * z
    eps = sd_vpred.predict_noise(z, t, PROMPT, cameras).guided(scale)
    torch.testing.assert_close(eps, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(eps, v, atol=1e-3)  # the conversion did something


def test_prompt_embeddings_are_encoded_once(
    sd: StableDiffusionGuidance, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    forward = sd.text_encoder.forward

    def counting_forward(input_ids: torch.Tensor, *args: object, **kwargs: object) -> object:
        calls.append(len(input_ids))
        return forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(sd.text_encoder, "forward", counting_forward)
    prompt = Prompt("a wooden chair", negative="ugly")
    sd.prepare(prompt)
    assert calls == [6]  # negative + one per view (front, side, back, overhead, bottom), in one batch
    sd.prepare(prompt)
    cameras, _ = four_views()
    sd.predict_noise(latents(4), torch.tensor(500), prompt, cameras).guided(7.5)
    assert calls == [6]
    sd.prepare(Prompt("a wooden chair", negative="ugly", view_dependent=False))
    assert calls == [6, 1]  # only the plain text was new


# -- image ↔ latent ------------------------------------------------------------------------------------------


def test_encode_is_differentiable_and_resizes(sd: StableDiffusionGuidance) -> None:
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, requires_grad=True)
    z = sd.encode(images)
    assert z.shape == (2, 4, LATENT_SIZE, LATENT_SIZE) and z.dtype == torch.float32
    z.square().mean().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    larger = torch.rand(2, 3, 3 * IMAGE_SIZE // 2, 3 * IMAGE_SIZE // 2)
    assert sd.encode(larger).shape == (2, 4, LATENT_SIZE, LATENT_SIZE)


def test_decode_is_differentiable_and_in_range(sd: StableDiffusionGuidance) -> None:
    z = latents(2).requires_grad_()
    images = sd.decode(z)
    assert images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    images.mean().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
