"""`latentforge` command line: generate, paint, demo (and the commands other modules add)."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Only light modules here: `--help`, usage errors and setting checks must not wait for torch or diffusers.
from backend import __version__
from backend.catalog import COMMON_FLAGS, MAX_FACES, MAX_LODS, METHODS, MIN_EXPORT_FACES, PRESETS, TASKS
from backend.compose import compose_config
from backend.config import from_dict, load_file, merge
from backend.cpu_time import CPU_WARN_S, duration, project_cpu_s, project_cpu_stages
from backend.devices import DEVICES, device_arg, pick_device
from backend.errors import ConfigError, LatentForgeError, ModelNotFoundError
from backend.image_view import view_arg
from backend.nesting import nested
from backend.notices import quiet_third_party

__all__ = ["build_parser", "main", "pick_device"]

# Commands whose modules are heavy are listed here with their one-line help, and their module adds the real
# parser only when one of them is run (tests check that these lines match the modules' own).
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("backend.service.commands", "run the job service (ZeroMQ) for Blender and `latentforge submit`"),
    "keys": ("backend.service.commands", "create CURVE keys: the server's pair and allow-listed client pairs"),
    "submit": ("backend.service.commands", "submit a job to a running service"),
    "status": ("backend.service.commands", "a job's state, or every job's"),
    "reexport": ("backend.service.commands", "export a job whose export failed again, with other export settings, "
                                             "without training again"),
    "finish": ("backend.service.commands", "finish a variant's draft: its job's whole schedule (the quality preset "
                                           "asked for), continued from the draft"),
    "fetch": ("backend.service.commands", "download a finished job's result"),
    "bench": ("backend.bench", "time each task's step at production scale against its U-Net calls alone"),
}


class TqdmEvents:
    """Shows the job's events as one tqdm bar per stage (export's sub-steps each get their own)."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar = None

    def __call__(self, event: Any) -> None:
        from backend.events import Finished, Progress, StageStarted

        if isinstance(event, StageStarted):
            self.close()
            self.bar = self._tqdm(total=event.total, desc=event.stage, unit="step", dynamic_ncols=True)
        elif isinstance(event, Progress) and self.bar is not None:
            self.bar.update(event.step - self.bar.n)
            shown = {k: f"{v:.3g}" for k, v in event.losses.items() if k != "total"}
            if event.eta_s > 0:
                shown["job left"] = duration(event.eta_s)
            self.bar.set_postfix(shown, refresh=False)
        elif isinstance(event, Finished):
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def task_flags(task: str) -> dict[str, str]:
    """Task `task`'s command-line flags (argparse's names) → dotted settings."""
    return {**COMMON_FLAGS, "iters": TASKS[task].iterations, **TASKS[task].flags}


# flags that choose the schedule: with none of them on a CPU, the run's projected time is worth a warning
SCHEDULE_FLAGS = ("quality", "config", "iters", "refine_iters", "resolution", "finetune_iters", "texture_size")


def _overrides(args: argparse.Namespace, flags: dict[str, str]) -> dict:
    """CLI flags that were given, as nested config keys (flags beat the config file)."""
    overrides = nested(vars(args), flags)
    if getattr(args, "image_view", None) is not None:
        azimuth, elevation = args.image_view
        overrides["image"] = {"azimuth": azimuth, "elevation": elevation}
    return overrides


FRONTS = {"-y": 0.0, "+x": 90.0, "+y": 180.0, "-x": -90.0}


def front_arg(text: str) -> float:
    """--front: an axis (-y, +x, +y, -x) or degrees counter-clockwise about +Z from -y."""
    text = text.strip().lower()
    if text in FRONTS or (len(text) == 1 and f"+{text}" in FRONTS):
        return FRONTS.get(text, FRONTS.get(f"+{text}", 0.0))
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an axis ({', '.join(FRONTS)}) or an angle") from None


