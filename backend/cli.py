"""`latentforge` command line: generate, paint, demo (and the commands other modules add)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from backend import __version__
from backend import bench as bench_commands
from backend.config import from_dict, load_file, merge
from backend.errors import LatentForgeError, ModelNotFoundError
from backend.events import Event, Finished, Progress, StageStarted
from backend.methods import method_overrides
from backend.service import commands as service_commands


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LatentForgeError("--device cuda was asked for but PyTorch sees no CUDA GPU",
                               "use --device cpu, or install a CUDA build of PyTorch")
    return torch.device(name)


class TqdmEvents:
    """Shows the loop's events as one tqdm bar per stage."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, StageStarted):
            self.close()
            self.bar = self._tqdm(total=event.total, desc=event.stage, unit="step", dynamic_ncols=True)
        elif isinstance(event, Progress) and self.bar is not None:
            self.bar.update(event.step - self.bar.n)
            shown = {k: f"{v:.3g}" for k, v in event.losses.items() if k != "total"}
            self.bar.set_postfix(shown, refresh=False)
        elif isinstance(event, Finished):
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


COMMON_FLAGS = {"prompt": "prompt", "negative": "negative", "seed": "seed", "resolution": "resolution",
                "method": "objective.name"}
GENERATE_FLAGS = {**COMMON_FLAGS, "iters": "optim.iters", "refine_iters": "refine.iters",
                  "looseness": "sketch.looseness"}
PAINT_FLAGS = {**COMMON_FLAGS, "iters": "iters", "texture_size": "texture_size", "finetune_iters": "finetune_iters"}


def _overrides(args: argparse.Namespace, flags: dict[str, str]) -> dict:
    """CLI flags that were given, as nested config keys (flags beat the config file)."""
    o: dict = {}
    for flag, path in flags.items():
        value = getattr(args, flag, None)
        if value is not None:
            node = o
            *parents, leaf = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    return o


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", help="what to make, e.g. 'a red toadstool'")
    p.add_argument("--negative", help="what to avoid (classifier-free guidance's negative prompt)")
    p.add_argument("--guidance", default=None,
                   help="sd:MODEL (hub id, diffusers folder or .safetensors), target:MESH.glb or "
                        "mixture:FILE.toml (default: sd: with LATENTFORGE_MODEL or Stable Diffusion 1.5)")
    p.add_argument("--model", help="shorthand for --guidance sd:MODEL")
    p.add_argument("--method", help="sds (default) or hifa (BGT+ with √-annealed timesteps, z-variance and "
                                    "kernel-smoothed importance sampling)")
    p.add_argument("--iters", type=int, help="optimisation steps (default 5000)")
    p.add_argument("--resolution", type=int, help="training render size in pixels (default 64)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--config", help="a JSON or TOML file of settings (flags override it)")
    p.add_argument("--job-dir", help="folder for checkpoints: a rerun with the same folder resumes")
    p.add_argument("--out", required=True, help="output .glb (a .png of the texture is written beside it)")


def add_generate_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--refine-iters", type=int, help="RGB refinement steps (default 1000, 0 to skip)")
    p.add_argument("--sketch", help="a mesh of primitives (.glb/.obj/.ply) for the shape to follow")
    p.add_argument("--looseness", type=float,
                   help="how loosely to follow the sketch: distance from its surface, in units of a sketch "
                        "scaled to radius 0.5, within which the shape is free (default 0.3)")


def add_paint_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--mesh", required=True, help="the mesh to paint (.glb/.obj/.ply); its vertices are kept")
    p.add_argument("--texture-size", type=int, help="final texture size in pixels (default 1024)")
    p.add_argument("--finetune-iters", type=int, help="RGB fine-tuning steps after decoding (default 0)")


def build_config(cls: type, args: argparse.Namespace, flags: dict[str, str]):  # noqa: ANN201
    """Defaults, then the method's defaults, then the --config file, then the flags given."""
    file = load_file(args.config) if args.config else {}
    objective = file.get("objective") if isinstance(file, dict) else None
    method = args.method or (objective.get("name") if isinstance(objective, dict) else None) or "sds"
    config = merge(cls(), method_overrides(str(method), cls))
    config = merge(config, file)
    return merge(config, _overrides(args, flags))


