"""Timestep schedules, ramps and rates follow the job's progress, across stages and across a resume."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import replace

import pytest
import torch
from shapes import two_tone_box
from tiny_config import TINY

from backend.compose import method_overrides
from backend.config import merge
from backend.errors import Cancelled, ConfigError
from backend.guidance.target import TargetGuidance
from backend.loop import Stage, final_anneal, schedule_position, train_step
from backend.tasks.generate import GenerateConfig, prepare_generate


class Recording(TargetGuidance):
    """TargetGuidance that records the timesteps it is asked about."""

    seen: list[int]

    def predict_noise(self, z_t, t, prompt, cameras):
        self.seen.append(int(t[0]))
        return super().predict_noise(z_t, t, prompt, cameras)


def stage(name: str, iters: int, restart: bool = False) -> Stage:
    return Stage(name, iters, enter=None, step=None, restart_schedules=restart)


def test_schedule_position_is_global_unless_a_stage_restarts():
    stages = [stage("a", 10), stage("b", 5), stage("c", 4, restart=True), stage("d", 6)]
    assert schedule_position(stages, 0, 3) == (3, 25)
    assert schedule_position(stages, 1, 0) == (10, 25)
    assert schedule_position(stages, 2, 1) == (1, 4)  # its own schedule
    assert schedule_position(stages, 3, 5) == (24, 25)


def hifa_timesteps(tmp_path, cancel_at: int | None = None, **changes) -> list[int]:
    """The timestep of every guidance call of a tiny HiFA job with RGB refinement (one call per step)."""
    config = merge(merge(GenerateConfig(prompt="a box"), method_overrides("hifa", GenerateConfig)),
                   {**TINY, "optim": {"iters": 10}, "refine": {"iters": 5, "resolution": 16},
                    "objective": {"name": "hifa", "hifa": {"denoise_steps": 1}}, **changes})
    guidance = Recording(two_tone_box())
    guidance.seen = []
    cancel = threading.Event()

    def stop(event):
        if cancel_at is not None and getattr(event, "stage", "") == "latent" and getattr(event, "step", 0) == cancel_at:
            cancel.set()

    with contextlib.suppress(Cancelled):  # the loop as `generate` runs it, without the export
        prepare_generate(config, guidance).run(on_event=stop, cancel=cancel, job_dir=tmp_path)
    return guidance.seen


def test_hifa_timesteps_fall_over_the_whole_job_and_resume_where_they_stopped(tmp_path):
    (tmp_path / "straight").mkdir()
    straight = hifa_timesteps(tmp_path / "straight")
    assert len(straight) == 15 and straight[0] == 980
    assert straight == sorted(straight, reverse=True), straight  # no jump back at the refinement stage
    # the last step is 14/15 of the way from 980 to 300
    assert straight[-1] == round(1000 * (0.98 - 0.68 * (14 / 15) ** 0.5))
    # cancelled at a checkpoint (every 5 steps), then resumed: the schedule continues where it stopped
    (tmp_path / "resumed").mkdir()
    first = hifa_timesteps(tmp_path / "resumed", cancel_at=5)
    second = hifa_timesteps(tmp_path / "resumed")
    assert first + second == straight
    # a stage that opts into its own schedule starts it over
    (tmp_path / "restart").mkdir()
    restarted = hifa_timesteps(tmp_path / "restart", refine={"iters": 5, "resolution": 16, "restart_schedules": True})
    assert restarted[:10] == [round(1000 * (0.98 - 0.68 * (s / 15) ** 0.5)) for s in range(10)]
    assert restarted[10] == 980 and restarted[10:] == sorted(restarted[10:], reverse=True)


@pytest.mark.parametrize("restart", [False, True])
def test_the_z_variance_ramp_follows_the_same_position(restart):
    from backend.regularisers import ramp

    stages = [stage("latent", 10), stage("rgb_refine", 10, restart)]
    weights = [ramp(*schedule_position(stages, i, s)) for i in range(2) for s in range(10)]
    assert weights[:10] == [s / 10 for s in range(10)]  # over the first half of the job's 20 steps
    if restart:
        assert weights[10:] == [min(1.0, s / 5) for s in range(10)]  # over the first half of its own 10
    else:
        assert weights[10:] == [1.0] * 10


def test_final_anneal_holds_the_rate_then_cosines_it_to_the_floor():
    scale = final_anneal(0.3, floor=0.01)
    values = [scale(step, 100) for step in range(100)]
    assert values[:70] == [1.0] * 70
    assert values[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(values[70:], values[71:], strict=False))
    assert final_anneal(0.0) is None


def test_a_stage_rate_follows_its_step_and_a_resumed_stage_continues_it():
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=0.1)
    annealed = Stage("a", 10, enter=lambda: optimizer, step=lambda s, n: {"total": (weight - 1).pow(2).sum()},
                     lr_scale=final_anneal(0.5))
    rates = []
    for step in range(10):
        train_step(annealed, optimizer, step)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[:5] == [pytest.approx(0.1)] * 5 and rates[-1] == pytest.approx(0.001)
    # a resumed optimiser (its state loaded from a checkpoint) continues from its base rate, not the last one
    resumed = torch.optim.Adam([weight], lr=0.1)
    resumed.load_state_dict(optimizer.state_dict())
    train_step(replace(annealed, enter=lambda: resumed), resumed, 7)
    assert resumed.param_groups[0]["lr"] == pytest.approx(rates[7])


def test_vsd_lowers_t_max_to_0_5_after_a_fifth_of_the_job(tmp_path):
    """ProlificDreamer's schedule (threestudio: 0.98 → 0.5 at step 5,000 of 25,000), through the job's own loop."""
    from backend.schedules import TimestepConfig

    config = merge(merge(GenerateConfig(prompt="a box"), method_overrides("vsd", GenerateConfig)),
                   {**TINY, "optim": {"iters": 60}, "refine": {"iters": 0}, "loop": {"checkpoint_every": 0}})
    assert (config.timesteps.late_t_max, config.timesteps.late_from) == (0.5, 0.2)
    guidance = Recording(two_tone_box())
    guidance.seen = []
    prepare_generate(config, guidance).run()
    early, late = guidance.seen[:12], guidance.seen[12:]
    assert len(late) == 48 and max(late) <= 500 and max(early) > 500
    with pytest.raises(ConfigError, match="late_t_max"):
        TimestepConfig(t_max=0.98, late_t_max=0.99).validate()
