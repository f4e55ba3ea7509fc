"""The service's command-line commands: serve, keys, submit, status, reexport, finish, fetch."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from backend.devices import DEVICES, device_arg
from backend.errors import LatentForgeError
from backend.image_view import view_arg
from backend.service.client import DEFAULT_ENDPOINT, Client, CurveKeys, JobResult, ServiceError
from backend.service.protocol import MAX_GROUP
from backend.service.retention import DEFAULT_MAX_AGE_DAYS, DEFAULT_MAX_DISK_GB
from backend.service.worker import HANG_S


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _devices(name: str) -> list[str]:
    import torch

    if name == "auto":
        count = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(count)] if count else ["cpu"]
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LatentForgeError("--device cuda was asked for but PyTorch sees no CUDA GPU", "use --device cpu")
    return [name]


def cmd_serve(args: argparse.Namespace) -> int:
    from backend.service.security import check_bind

    keys_dir = Path(args.keys) if args.keys else None
    check_bind(args.bind, keys_dir)  # a public address without keys is refused before the slow imports
    from backend.guidance import default_model
    from backend.service.jobs import default_jobs_dir
    from backend.service.retention import RetentionPolicy
    from backend.service.server import Service, ServiceConfig

    if args.workers is not None and args.workers < 0:
        raise LatentForgeError("--workers must be 0 or more")
    if not 1 <= args.max_variants <= MAX_GROUP:
        raise LatentForgeError(f"--max-variants must be in [1, {MAX_GROUP}], got {args.max_variants}")
    if args.ray is not None:  # the cluster's GPUs (or CPUs) are the actors' devices, not this machine's
        workers, devices = args.workers or 0, [args.device]
    else:
        found = _devices(args.device)
        workers = args.workers if args.workers is not None else len(found)
        devices = [found[i % len(found)] for i in range(workers)]
    config = ServiceConfig(
        jobs_dir=Path(args.jobs) if args.jobs else default_jobs_dir(), models=args.model or [f"sd:{default_model()}"],
        bind=args.bind, workers=workers, devices=devices or ["cpu"], ray=args.ray, ray_cpus=args.ray_cpus,
        keys_dir=Path(args.keys) if args.keys else None, max_queued_per_client=args.max_queued,
        max_variants=args.max_variants, heartbeat_s=args.heartbeat_s, hang_s=args.hang_s,
        retention=RetentionPolicy(args.keep_days, args.disk_budget_gb))
    service = Service(config)
    try:
        service.start()
        stop = _stop_on_signals()  # after joining Ray, which installs handlers of its own
        where = f"Ray actors at {args.ray}" if args.ray is not None else f"{workers} local worker(s)"
        print(f"latentforge service listening on {service.endpoint} ({'CURVE' if args.keys else 'loopback only'}); "
              f"jobs in {service.store.root}; {where}", flush=True)
        service.serve(stop)
    finally:
        service.close()
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from backend.service.security import default_keys_dir, make_keys

    folder = Path(args.dir) if args.dir else default_keys_dir()
    for what, path in make_keys(folder, args.client or []).items():
        print(f"{what}: {path}")
    print(f"start the service with --keys {folder}; give each client its .key_secret and the server public key")
    return 0


def _keys(args: argparse.Namespace) -> CurveKeys | None:
    if bool(args.server_key) != bool(args.client_key):
        raise LatentForgeError("CURVE needs both --server-key and --client-key")
    return CurveKeys.load(args.server_key, args.client_key) if args.server_key else None


def _client(args: argparse.Namespace) -> Client:
    return Client(args.server, timeout_s=args.timeout, keys=_keys(args))


def _print_progress(message: Any) -> None:
    f = message.fields
    eta = f" eta {f['eta_s']:.0f} s" if f.get("eta_s") is not None else ""
    print(f"{f['stage']} {f['step']}/{f['total']}{eta}", file=sys.stderr, flush=True)


def cmd_submit(args: argparse.Namespace) -> int:
    from backend.config import load_file
    from backend.mesh import load_mesh

    if args.task == "paint" and (args.sketch or not args.mesh):
        raise LatentForgeError("a paint job needs --mesh FILE (and takes no --sketch)")
    if args.task == "generate" and args.mesh:
        raise LatentForgeError("--mesh is for paint jobs", "use --sketch to place a generate, or --task paint")
    arrays: dict[str, Any] = {}
    mesh_file = args.mesh if args.task == "paint" else args.sketch
    if mesh_file:
        mesh = load_mesh(mesh_file, "mesh" if args.task == "paint" else "sketch")
        arrays = {"vertices": mesh.vertices, "faces": mesh.faces}
        if args.task == "paint" and mesh.uvs is not None:
            arrays["uvs"] = mesh.uvs
    if args.image_view is not None and args.image is None:
        raise LatentForgeError("--image-view says where an image was seen from, but no --image is given")
    if args.draft_iters is not None and args.variants is None:
        raise LatentForgeError("--draft-iters is the length of each variant's draft", "add --variants N")
    image = None
    if args.image is not None:  # its mask is made here, once: alpha travels with it
        from backend.reference import png_of, read_image

        image = png_of(read_image(args.image))
    overrides = load_file(args.overrides) if args.overrides else None
    settings = dict(negative=args.negative, method=args.method, seed=args.seed, iterations=args.iters,
                    preset=args.preset, model=args.model, overrides=overrides, watch=args.wait, image=image,
                    image_view=args.image_view, **arrays)
    with _client(args) as client:
        if args.variants is not None:
            return _submit_variants(client, args, settings)
        _follow(client, client.submit(args.prompt or "", args.task, **settings), args)
    return 0


def _submit_variants(client: Client, args: argparse.Namespace, settings: dict[str, Any]) -> int:
    """Print the group's id, then each variant's job id and seed; with --wait, each draft's result as it ends."""
    group = client.submit_variants(args.variants, args.prompt or "", args.task, draft_iterations=args.draft_iters,
                                   **settings)
    print(group.group, flush=True)
    for job, seed in group.jobs:
        print(f"{job} seed {seed}", flush=True)
    if not args.wait:
        return 0
    outcomes = client.wait_all([job for job, _ in group.jobs], on_progress=_print_progress)
    for job, seed in group.jobs:
        outcome = outcomes[job]
        if isinstance(outcome, ServiceError):
            print(f"seed {seed}: {outcome.message} [{outcome.code}]")
        elif args.out:
            out = Path(args.out)
            _write_result(client.fetch(job, glb=True), out.with_name(f"{out.stem}-seed{seed}{out.suffix}"))
        else:
            print(f"seed {seed}: {outcome.glb_path} ({len(outcome.faces):,} faces)")
    print("finish one with: latentforge finish JOB (the job id of its seed)")
    return 0


