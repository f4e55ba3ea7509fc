"""Known answers that exercise the whole prior, through the real pipeline: a part the colour of the
background (random backgrounds), and a captioned mixture whose prompt and guidance scale decide the shape."""

from __future__ import annotations

import pytest
from shapes import WHITE, two_tone_box, voxel_iou
from test_hifa import REDUCED

from backend.config import merge
from backend.guidance.target import TargetGuidance
from backend.tasks.generate import GenerateConfig, generate


@pytest.mark.slow
def test_a_part_the_colour_of_the_background_is_reconstructed_with_random_backgrounds(tmp_path):
    target = two_tone_box(lower=WHITE)  # the lower half is TargetGuidance's background colour

    def iou(random_background: float | None) -> float:
        config = merge(GenerateConfig(prompt="a red and white box"),
                       {**REDUCED, "camera": {"random_background": random_background}})
        result = generate(config, TargetGuidance(target), tmp_path / f"{random_background}.glb")
        return voxel_iou(result.mesh, target)

    off, on = iou(0.0), iou(None)  # None: the analytic prior's default (0.5)
    print(f"red-over-white box: voxel IoU {off:.3f} against a fixed background, {on:.3f} with random ones")
    assert on >= 0.8
    assert on >= off + 0.1