def count_arg(what: str, lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi], refused with the range named (argparse exits with 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of {what}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value:,} {what} is out of range: give {lo:,} to {hi:,}")
        return value
    return parse


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", help="what to make, e.g. 'a red toadstool'")
    p.add_argument("--negative", help="what to avoid (classifier-free guidance's negative prompt)")
    p.add_argument("--guidance", default=None,
                   help="sd:MODEL (hub id, diffusers folder or .safetensors), target:MESH.glb or "
                        "mixture:FILE.toml (default: sd: with LATENTFORGE_MODEL or Stable Diffusion 1.5)")
    p.add_argument("--model", help="shorthand for --guidance sd:MODEL")
    p.add_argument("--method", help="; ".join(f"{name}: {m.description}" for name, m in METHODS.items())
                   + " (default sds)")
    p.add_argument("--perp-neg", dest="perp_neg", action="store_const", const="on",
                   help="Perp-Neg: the other views as negatives perpendicular to the view prompt, against a face on "
                        "the back (default: on for Stable Diffusion, off for target:/mixture: priors)")
    p.add_argument("--no-perp-neg", dest="perp_neg", action="store_const", const="off", help="plain view prompts")
    p.add_argument("--front", type=front_arg, metavar="-y|+x|+y|-x|DEGREES",
                   help="which way the asset's front faces in the scene, for the view prompts (default -y, "
                        "Blender's front view; or degrees counter-clockwise about +Z from -y)")
    p.add_argument("--image", help="a reference image of the asset (PNG or JPEG): its view is fitted to it, the prompt "
                                   "shapes the rest; its alpha is the mask, else the background is its border's "
                                   "colour (within image.tolerance, default 0.1 per channel)")
    p.add_argument("--image-view", type=view_arg, metavar="front|right|back|left|top|bottom|AZ,EL",
                   help="where the image was seen from, in the asset's frame (front: its -Y, Blender's front view; "
                        "azimuth counter-clockwise about +Z, elevation up; default front)")
    p.add_argument("--quality", choices=tuple(PRESETS),
                   help="a preset schedule, as in the add-on and the service (default standard; draft on a CPU "
                        "takes a fraction of the time)")
    p.add_argument("--iters", type=int, help="optimisation steps (default 5000)")
    p.add_argument("--resolution", type=int,
                   help="training render size in pixels, a multiple of 8 (default 64: the latent stage renders "
                        "64×64 latent pixels, Stable Diffusion's latent size for 512×512 images)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", type=device_arg, default="auto", help=f"{DEVICES} (default auto)")
    p.add_argument("--config", help="a JSON or TOML file of settings (flags override it)")
    p.add_argument("--job-dir", help="folder for checkpoints: a rerun with the same folder resumes")
    p.add_argument("--out", required=True, help="output .glb (a .png of the texture is written beside it)")


def add_generate_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--refine-iters", type=int, help="RGB refinement steps (default 1000, 0 to skip)")
    p.add_argument("--mesh-iters", type=int,
                   help="mesh refinement steps on a DMTet surface (default 1000, 0 to skip: marching cubes instead)")
    p.add_argument("--mesh-resolution", type=int, help="mesh refinement render size, up to 512 (default 512)")
    p.add_argument("--sketch", help="a mesh of primitives (.glb/.obj/.ply) for the shape to follow")
    p.add_argument("--looseness", type=float,
                   help="how loosely to follow the sketch: distance from its surface, in units of a sketch "
                        "scaled to radius 0.7 (Latent-NeRF's), within which the shape is free (default 0.3)")
    game = p.add_argument_group("game-ready output")
    game.add_argument("--faces", type=count_arg("faces", MIN_EXPORT_FACES, MAX_FACES),
                      help="face budget of the exported mesh, simplified from the full surface whose detail goes "
                           "into the normal map (default 50,000; with --quad it counts quads)")
    game.add_argument("--quad", action="store_const", const=True,
                      help="quad-dominant remesh (Instant Meshes) at the face budget; NAME.obj beside the GLB keeps "
                           "the quads (glTF stores triangles). Needs the game extra")
    game.add_argument("--lods", type=count_arg("levels of detail", 1, MAX_LODS),
                      help=f"levels of detail LOD0 … LOD(K-1), each half the faces of the one before, as GLB nodes "
                           f"NAME_LOD0 … with normal maps from the full surface (1 to {MAX_LODS}, default 1)")


