"""Variants as a known answer: a captioned mixture of two walls a quarter turn apart, the same colour, so that nothing
but the seed chooses between them. Four drafts with seeds 0-3 go both ways, each to one wall; the draft nearest the
second wall, finished from its checkpoint, is that wall, for less CPU time than a fresh job of the whole schedule.

The jobs run through the service's own code path (variant specs, the task entry point in a job folder, the
checkpoint as a worker ships it, its continuation in the whole schedule) without the sockets in between.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
from shapes import RED, set_iou, voxel_sets
from test_known_answers import TINY_MIXTURE, box

from backend.guidance.mixture import MixtureGuidance
from backend.nesting import merge_trees
from backend.service import checkpoint_wire, tasks, variants

# both red: with a red and a blue wall every seed goes to the red one (the initial field's colour is nearer), and a
# tower and a slab of one colour always give the tower (an empty field's views are nearer its smaller silhouette)
WALLS = box((1.4, 0.4, 0.8), RED), box((0.4, 1.4, 0.8), RED)  # IoU of the two: 0.18
CAPTIONS = ["a red wall running east", "a red wall running north"]
DRAFT, WHOLE = 150, 300  # the drafts: TINY_MIXTURE's own steps; finishing doubles them


def run(fields: dict, job_dir: Path) -> tuple[object, float]:
    """A job's result and the CPU seconds it took, in `job_dir` (where it checkpoints and resumes from)."""
    start = time.process_time()
    spec = tasks.JobSpec(fields["task"], fields)
    result = tasks.run_spec(spec, MixtureGuidance(list(WALLS), CAPTIONS), job_dir, lambda _: None, None)
    return result, time.process_time() - start


def ious(result: object) -> tuple[float, float]:
    got, a, b = voxel_sets([result.mesh, *WALLS], 48)
    return set_iou(got, a), set_iou(got, b)


@pytest.mark.slow
def test_four_variants_find_both_walls_and_the_finished_one_is_its_wall_for_less_than_a_fresh_job(tmp_path):
    overrides = merge_trees(copy.deepcopy(TINY_MIXTURE), {"optim": {"iters": WHOLE}, "loop": {"checkpoint_every": 50}})
    submit = tasks.JobSpec.from_submit({"task": "generate", "prompt": "a red wall running east or north", "seed": 0,
                                        "overrides": overrides}, {})
    specs, steps = variants.variant_specs(submit, 4, DRAFT)
    assert steps == DRAFT and [s["seed"] for s in specs] == [0, 1, 2, 3]
    drafts = {}
    for fields in specs:
        folder = tmp_path / f"seed{fields['seed']}"
        folder.mkdir()
        result, cpu = run(fields, folder)
        drafts[fields["seed"]] = (ious(result), cpu, folder)
        (a, b), _, _ = drafts[fields["seed"]]
        print(f"draft seed {fields['seed']}: IoU with wall A {a:.3f}, wall B {b:.3f}, {cpu:.1f} s CPU")
    modes = {seed: 0 if a > b else 1 for seed, ((a, b), _, _) in drafts.items()}
    assert set(modes.values()) == {0, 1}, modes  # the set holds both walls
    for seed, (pair, _, _) in drafts.items():  # each draft is one wall, not a blend of both
        assert max(pair) >= 0.6 and max(pair) >= min(pair) + 0.3, (seed, pair)

    # the artist picks the draft nearest wall B; its worker shipped the checkpoint saved at the draft's end
    picked = max(drafts, key=lambda seed: drafts[seed][0][1])
    skeleton, arrays = checkpoint_wire.read(drafts[picked][2])
    finishing = tmp_path / "finish"
    checkpoint_wire.write(finishing, variants.continued(skeleton, DRAFT), arrays)
    finished, finish_cpu = run(variants.finish_spec(specs[picked]), finishing)
    fresh, fresh_cpu = run(variants.finish_spec(specs[picked]), tmp_path / "fresh")
    (a, b), (fresh_a, fresh_b) = ious(finished), ious(fresh)
    draft_cpu = drafts[picked][1]
    print(f"finished seed {picked}: IoU with wall B {b:.3f} (A {a:.3f}) in {finish_cpu:.1f} s CPU; a fresh job of "
          f"the whole schedule: IoU with B {fresh_b:.3f} (A {fresh_a:.3f}) in {fresh_cpu:.1f} s CPU; the draft "
          f"took {draft_cpu:.1f} s, all four {sum(d[1] for d in drafts.values()):.1f} s")
    assert b >= 0.8 and b >= a + 0.3
    assert finish_cpu < fresh_cpu


def test_a_paint_draft_keeps_its_texture_size_and_finishes_into_the_rgb_fine_tuning_it_never_had(tmp_path):
    import numpy as np
    import trimesh

    from backend.examples import example_target
    from backend.guidance import build_guidance

    ball = trimesh.creation.icosphere(2)
    arrays = {"vertices": np.asarray(ball.vertices, np.float32), "faces": np.asarray(ball.faces, np.int64)}
    overrides = {"resolution": 16, "texture_size": 64, "iters": 12, "finetune_iters": 3, "finetune_resolution": 32,
                 "loop": {"checkpoint_every": 4}}
    submit = tasks.JobSpec.from_submit({"task": "paint", "prompt": "a ball", "seed": 1, "preset": "high",
                                        "overrides": overrides}, arrays)
    [spec], steps = variants.variant_specs(submit, 1, 6)
    draft = tasks.JobSpec("paint", spec, arrays).config()
    assert steps == 6 and (draft.iters, draft.finetune_iters, draft.texture_size) == (6, 0, 64)
    guidance = build_guidance(f"target:{example_target()}", "cpu")
    tasks.run_spec(tasks.JobSpec("paint", spec, arrays), guidance, tmp_path / "draft", lambda _: None, None)
    skeleton, saved = checkpoint_wire.read(tmp_path / "draft")
    checkpoint_wire.write(tmp_path / "finish", variants.continued(skeleton, 6), saved)
    events: list = []
    result = tasks.run_spec(tasks.JobSpec("paint", variants.finish_spec(spec), arrays), guidance, tmp_path / "finish",
                            events.append, None)
    steps = [(e.stage, e.step, e.total) for e in events if getattr(e, "losses", None) is not None
             and not e.stage.startswith("export")]
    assert steps[0] == ("paint", 7, 12) and steps[-1] == ("rgb_finetune", 3, 3)
    assert result.texture.shape == (64, 64, 3)