def guidance_spec(args: argparse.Namespace) -> str:
    if args.model and args.guidance:
        raise LatentForgeError("give either --model or --guidance, not both")
    if args.model:
        return f"sd:{args.model}"
    return args.guidance or "sd:"


def cmd_generate(args: argparse.Namespace) -> int:
    from backend.guidance import build_guidance
    from backend.mesh import load_mesh
    from backend.tasks.generate import GenerateConfig, generate

    config = build_config(GenerateConfig, args, GENERATE_FLAGS)
    config.validate()
    sketch = load_mesh(args.sketch, "sketch") if args.sketch else None
    device = pick_device(args.device)
    guidance = build_guidance(guidance_spec(args), device)
    return _run(lambda events: generate(config, guidance, args.out, sketch=sketch, on_event=events,
                                        job_dir=args.job_dir), guidance.describe(), device)


def cmd_paint(args: argparse.Namespace) -> int:
    from backend.guidance import build_guidance
    from backend.mesh import load_mesh
    from backend.tasks.paint import PaintConfig, paint

    config = build_config(PaintConfig, args, PAINT_FLAGS)
    config.validate()
    mesh = load_mesh(args.mesh, "paint mesh")
    device = pick_device(args.device)
    guidance = build_guidance(guidance_spec(args), device)
    return _run(lambda events: paint(config, guidance, mesh, args.out, on_event=events, job_dir=args.job_dir),
                guidance.describe(), device)


def _run(job: Callable, what: str, device: torch.device) -> int:
    print(f"latentforge {__version__}: {what} on {device}", file=sys.stderr)
    events = TqdmEvents()
    start = time.perf_counter()
    try:
        result = job(events)
    finally:
        events.close()
    print(f"wrote {result.glb_path} and {result.png_path} ({len(result.mesh.faces):,} faces, "
          f"{time.perf_counter() - start:.1f} s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate the shipped example: with Stable Diffusion when it can be had, else with its target."""
    from backend.examples import example_config, example_target
    from backend.guidance import build_guidance, default_model
    from backend.guidance.target import TargetGuidance
    from backend.tasks.generate import GenerateConfig, generate

    device = pick_device(args.device)
    try:
        guidance = build_guidance(f"sd:{args.model or default_model()}", device)
        config = from_dict(GenerateConfig, example_config("sd"))
    except ModelNotFoundError as exc:
        print(f"Stable Diffusion is not available here: {exc}\n"
              "Running the same pipeline with TargetGuidance on the example's reference mesh instead "
              "(it checks the install end to end; the prompt is not used).", file=sys.stderr)
        guidance = TargetGuidance.from_file(example_target(), device)
        config = from_dict(GenerateConfig, example_config("target"))
    if device.type == "cpu" and not args.full:
        config = merge(config, example_config("cpu"))
        print("On the CPU: running the example's short CPU schedule (--full for the default one).",
              file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    return _run(lambda events: generate(config, guidance, args.out, on_event=events), guidance.describe(), device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentforge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"latentforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="text (and sketch) to a textured GLB")
    add_generate_args(g)
    g.set_defaults(func=cmd_generate)
    p = sub.add_parser("paint", help="texture a mesh from a prompt (Latent-Paint), keeping its geometry")
    add_paint_args(p)
    p.set_defaults(func=cmd_paint)
    d = sub.add_parser("demo", help="generate the shipped example (Stable Diffusion, or its target)")
    d.add_argument("--model", help="Stable Diffusion checkpoint (default: LATENTFORGE_MODEL or SD 1.5)")
    d.add_argument("--device", default="auto")
    d.add_argument("--full", action="store_true", help="the default schedule even on the CPU")
    d.add_argument("--out", default="out/example.glb")
    d.set_defaults(func=cmd_demo)
    service_commands.register(sub)  # serve, worker, keys, submit, status, fetch
    bench_commands.register(sub)  # bench
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LatentForgeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