def add_paint_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--mesh", required=True, help="the mesh to paint (.glb/.obj/.ply); its vertices are kept")
    p.add_argument("--texture-size", type=int, help="final texture size in pixels (default 1024)")
    p.add_argument("--finetune-iters", type=int, help="RGB fine-tuning steps after decoding (default 0)")
    p.add_argument("--faces", help="paint only these faces (.npy int array or a text file of face indices); "
                                   "every other texel of the mesh's texture is kept")


def build_config(task: str, args: argparse.Namespace) -> Any:
    """Defaults, the method's defaults, the --quality preset, the --config file, then the flags given."""
    file = load_file(args.config) if args.config else {}
    return compose_config(task, file, _overrides(args, task_flags(task)), preset=getattr(args, "quality", None))


def reference_image(args: argparse.Namespace, config: Any) -> Any:
    """--image as a `ReferenceImage` (None without one), read before anything is written."""
    if args.image is None:
        if args.image_view is not None:
            raise ConfigError("--image-view says where an image was seen from, but no --image is given",
                              "add --image FILE, or drop --image-view")
        return None
    from backend.reference import read_image

    return read_image(args.image, config.image.tolerance)


def check_prompt_with_image(args: argparse.Namespace) -> None:
    """An image is one view: the prompt still has to say what the object is, for every other view."""
    if args.image is not None and not (args.prompt or "").strip():
        raise ConfigError("a reference image needs a prompt too: the image fixes one view, the prompt shapes every "
                          "view it does not show", "describe the object, e.g. --prompt 'a red toadstool'")


def guidance_spec(args: argparse.Namespace) -> str:
    if args.model and args.guidance:
        raise LatentForgeError("give either --model or --guidance, not both")
    if args.model:
        return f"sd:{args.model}"
    return args.guidance or "sd:"


# each projected stage in the words of its flags: what it is, its step count and render size settings, its flags
STAGE_WORDS = {"latent": ("the latent stage", "optim.iters", "resolution", "--iters"),
               "rgb_refine": ("RGB refinement", "refine.iters", "refine.resolution", "--refine-iters"),
               "mesh": ("the mesh stage", "mesh.iters", "mesh.resolution", "--mesh-iters, --mesh-resolution"),
               "paint": ("painting", "iters", "resolution", "--iters"),
               "rgb_finetune": ("RGB fine-tuning", "finetune_iters", "resolution", "--finetune-iters")}


def describe_stage(name: str, config: Any) -> str:
    """A stage of a job in the words of its flags, e.g. "the mesh stage (1,000 steps at 512²; --mesh-iters, ...)"."""
    if name not in STAGE_WORDS:
        return f"the {name}"

    def setting(path: str) -> int:
        value = config
        for part in path.split("."):
            value = getattr(value, part)
        return value

    words, iters, size, flags = STAGE_WORDS[name]
    return f"{words} ({setting(iters):,} steps at {setting(size)}²; {flags})"