def cmd_finish(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.finish(args.job, cancel_others=not args.keep_others, watch=args.wait)
        _follow(client, args.job, args)
    return 0


def _follow(client: Client, job: str, args: argparse.Namespace) -> None:
    """Print the job's id; with --wait, follow it to its end and write (--out) or name its result."""
    print(job, flush=True)
    if args.wait:
        result = client.wait(job, on_progress=_print_progress)
        if args.out:
            _write_result(client.fetch(job, glb=True), Path(args.out))
        else:
            print(f"finished: {result.glb_path} ({len(result.faces):,} faces)")


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info: Any = client.status(args.job) if args.job else client.list(state=args.state)
    print(json.dumps(info, indent=2))
    return 0


def _write_result(result: JobResult, out: Path) -> None:
    if out.suffix.lower() != ".glb":
        raise LatentForgeError(f"the output {out.name!r} must end in .glb")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(result.glb or b"")
    out.with_suffix(".png").write_bytes(result.texture_png)
    print(f"wrote {out} and {out.with_suffix('.png')} ({len(result.faces):,} faces)")


def cmd_fetch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _write_result(client.fetch(args.job, glb=True), Path(args.out))
    return 0


def cmd_reexport(args: argparse.Namespace) -> int:
    export: dict[str, Any] = {}
    if args.density_threshold is not None:
        export["density_threshold"] = args.density_threshold
    if not export:
        raise LatentForgeError("nothing to change in the export", "pass --density-threshold VALUE")
    with _client(args) as client:
        client.reexport(args.job, export, watch=args.wait)
        _follow(client, args.job, args)
    return 0


def _run(command: Any) -> Any:
    """Service errors print like the backend's own errors."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ServiceError as exc:
            raise LatentForgeError(f"{exc.message} [{exc.code}]", exc.hint) from None

    return run


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=DEFAULT_ENDPOINT, help=f"the service's address (default {DEFAULT_ENDPOINT})")
    p.add_argument("--server-key", help="the service's public key file (server.key), for CURVE")
    p.add_argument("--client-key", help="this client's secret key file (NAME.key_secret), for CURVE")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the service's subcommands to the `latentforge` parser."""
    s = sub.add_parser("serve", help="run the job service (ZeroMQ) for Blender and `latentforge submit`")
    s.add_argument("--bind", default="tcp://127.0.0.1:5555", help="where clients connect (default loopback only)")
    s.add_argument("--jobs", help="job folder (default: the per-user data folder)")
    s.add_argument("--model", action="append", help="a guidance spec to serve (sd:MODEL, target:MESH.glb or "
                                                   "mixture:FILE.toml); repeat for several; the first is the default")
    s.add_argument("--workers", type=int, help="local worker processes (default: one per GPU, or 1 on the CPU); "
                                               "with --ray, Ray actors (default: one per GPU of the cluster, or "
                                               "one per node when it has none)")
    s.add_argument("--device", type=device_arg, default="auto", help=f"{DEVICES} (default auto); with --ray, cpu "
                                                                     "makes CPU actors even on a cluster with GPUs")
    s.add_argument("--ray", metavar="ADDRESS", help="run jobs on a Ray cluster: auto (the cluster this machine "
                                                    "belongs to), local (start one here) or HOST:PORT; needs the "
                                                    "ray extra (pip install 'latentforge[ray]')")
    s.add_argument("--ray-cpus", type=float, default=1.0, help="with --ray on a cluster without GPUs: CPUs each "
                                                               "actor takes (default 1)")
    s.add_argument("--keys", help="keys folder from `latentforge keys`: CURVE for clients (required off loopback)")
    s.add_argument("--max-queued", type=int, default=8, help="queued jobs allowed per client (default 8)")
    s.add_argument("--max-variants", type=int, default=8, help="variants one submit may ask for (default 8)")
    s.add_argument("--heartbeat-s", type=float, default=1.0, help="worker heartbeat interval (default 1 s)")
    s.add_argument("--hang-s", type=_positive, default=HANG_S,
                   help=f"a job that sends nothing this long is hung: its worker is restarted and the job resumed "
                        f"from its last checkpoint (default {HANG_S:g} s)")
    s.add_argument("--keep-days", type=_non_negative, default=DEFAULT_MAX_AGE_DAYS,
                   help=f"delete ended jobs older than this (default {DEFAULT_MAX_AGE_DAYS:g} days)")
    s.add_argument("--disk-budget-gb", type=_non_negative, default=DEFAULT_MAX_DISK_GB,
                   help="delete the oldest ended jobs while the job folder is over this size "
                        f"(default {DEFAULT_MAX_DISK_GB:g} GiB)")
    s.set_defaults(func=_run(cmd_serve))

    k = sub.add_parser("keys", help="create CURVE keys: the server's pair and allow-listed client pairs")
    k.add_argument("--dir", help="keys folder (default: the per-user config folder)")
    k.add_argument("--client", action="append", help="make a key pair for this client name; repeat for several")
    k.set_defaults(func=_run(cmd_keys))

    m = sub.add_parser("submit", help="submit a job to a running service")
    _client_args(m)
    m.add_argument("--task", choices=("generate", "paint"), default="generate")
    m.add_argument("--prompt")
    m.add_argument("--negative")
    m.add_argument("--method")
    m.add_argument("--seed", type=int)
    m.add_argument("--iters", type=int, help="latent-stage steps")
    m.add_argument("--preset", help="quality preset: draft, standard or high")
    m.add_argument("--model", help="one of the service's models (default: its first)")
    m.add_argument("--overrides", help="a JSON or TOML file of settings")
    m.add_argument("--sketch", help="a blockout mesh that places a generate")
    m.add_argument("--mesh", help="the mesh to paint")
    m.add_argument("--image", help="a reference image (PNG or JPEG), sent as a PNG with its mask as alpha")
    m.add_argument("--image-view", type=view_arg, metavar="front|right|back|left|top|bottom|AZ,EL",
                   help="where the image was seen from, in the asset's frame (default front)")
    m.add_argument("--variants", type=int, metavar="N", help="N drafts with seeds SEED, SEED+1, …, side by side on "
                                                               "the service's workers; finish one with `finish`")
    m.add_argument("--draft-iters", type=int, help="with --variants: latent-stage steps of each draft (default: "
                                                   "the draft preset's, 1500)")
    m.add_argument("--wait", action="store_true", help="follow the job (with --variants: every draft) to its end")
    m.add_argument("--out", help="with --wait: write the result here (.glb, and its .png beside it); with "
                                 "--variants, NAME-seedS.glb for each")
    m.set_defaults(func=_run(cmd_submit))

    t = sub.add_parser("status", help="a job's state, or every job's")
    _client_args(t)
    t.add_argument("job", nargs="?")
    t.add_argument("--state", choices=("queued", "running", "finished", "failed", "cancelled"))
    t.set_defaults(func=_run(cmd_status))

    r = sub.add_parser("reexport", help="export a job whose export failed again, with other export settings, "
                                        "without training again")
    _client_args(r)
    r.add_argument("job")
    r.add_argument("--density-threshold", type=float, help="the iso-level of the surface (the failed job's error "
                                                           "suggests one)")
    r.add_argument("--wait", action="store_true", help="follow the job to its end")
    r.add_argument("--out", help="with --wait: write the result here (.glb, and its .png beside it)")
    r.set_defaults(func=_run(cmd_reexport))

    n = sub.add_parser("finish", help="finish a variant's draft: its job's whole schedule (the quality preset asked "
                                      "for), continued from the draft")
    _client_args(n)
    n.add_argument("job", help="the variant's job id (not its group's)")
    n.add_argument("--keep-others", action="store_true", help="let the group's other variants run on (default: "
                                                               "cancel those that have not ended)")
    n.add_argument("--wait", action="store_true", help="follow the job to its end")
    n.add_argument("--out", help="with --wait: write the result here (.glb, and its .png beside it)")
    n.set_defaults(func=_run(cmd_finish))

    f = sub.add_parser("fetch", help="download a finished job's result")
    _client_args(f)
    f.add_argument("job")
    f.add_argument("--out", required=True, help="output .glb (its texture .png is written beside it)")
    f.set_defaults(func=_run(cmd_fetch))
