"""Known answers only a reference image can decide, through the real pipeline.

- Generate: `MixtureGuidance` with two targets of different shape and colour (TOWER, a tall red box; SLAB, a
  flat blue one) under a prompt that matches both captions, so the prior's conditional and unconditional
  distributions are the same two-mode mixture and the prompt carries no choice. The front render of one
  target as the image must bring back that target, and the reference view must match the image.
- Paint: a box painted from a front image of its known colouring while `TargetGuidance` pulls every view
  towards another colouring: the faces the view sees take the image's colours; faces it cannot see (the
  box's far side, a smaller box hidden right behind it) keep the prior's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from image_scenes import asset_render, boxes_behind, coloured, image_of, psnr_inside
from shapes import set_iou, surface_psnr, voxel_sets
from test_known_answers import SLAB, TINY_MIXTURE, TOWER

from backend.config import merge
from backend.events import ignore
from backend.guidance.mixture import MixtureGuidance
from backend.guidance.target import TargetGuidance
from backend.reference import ImageConfig, ReferenceImage
from backend.tasks.distill import run_job
from backend.tasks.generate import GenerateConfig, prepare_generate
from backend.tasks.paint import PaintConfig, paint
from backend.tasks.reference_view import reference_cameras

BOTH = "a tall red tower or a flat blue slab"  # every word of both captions


@pytest.mark.slow
def test_the_image_decides_which_of_two_matching_targets_comes_back(tmp_path):
    """The reference view is measured twice: the trained field's own render (what the image fits), and the
    exported asset's, one pixel in from the mask's edge (marching cubes moves its outline by about a pixel)."""
    runs = {}
    for name, target in (("slab", SLAB), ("tower", TOWER)):
        config = merge(GenerateConfig(prompt=BOTH), TINY_MIXTURE)
        guidance = MixtureGuidance([TOWER, SLAB], ["a tall red tower", "a flat blue slab"])
        assert guidance.matching(BOTH) == [0, 1]  # the prompt cannot choose
        frame = guidance.suggested_frame()  # where the job places them: the image is their front there
        image = image_of(target, frame, config.image)
        job = prepare_generate(config, guidance, image=ReferenceImage.from_pixels(image))
        result = run_job(job, tmp_path / f"{name}.glb", ignore, None, None)
        with torch.no_grad():
            field = job.scene.render(reference_cameras(config.image, "cpu"), 64, "albedo", train=False).image[0]
        asset = asset_render(result.mesh, result.texture, frame, config.image)
        got, tower, slab = voxel_sets([result.mesh, TOWER, SLAB], 48)
        runs[name] = {"tower": set_iou(got, tower), "slab": set_iou(got, slab), "field": psnr_inside(field, image),
                      "asset": psnr_inside(asset, image, erode=1), "asset to the edge": psnr_inside(asset, image)}
        print(f"{name}'s front as the image: IoU with the tower {runs[name]['tower']:.3f}, the slab "
              f"{runs[name]['slab']:.3f}; reference view inside the mask: the field {runs[name]['field']:.1f} dB, "
              f"the asset {runs[name]['asset']:.1f} dB ({runs[name]['asset to the edge']:.1f} dB to the edge)")
    for name, other in (("slab", "tower"), ("tower", "slab")):
        assert runs[name][name] >= 0.75 and runs[name][name] >= runs[name][other] + 0.2, runs
        assert runs[name]["field"] >= 25 and runs[name]["asset"] >= 25, runs


PAINT = {"resolution": 32, "texture_size": 128, "iters": 150, "lr": 5e-2, "loop": {"checkpoint_every": 0}}


@pytest.mark.slow
def test_paint_takes_the_image_where_its_view_sees_and_the_prompt_elsewhere(tmp_path):
    view = ImageConfig(azimuth=30.0, elevation=20.0)  # a front view, a little from the right and above
    scene = boxes_behind(view)
    prior = np.full_like(scene.colours, (0.35, 0.35, 0.4))  # what TargetGuidance paints every view
    image = image_of(coloured(scene.mesh, scene.colours), scene.frame, view)
    config = merge(PaintConfig(prompt="a box", image=view), PAINT)
    result = paint(config, TargetGuidance(coloured(scene.mesh, prior)), scene.mesh, tmp_path / "box.glb",
                   image=ReferenceImage.from_pixels(image))
    turned = scene.turned  # the front box's faces turned to the view, down to 70° from it (the top)
    seen = surface_psnr(result.mesh, result.texture, scene.colours, turned)
    squarely = surface_psnr(result.mesh, result.texture, scene.colours, scene.seen)
    hidden = surface_psnr(result.mesh, result.texture, prior, scene.hidden)
    hidden_as_image = surface_psnr(result.mesh, result.texture, scene.colours, scene.hidden)
    print(f"paint from an image: {seen:.1f} dB against the image's colours on the {len(turned)} faces turned to "
          f"the view ({squarely:.1f} dB on the front), {hidden:.1f} dB against the prior's on the "
          f"{len(scene.hidden)} faces it cannot see ({hidden_as_image:.1f} dB against the image's colouring)")
    assert seen >= 25 and hidden >= 25
    assert hidden_as_image < 15  # not coloured by the image
