"""Perp-Neg: the combination for known ε's, its reduction to plain CFG, the weights by azimuth, the one
batched U-Net call on a tiny random SD, when it is on, and its bad settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from shapes import two_tone_box

from backend.cameras import Cameras
from backend.cli import main
from backend.config import merge
from backend.errors import ConfigError
from backend.guidance.base import Prompt, classifier_free
from backend.guidance.perp_neg import BACK, FRONT, SIDE, direction, view_mix
from backend.guidance.stable_diffusion import StableDiffusionGuidance
from backend.guidance.target import TargetGuidance
from backend.mesh import Frame
from backend.speed import SpeedConfig
from backend.tasks.distill import set_up
from backend.tasks.generate import GenerateConfig


def test_combination_matches_the_formula_for_known_noise():
    gen = torch.Generator().manual_seed(0)
    u, pos = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    negs = torch.randn(2, 2, 4, 3, 3, generator=gen)
    w = torch.tensor([[-0.3, -1.5], [-2.0, 0.0]])
    got = classifier_free(u, direction(u, pos, negs, w), 7.5)
    for b in range(2):  # by hand, one flattened sample at a time
        e_pos = (pos[b] - u[b]).flatten().numpy().astype(np.float64)
        acc = np.zeros_like(e_pos)
        for i in range(2):
            e = (negs[i, b] - u[b]).flatten().numpy().astype(np.float64)
            acc += float(w[b, i]) * (e - e @ e_pos / (e_pos @ e_pos) * e_pos)
        want = u[b].flatten().numpy() + 7.5 * (e_pos + acc)
        assert np.allclose(got[b].flatten().numpy(), want, atol=1e-5)


def test_negatives_parallel_to_the_positive_reduce_to_plain_cfg():
    gen = torch.Generator().manual_seed(1)
    u, pos = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    e_pos = pos - u
    negs = torch.stack([u + 0.5 * e_pos, u - 2.0 * e_pos])  # along ±e_pos
    w = torch.tensor([[-1.0, -2.0], [-0.5, -0.1], [-3.0, -1.0]])
    assert torch.allclose(classifier_free(u, direction(u, pos, negs, w), 7.5), u + 7.5 * e_pos, atol=1e-5)


def test_weights_follow_the_azimuth():
    cams = Cameras.orbit(0.0, [0.0, 90.0, 180.0, -45.0], 1.3, 50.0)
    pos_idx, pos_w, neg_idx, neg_w = view_mix(cams)
    assert pos_idx[0].tolist() == [FRONT, SIDE] and pos_w[0].tolist() == [1.0, 0.0]  # pure front
    assert abs(float(neg_w[0, 0])) < 1e-3  # no front negative on a front view
    assert math.isclose(float(neg_w[0, 1]), -(4 - 2.426), rel_tol=1e-5)  # the side pushed away
    assert pos_idx[1].tolist() == [SIDE, BACK] and torch.allclose(pos_w[1], torch.tensor([1.0, 0.0]))
    assert pos_idx[2].tolist() == [SIDE, BACK] and torch.allclose(pos_w[2], torch.tensor([0.0, 1.0]))
    assert neg_idx[2].tolist() == [SIDE, FRONT] and math.isclose(float(neg_w[2, 1]), -1.967, rel_tol=1e-5)
    assert torch.allclose(pos_w[3], torch.tensor([0.5, 0.5]))  # halfway between front and side
    overhead = view_mix(Cameras.orbit(85.0, 30.0, 1.3, 50.0))
    assert overhead[3].abs().max() == 0  # overhead: its own prompt, no negatives


@pytest.fixture(scope="module")
def tiny() -> StableDiffusionGuidance:
    return StableDiffusionGuidance.random("tiny", seed=3)


def test_one_batched_unet_call_matches_the_embeddings_by_hand(tiny):
    prompt = Prompt("a dog", perp_neg=True)
    tiny.prepare(prompt)
    cams = Cameras.orbit([5.0, 20.0, 0.0], [10.0, 120.0, -170.0], 1.3, 50.0)
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(3, 4, 16, 16, generator=gen)
    t = torch.tensor([300, 600, 900])
    calls = []
    hook = tiny.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        got = tiny.predict_noise(z, t, prompt, cams).guided(7.5)
    finally:
        hook.remove()
    assert calls == [4 * 3]  # ε_u, the positive and two negatives, in one call
    negative, table = tiny._prompt_table(prompt)
    pos_idx, pos_w, neg_idx, neg_w = view_mix(cams)

    def eps(hidden: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return tiny.unet(z, t, encoder_hidden_states=hidden).sample

    positive = (pos_w[..., None, None] * table[pos_idx]).sum(1)
    uncond = eps(negative.expand(3, -1, -1))
    negatives = torch.stack([eps(table[neg_idx[:, i]]) for i in range(2)])
    want = classifier_free(uncond, direction(uncond, eps(positive), negatives, neg_w), 7.5)
    assert torch.allclose(got, want, atol=1e-4)


def test_without_negatives_it_is_plain_cfg(tiny):
    """Overhead views have no negatives, and a prompt without view suffixes has no Perp-Neg at all."""
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.tensor([400, 700])
    overhead = Cameras.orbit(80.0, [0.0, 100.0], 1.3, 50.0)
    on, off = Prompt("a dog", perp_neg=True), Prompt("a dog")
    assert torch.allclose(tiny.predict_noise(z, t, on, overhead).guided(7.5),
                          tiny.predict_noise(z, t, off, overhead).guided(7.5), atol=1e-5)
    side = Cameras.orbit(0.0, [90.0, -90.0], 1.3, 50.0)
    plain = Prompt("a dog", view_dependent=False)
    both = Prompt("a dog", view_dependent=False, perp_neg=True)
    assert torch.allclose(tiny.predict_noise(z, t, both, side).guided(7.5),
                          tiny.predict_noise(z, t, plain, side).guided(7.5), atol=1e-5)


def test_auto_follows_the_prior_and_flags_win(tiny):
    def resolved(guidance, **changes) -> bool:
        config = merge(GenerateConfig(prompt="a box"), changes)
        config.validate()
        return set_up(config, guidance, SpeedConfig().resolve(guidance.device), Frame())[1].perp_neg

    target = TargetGuidance(two_tone_box())
    assert resolved(tiny) and not resolved(target)
    assert resolved(target, perp_neg="on") and not resolved(tiny, perp_neg="off")
    assert not resolved(tiny, view_dependent_prompt=False)


@pytest.mark.parametrize("table, message", [
    ("view_dependent_prompt = false\nperp_neg = \"on\"", "view-dependent"),
    ("perp_neg = \"sometimes\"", "perp_neg"),
])
def test_bad_perp_neg_settings_are_clear_errors(table, message, tmp_path, capsys):
    (tmp_path / "c.toml").write_text(table + "\n")
    code = main(["generate", "--prompt", "a box", "--config", str(tmp_path / "c.toml"),
                 "--guidance", "target:missing.glb", "--out", str(tmp_path / "o.glb")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_the_perp_neg_flag_with_view_prompts_off_is_refused(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("view_dependent_prompt = false\n")
    code = main(["generate", "--prompt", "a box", "--perp-neg", "--config", str(tmp_path / "c.toml"),
                 "--guidance", "target:missing.glb", "--out", str(tmp_path / "o.glb")])
    err = capsys.readouterr().err
    assert code == 2 and "Perp-Neg needs view-dependent prompts" in err and "Traceback" not in err
    with pytest.raises(ConfigError):
        merge(GenerateConfig(prompt="x"), {"perp_neg": "on", "view_dependent_prompt": False}).validate()
