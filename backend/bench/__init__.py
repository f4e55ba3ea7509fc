"""`latentforge bench`: each task's step at production scale, against its U-Net calls alone, on one device.

For each task (generate with SDS, generate with HiFA, paint) the job is wired exactly as the task wires it
(`prepare_generate`, `prepare_paint`) and stepped with the loop's own `train_step`: warm-up steps (where
compilation happens), timed steps (their median), the same steps again with each part timed, peak GPU
memory, the RGB-refine stage, the export, and from those the wall time of a default job. The floor is the
U-Net alone on the same call batch (CFG's two latents per camera), CUDA-graphed on CUDA, times the calls a
step makes: no step can be faster.

Without --model it builds a Stable Diffusion architecture with random weights: compute is the same,
quality is not. Results are printed as a table and written as JSON (benchmarks/README.md names the fields).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# the registry of bench runs and the defaults the command line shows; the work itself is imported per command
from backend.bench.steps import CPU_WARMUP, CUDA_REFINE_STEPS, CUDA_WARMUP, RANDOM_NOTE, RUNS, BenchSettings
from backend.config import load_file


def cmd_bench(args: argparse.Namespace) -> int:
    from backend.cli import pick_device

    if args.export_breakdown:
        return cmd_export_breakdown(args)
    device = pick_device(args.device)
    overrides = load_file(args.config) if args.config else {}
    settings = BenchSettings(device, [t.strip() for t in args.tasks.split(",") if t.strip()], args.steps, args.warmup,
                             args.refine_steps, not args.no_export, args.arch, args.model, overrides)
    print(f"latentforge bench: {', '.join(settings.tasks)} on {device}"
          f"{'' if args.model else f' ({args.arch}, {RANDOM_NOTE})'}", file=sys.stderr)
    from backend.bench.report import report
    from backend.bench.run import default_out, run_bench

    doc = run_bench(settings)
    out = Path(args.out) if args.out else default_out(device, settings.tasks, args.config)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(report(doc))
    print(f"\nwrote {out}")
    return 0

def register(sub: argparse._SubParsersAction) -> None:
    """Add `bench` to the `latentforge` parser."""
    from backend.devices import DEVICES, device_arg
    from backend.guidance.random_sd import ARCHS

    b = sub.add_parser("bench", help="time each task's step at production scale against its U-Net calls alone")
    b.add_argument("--device", type=device_arg, default="auto", help=f"{DEVICES} (default auto)")
    b.add_argument("--steps", type=int, default=60, help="timed steps per task; the median is reported (default 60)")
    b.add_argument("--warmup", type=int, help="untimed steps first, where compilation happens "
                                              f"(default {CUDA_WARMUP} on CUDA, {CPU_WARMUP} on a CPU)")
    b.add_argument("--refine-steps", type=int, help=f"timed RGB-refine steps for the job projection (default "
                                                    f"{CUDA_REFINE_STEPS} on CUDA, 0 on a CPU)")
    b.add_argument("--model", help="a Stable Diffusion checkpoint (hub id, diffusers folder or .safetensors); "
                                   "without it, --arch with random weights")
    b.add_argument("--arch", choices=sorted(ARCHS), default="sd15",
                   help="the architecture built with random weights (default sd15)")
    b.add_argument("--tasks", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)} (default all)")
    b.add_argument("--config", help="a JSON or TOML file with [generate] and/or [paint] tables of settings")
    b.add_argument("--no-export", action="store_true", help="skip timing the export (no job time is projected)")
    b.add_argument("--export-breakdown", action="store_true",
                   help="time only the export, sub-step by sub-step, for an unconverged and a converged field at "
                        "the default export settings (or the --config file's [export] table)")
    b.add_argument("--out", help="the JSON results (default benchmarks/bench-<device>.json, with the tasks and the "
                                 "config file's name added when given)")
    b.set_defaults(func=cmd_bench)

def cmd_export_breakdown(args: argparse.Namespace) -> int:
    from backend.cli import pick_device

    device = pick_device(args.device)
    overrides = load_file(args.config).get("export", {}) if args.config else {}
    print(f"latentforge bench --export-breakdown on {device}", file=sys.stderr)
    from backend.bench.export_breakdown import run_export_breakdown
    from backend.bench.report import export_breakdown_report

    doc = run_export_breakdown(device, overrides)
    out = Path(args.out) if args.out else Path("benchmarks") / f"export-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(export_breakdown_report(doc))
    print(f"\nwrote {out}")
    return 0
