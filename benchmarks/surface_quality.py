"""Surface quality of generate's known answers: voxel IoU, Chamfer distance, normal error, charts, faces, CPU time.

Runs `generate` with TargetGuidance on references (the shipped toadstool, the tests' smooth gourd and
dumbbell, and their sharp-edged notched block) at a schedule (the demo's CPU schedule, or a known-answer
test's) and prints one JSON line per run; run it on two commits to compare them:

    python benchmarks/surface_quality.py --schedule demo --shapes toadstool gourd dumbbell --label after
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from shapes import dumbbell, gourd, notched_block  # noqa: E402
from test_generate_quality import CONCAVE, MESH_KNOWN_ANSWER  # noqa: E402

from backend.config import merge  # noqa: E402
from backend.examples import example_config, example_target  # noqa: E402
from backend.guidance.target import TargetGuidance  # noqa: E402
from backend.mesh import load_mesh  # noqa: E402
from backend.surface_error import surface_error  # noqa: E402
from backend.tasks.generate import GenerateConfig, generate  # noqa: E402

SHAPES = {"toadstool": lambda: load_mesh(example_target(), "target mesh"), "gourd": gourd, "dumbbell": dumbbell,
          "notched": notched_block}
SCHEDULES = {
    "demo": {**example_config("target"), **example_config("cpu"), "loop": {"checkpoint_every": 0}},
    "test": MESH_KNOWN_ANSWER,
    "concave": CONCAVE,  # the sharp-edged notched block's test
}


def run(shape: str, schedule: str, label: str, extra: dict, out_dir: Path | None) -> dict:
    reference = SHAPES[shape]()
    config = merge(merge(GenerateConfig(prompt="a known shape"), SCHEDULES[schedule]), extra)
    start = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        out = (out_dir or Path(tmp)) / f"{shape}-{schedule}-{label}.glb"
        out.parent.mkdir(parents=True, exist_ok=True)
        result = generate(config, TargetGuidance(reference), out)
    cpu = time.process_time() - start
    error = surface_error(result.mesh, reference)
    return {"shape": shape, "schedule": schedule, "label": label, "extra": extra, **error.as_dict(),
            "charts": result.charts, "faces": len(result.mesh.faces), "cpu_s": round(cpu, 1),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--schedule", default="demo", choices=list(SCHEDULES))
    parser.add_argument("--label", default="", help="names the run in its JSON and its kept files")
    parser.add_argument("--set", default="{}", help="extra settings as JSON, applied last")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="keep the GLBs in this folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for shape in args.shapes:
        print(json.dumps(run(shape, args.schedule, args.label, json.loads(args.set), args.keep)), flush=True)


if __name__ == "__main__":
    main()
