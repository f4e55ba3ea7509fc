"""How variants use the workers: N variants on W workers against one variant, on local workers and on Ray.

Starts a local Ray cluster of `--workers` CPUs (`ray.init` on loopback), a service with `--workers` local worker
processes and a service with `--workers` Ray actors of one CPU each, every process with one torch thread
(OMP_NUM_THREADS=1). Once every worker has loaded its model and run one warm-up draft, each path in turn
(alternating, so that a change in the machine's load falls on both) times, from the submit to the last draft's
result: one variant, then `--variants` variants. With W workers the ideal ratio is ceil(N / W); the figure to
hold is N = 4 on W = 2 in at most 2.3× one variant's time. Other processes may share the cores, so each
measurement also records the machine's load average (1 min) before and after it, the CPU seconds the
workers used (from /proc: how many of the machine's cores they actually got), and how many drafts ran at
once on average (the drafts' own run times, summed, over the wall time). From those it derives what the
ratio would have been had the workers had their cores to themselves (`ratio_own_cores`: each time scaled by
the cores the workers got over the cores they could use, min(N, W) and 1): a model, printed beside the
measured ratio, never instead of it.

Prints the numbers and then JSON. Not a test: `python benchmarks/variants_parallel.py [--out FILE.json]`
(the measured runs: `benchmarks/variants-parallel-cpu.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from ray_load import wait_for_workers
from service_load import SMALL_JOB, start_service

from backend.service.client import Client, ServiceError

# a draft of 400 steps (of a job twice as long) is a few seconds of one CPU thread, where the service's own costs
# (dispatch, storing checkpoints and results) are a fraction of a second; a GPU draft is minutes
JOB = {**SMALL_JOB, "loop": {"checkpoint_every": 100, "preview_every_s": 1.0}}
DRAFT = 400


def load() -> float:
    return round(os.getloadavg()[0], 2)


def with_children(pids: list[int]) -> list[int]:
    """The processes and all their descendants (a worker runs its jobs in a child, its job process)."""
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes and their descendants have used so far (Linux)."""
    total = 0
    for pid in with_children(pids):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def worker_pids(endpoint: str, count: int) -> list[int]:
    """The pids of the workers that ran the last `count` jobs (a worker's name is host:pid)."""
    with Client(endpoint, timeout_s=60) as client:
        entries = client.list(limit=count)
    names = {v["worker"] for e in entries for v in e.get("variants", [e])}
    return sorted({int(name.rsplit(":", 1)[1]) for name in names if name})


def time_group(endpoint: str, count: int, seed: int, pids: list[int] | None = None, draft: int = DRAFT) -> dict:
    """Seconds from submitting `count` variants to the last draft's result, with the load around it and the CPU
    seconds the workers `pids` used meanwhile."""
    with Client(endpoint, timeout_s=60) as client:
        before, cpu = load(), cpu_seconds(pids or [])
        start = time.perf_counter()
        group = client.submit_variants(count, "a toadstool", overrides={**JOB, "optim": {"iters": 2 * draft}},
                                       draft_iterations=draft, seed=seed)
        ended = client.wait_all([job for job, _ in group.jobs], timeout_s=3600)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(pids or []) - cpu
        failed = [e for e in ended.values() if isinstance(e, ServiceError)]
        if failed:
            raise SystemExit(f"a draft failed: {failed[0]}")
        workers = sorted({client.status(job)["worker"] for job, _ in group.jobs})
    runs = sum(e.stats["seconds"] for e in ended.values())
    return {"variants": count, "seconds": round(seconds, 2), "workers_used": len(workers),
            "load_before": before, "load_after": load(), "worker_cores": round(cpu / seconds, 2),
            "drafts_at_once": round(runs / seconds, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the Ray cluster = actors = local workers")
    parser.add_argument("--variants", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each path (they alternate)")
    parser.add_argument("--draft-steps", type=int, default=DRAFT, help="first-stage steps of each draft")
    parser.add_argument("--out", help="also write the JSON here: a list of runs, this one added to those it holds")
    args = parser.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # before Ray starts: its actors inherit it

    import ray

    context = ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    address = context.address_info["gcs_address"]
    report: dict = {"workers": args.workers, "variants": args.variants, "draft_steps": args.draft_steps,
                    "cpus": os.cpu_count(), "torch_threads_per_worker": 1, "ray": ray.__version__}
    paths = {"local": (["--device", "cpu"], r"joined \("),
             "ray": (["--ray", address, "--device", "cpu"], r"joined on Ray")}
    rounds: dict[str, list[dict]] = {name: [] for name in paths}
    with contextlib.ExitStack() as stack:
        stack.callback(ray.shutdown)
        endpoints = {}
        for name, (flags, joined) in paths.items():
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"latentforge-{name}-")))
            process, endpoints[name] = start_service(tmp / "jobs", args.workers, *flags, timeout_s=600)
            stack.callback(process.wait, 60)
            stack.callback(process.terminate)
            wait_for_workers(tmp / "service.log", joined, args.workers)
            # warm-up: one draft on every worker
            time_group(endpoints[name], args.workers, seed=100, draft=args.draft_steps)
        pids = {name: worker_pids(endpoint, 1) for name, endpoint in endpoints.items()}
        for r in range(args.rounds):
            for name in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
                one = time_group(endpoints[name], 1, r, pids[name], args.draft_steps)
                many = time_group(endpoints[name], args.variants, r, pids[name], args.draft_steps)
                own = (many["seconds"] * many["worker_cores"] / min(args.variants, args.workers)) / (
                    one["seconds"] * one["worker_cores"])
                rounds[name].append({"one": one, "many": many, "ratio": round(many["seconds"] / one["seconds"], 3),
                                     "ratio_own_cores": round(own, 3)})
    for name, runs in rounds.items():
        ratios = [run["ratio"] for run in runs]
        report[name] = {"rounds": runs, "ratio_median": round(statistics.median(ratios), 3), "ratio_max": max(ratios)}
        for run in runs:
            one, many = run["one"], run["many"]
            print(f"{name:>5}: 1 variant {one['seconds']} s (load {one['load_before']}→{one['load_after']}, workers "
                  f"got {one['worker_cores']} cores), {args.variants} variants {many['seconds']} s on "
                  f"{many['workers_used']} workers (load {many['load_before']}→{many['load_after']}, workers got "
                  f"{many['worker_cores']} cores, {many['drafts_at_once']} drafts at once): {run['ratio']}× "
                  f"measured, {run['ratio_own_cores']}× on cores of their own")
    print(json.dumps(report, indent=2))
    if args.out:  # the machine's load changes between runs: each run is kept
        out = Path(args.out)
        runs = json.loads(out.read_text()) if out.is_file() else []
        out.write_text(json.dumps([*runs, report], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
