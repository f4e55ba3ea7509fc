"""The service's command-line commands: serve, worker, keys, submit, status, fetch."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from backend.errors import LatentForgeError
from backend.service.client import DEFAULT_ENDPOINT, Client, CurveKeys, JobResult, ServiceError

DEFAULT_BROKER = "tcp://127.0.0.1:5556"


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
    from backend.guidance import default_model
    from backend.service.jobs import default_jobs_dir
    from backend.service.server import Service, ServiceConfig

    devices = _devices(args.device)
    workers = args.workers if args.workers is not None else (0 if args.broker else len(devices))
    config = ServiceConfig(
        jobs_dir=Path(args.jobs) if args.jobs else default_jobs_dir(), models=args.model or [f"sd:{default_model()}"],
        bind=args.bind, workers=workers, devices=[devices[i % len(devices)] for i in range(workers)],
        broker_bind=args.broker_bind if args.broker else None, keys_dir=Path(args.keys) if args.keys else None,
        max_queued_per_client=args.max_queued, heartbeat_s=args.heartbeat_s)
    service = Service(config)
    stop = _stop_on_signals()
    try:
        service.start()
        where = f"; remote workers connect to {service.broker_endpoint}" if args.broker else ""
        print(f"latentforge service listening on {service.endpoint} ({'CURVE' if args.keys else 'loopback only'}); "
              f"jobs in {service.store.root}; {workers} local worker(s){where}", flush=True)
        service.serve(stop)
    finally:
        service.close()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from backend.guidance import build_guidance
    from backend.service.worker import Worker

    device = _devices(args.device)[0]
    keys = _keys(args)
    guidances = {spec: build_guidance(spec, device) for spec in args.model}  # loaded once, kept for every job
    stop = _stop_on_signals()
    return Worker(args.connect, guidances, device, keys, args.heartbeat_s, args.parent).run(stop)


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
    with _client(args) as client:
        job = client.submit(args.prompt or "", args.task, negative=args.negative, method=args.method, seed=args.seed,
                            iterations=args.iters, preset=args.preset, model=args.model,
                            overrides=load_file(args.overrides) if args.overrides else None, watch=args.wait,
                            **arrays)
        print(job, flush=True)
        if args.wait:
            result = client.wait(job, on_progress=_print_progress)
            if args.out:
                _write_result(client.fetch(job, glb=True), Path(args.out))
            else:
                print(f"finished: {result.glb_path} ({len(result.faces):,} faces)")
    return 0


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
    s.add_argument("--workers", type=int, help="local worker processes (default: one per GPU, or 1 on the CPU; "
                                               "0 with --broker)")
    s.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    s.add_argument("--broker", action="store_true", help="also accept remote workers (`latentforge worker`)")
    s.add_argument("--broker-bind", default=DEFAULT_BROKER, help=f"where remote workers connect ({DEFAULT_BROKER})")
    s.add_argument("--keys", help="keys folder from `latentforge keys`: CURVE for clients and remote workers "
                                  "(required off loopback)")
    s.add_argument("--max-queued", type=int, default=8, help="queued jobs allowed per client (default 8)")
    s.add_argument("--heartbeat-s", type=float, default=1.0, help="worker heartbeat interval (default 1 s)")
    s.set_defaults(func=_run(cmd_serve))

    w = sub.add_parser("worker", help="a worker for a service started with --broker (one per GPU)")
    w.add_argument("--connect", default=DEFAULT_BROKER, help=f"the service's worker address ({DEFAULT_BROKER})")
    w.add_argument("--model", action="append", required=True, help="a guidance spec to load; repeat for several")
    w.add_argument("--device", default="auto")
    w.add_argument("--server-key", help="the service's public key file, for CURVE")
    w.add_argument("--client-key", help="this worker's secret key file, for CURVE")
    w.add_argument("--heartbeat-s", type=float, default=1.0)
    w.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # set by the service for its local workers
    w.set_defaults(func=_run(cmd_worker))

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
    m.add_argument("--wait", action="store_true", help="follow the job to its end")
    m.add_argument("--out", help="with --wait: write the result here (.glb, and its .png beside it)")
    m.set_defaults(func=_run(cmd_submit))

    t = sub.add_parser("status", help="a job's state, or every job's")
    _client_args(t)
    t.add_argument("job", nargs="?")
    t.add_argument("--state", choices=("queued", "running", "finished", "failed", "cancelled"))
    t.set_defaults(func=_run(cmd_status))

    f = sub.add_parser("fetch", help="download a finished job's result")
    _client_args(f)
    f.add_argument("job")
    f.add_argument("--out", required=True, help="output .glb (its texture .png is written beside it)")
    f.set_defaults(func=_run(cmd_fetch))