def warn_cpu_schedule(task: str, config: Any, args: argparse.Namespace, spec: str, device: Any) -> None:
    """On a CPU, say how long a job would take and which stage takes most of it: always with the default
    schedule (and how long --quality draft would take), and whatever the settings when it passes 10 minutes."""
    if device.type != "cpu":
        return
    chosen = any(getattr(args, flag, None) is not None for flag in SCHEDULE_FLAGS)
    with_unet = not spec.startswith("target:")
    stages = project_cpu_stages(task, config, with_unet)
    projected = sum(stages.values())
    if chosen and projected <= CPU_WARN_S:
        return
    longest = max(stages, key=stages.__getitem__)
    message = (f"warning: on the CPU these settings take roughly {duration(projected)}, "
               f"{duration(stages[longest])} of it in {describe_stage(longest, config)}")
    if not chosen:
        draft = compose_config(task, method=args.method, preset="draft")
        message += f"; --quality draft takes roughly {duration(project_cpu_s(task, draft, with_unet))}"
    print(message + " (a GPU is tens of times faster)", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> int:
    check_prompt_with_image(args)
    config = build_config("generate", args)
    config.validate()
    from backend.export.libraries import check

    check(config.export.quad, config.export.lods)  # before training: the export is hours away
    spec = guidance_spec(args)
    device = pick_device(args.device)
    from backend.depth import HIFA_WEIGHT as HIFA_DEPTH_WEIGHT
    from backend.guidance import build_guidance
    from backend.mesh import load_mesh
    from backend.tasks.generate import generate

    sketch = load_mesh(args.sketch, "sketch") if args.sketch else None
    image = reference_image(args, config)
    warn_cpu_schedule("generate", config, args, spec, device)
    if config.objective.name == "hifa" and config.depth.weight is None and not config.depth.model.strip():
        print(f"note: HiFA's depth term (weight {HIFA_DEPTH_WEIGHT}) is off: no depth model is named "
              "(depth.model: a transformers depth-estimation model, e.g. Intel/dpt-hybrid-midas)", file=sys.stderr)
    guidance = build_guidance(spec, device)
    return _run(lambda events: generate(config, guidance, args.out, sketch=sketch, on_event=events,
                                        job_dir=args.job_dir, image=image), guidance.describe(), device,
                known_answer(guidance))


def cmd_paint(args: argparse.Namespace) -> int:
    check_prompt_with_image(args)
    config = build_config("paint", args)
    config.validate()
    spec = guidance_spec(args)
    device = pick_device(args.device)
    from backend.guidance import build_guidance
    from backend.mesh import load_mesh
    from backend.tasks.face_selection import check_faces, load_faces
    from backend.tasks.paint import paint
    from backend.tasks.udim import refuse_in_files

    mesh = load_mesh(args.mesh, "paint mesh")
    refuse_in_files(mesh)
    faces = check_faces(load_faces(args.faces), len(mesh.faces)) if args.faces else None
    image = reference_image(args, config)
    warn_cpu_schedule("paint", config, args, spec, device)
    guidance = build_guidance(spec, device)
    return _run(lambda events: paint(config, guidance, mesh, args.out, on_event=events, job_dir=args.job_dir,
                                     faces=faces, image=image), guidance.describe(), device)


def known_answer(guidance: Any) -> Any:
    """The mesh a job's asset should come back as, when its prior is one known mesh (target:), else None."""
    from backend.guidance.target import TargetGuidance

    return guidance.mesh if isinstance(guidance, TargetGuidance) else None


def _run(job: Callable, what: str, device: Any, reference: Any = None) -> int:
    """Run `job`, then summarise what it wrote (and, with the `reference` mesh it should match, how closely)."""
    print(f"latentforge {__version__}: {what} on {device}", file=sys.stderr)
    events = TqdmEvents()
    start = time.perf_counter()
    try:
        result = job(events)
    finally:
        events.close()
    charts = getattr(result, "charts", 0)
    normal_map = getattr(result, "normal_map_path", None)
    levels = getattr(result, "levels", [])
    if levels:
        obj = f" and {result.obj_path} (quads)" if result.obj_path else ""
        print(f"wrote {result.glb_path}{obj}, with textures and normal maps beside them "
              f"({time.perf_counter() - start:.1f} s)")
        for k, level in enumerate(levels):
            print("  " + describe_level(k, level))
        return 0
    print(f"wrote {result.glb_path} and {result.png_path}" + (f" and {normal_map}" if normal_map else "")
          + f" ({len(result.mesh.faces):,} faces" + (f", {charts:,} UV charts" if charts else "")
          + f", {time.perf_counter() - start:.1f} s)")
    if reference is not None:
        from backend.surface_error import surface_error

        print(f"against the reference mesh: {surface_error(result.mesh, reference).describe()}")
    return 0


def describe_level(k: int, level: Any) -> str:
    """One line per level of detail: faces (quads and triangles), UV charts, which texture it reads."""
    if level.polygons is not None:
        faces = (f"{level.face_count:,} faces, {level.polygons.quad_ratio:.0%} quads "
                 f"({len(level.mesh.faces):,} triangles in the GLB)")
    else:
        faces = f"{level.face_count:,} faces"
    return f"LOD{k}: {faces}, {level.charts:,} UV charts, colour texture {level.texture}"


def describe_schedule(config: Any) -> str:
    """The settings a demo runs with, in the words of the flags and the config file."""
    refine = f"{config.refine.iters} RGB refinement steps at {config.refine.resolution}²" if config.refine.iters \
        else "no RGB refinement stage"
    e = config.export
    return (f"{config.optim.iters} latent steps at {config.resolution}² render pixels, {refine}, "
            f"a {e.grid_resolution}³ export grid, a {e.texture_size}² texture, at most {e.max_faces:,} faces")


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate the shipped example: with Stable Diffusion when it can be had, else with its target."""
    device = pick_device(args.device)
    from backend.examples import example_config, example_target
    from backend.guidance import build_guidance, default_model
    from backend.guidance.target import TargetGuidance
    from backend.tasks.generate import GenerateConfig, generate

    model = args.model or default_model()
    try:
        guidance = build_guidance(f"sd:{model}", device)
        config = from_dict(GenerateConfig, example_config("sd"))
    except ModelNotFoundError as exc:
        print(f"Stable Diffusion ({model}) is not available here, so the demo checks the install with the same "
              "pipeline guided by the example's reference mesh (TargetGuidance; the prompt is not used).",
              file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        guidance = TargetGuidance.from_file(example_target(), device)
        config = from_dict(GenerateConfig, example_config("target"))
    if device.type == "cpu" and not args.full:
        config = merge(config, example_config("cpu"))
        print(f"On the CPU the demo runs its short CPU schedule (--full for the default one): "
              f"{describe_schedule(config)}.", file=sys.stderr)
    else:
        print(f"The demo runs {describe_schedule(config)}.", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    return _run(lambda events: generate(config, guidance, args.out, on_event=events), guidance.describe(), device,
                known_answer(guidance))


def _command(argv: list[str]) -> str | None:
    """The subcommand `argv` names: its first word that is not an option (top-level options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; the heavy commands' modules are imported only for the command `argv` runs."""
    parser = argparse.ArgumentParser(prog="latentforge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"latentforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help=TASKS["generate"].help)
    add_generate_args(g)
    g.set_defaults(func=cmd_generate)
    p = sub.add_parser("paint", help=TASKS["paint"].help)
    add_paint_args(p)
    p.set_defaults(func=cmd_paint)
    d = sub.add_parser("demo", help="generate the shipped example (Stable Diffusion, or its target)")
    d.add_argument("--model", help="Stable Diffusion checkpoint (default: LATENTFORGE_MODEL or SD 1.5)")
    d.add_argument("--device", type=device_arg, default="auto", help=f"{DEVICES} (default auto)")
    d.add_argument("--full", action="store_true", help="the default schedule even on the CPU")
    d.add_argument("--out", default="out/example.glb")
    d.set_defaults(func=cmd_demo)
    chosen = LAZY_COMMANDS.get(_command(sys.argv[1:] if argv is None else argv) or "", ("", ""))[0]
    for name, (module, help_text) in LAZY_COMMANDS.items():
        if module != chosen:
            sub.add_parser(name, help=help_text, add_help=False)  # a placeholder: never parsed
        elif name == next(n for n, (m, _) in LAZY_COMMANDS.items() if m == module):
            importlib.import_module(module).register(sub)  # all that module's commands, with their arguments
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
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
