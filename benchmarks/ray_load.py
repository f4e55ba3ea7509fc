"""Load benchmark of `latentforge serve --ray` against local workers, on the same tiny jobs, in one run.

Starts a local Ray cluster of `--actors` CPUs (`ray.init`), a service with `--actors` local worker
processes and a service with `--actors` Ray actors of one CPU each. Once every worker has loaded its
model, `--jobs` clients submit one small job each at the same moment and follow it, on one path, then
the other, for `--rounds` turns each (alternating, so that a change in the machine's load falls on both).
For each path it reports:

- throughput: jobs finished per second, from the first submit to the last result;
- submit → first progress: per job, the time until its first progress event reaches the client; the
  first `--actors` jobs find an idle worker, so theirs is the dispatch latency itself;
- the Ray path's overhead as ratios, Ray / local (wall time, and first-progress latency).

With `--fault` it then kills (SIGKILL) the actor running a longer job once the service holds a
checkpoint of it, half-way to the next, and reports what the failure cost: the steps redone (from the
step it resumed at to the last step streamed before the kill) and the seconds until it streamed again.

Prints the numbers and then JSON. Not a test: `python benchmarks/ray_load.py [--actors 2 --jobs 8]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

from service_load import SMALL_JOB, percentiles, start_service

from backend.service.client import Client


def wait_for_workers(log: Path, pattern: str, count: int, timeout_s: float = 600) -> float:
    start = time.monotonic()
    while len(re.findall(pattern, log.read_text(errors="replace"))) < count:
        if time.monotonic() - start > timeout_s:
            raise SystemExit(f"the workers did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return time.monotonic() - start


def follow_jobs(endpoint: str, jobs: int) -> dict:
    """`jobs` clients submit at once and follow their job; wall time, throughput and first-progress latency."""
    submitted: dict[int, float] = {}
    first: dict[int, float] = {}
    done: dict[int, float] = {}
    barrier = threading.Barrier(jobs)

    def one(i: int) -> None:
        with Client(endpoint, timeout_s=60) as client:
            barrier.wait()
            submitted[i] = time.perf_counter()
            job = client.submit(f"load test {i}", overrides=SMALL_JOB, seed=i)

            def progress(message: object) -> None:
                first.setdefault(i, time.perf_counter())

            client.wait(job, timeout_s=1800, on_progress=progress)
            done[i] = time.perf_counter()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(done) < jobs:
        raise SystemExit(f"only {len(done)} of {jobs} jobs finished")
    wall = max(done.values()) - min(submitted.values())
    latency = sorted(first[i] - submitted[i] for i in range(jobs))
    return {"jobs": jobs, "wall_s": round(wall, 2), "jobs_per_s": round(jobs / wall, 3),
            "first_progress_ms": percentiles(latency), "latency_s": latency}


def fault(endpoint: str) -> dict:
    """SIGKILL the actor of a running job after its first checkpoints: the steps and seconds it costs."""
    every = 25
    job_overrides = {**SMALL_JOB, "optim": {"iters": 400}, "loop": {"checkpoint_every": every}}
    with Client(endpoint, timeout_s=60) as client:
        job = client.submit("a job that loses its actor", overrides=job_overrides)
        last_seen = 0
        while True:
            message = client.poll(1.0)
            if message is not None and message.type == "progress" and message.fields["stage"] == "latent":
                last_seen = message.fields["step"]
            saved = client.status(job)["checkpoint"]
            # half-way between two checkpoints: a failure costs up to `every` steps, this one about half
            if saved and saved["step"] >= 2 * every and last_seen >= saved["step"] + every // 2:
                break
        worker = client.status(job)["worker"]
        while (message := client.poll(0.0)) is not None:  # steps streamed up to the kill
            if message.type == "progress" and message.fields["stage"] == "latent":
                last_seen = message.fields["step"]
        saved = client.status(job)["checkpoint"]
        os.kill(int(worker.rsplit(":", 1)[1]), signal.SIGKILL)
        killed = time.perf_counter()
        resumed_at = resumed_s = None

        def progress(message: object) -> None:
            nonlocal resumed_at, resumed_s
            f = message.fields
            if resumed_at is None and f["worker"] != worker and f["stage"] == "latent" and f["step"]:
                resumed_at, resumed_s = f["step"], time.perf_counter() - killed

        client.wait(job, timeout_s=1800, on_progress=progress)
        info = client.status(job)
    return {"checkpoint_every": every, "checkpoint_step": saved["step"], "last_step_streamed": last_seen,
            # it resumed at step `resumed_at`: every step from there to the last one streamed was done twice
            "steps_redone": last_seen - resumed_at + 1 if resumed_at is not None else None,
            "first_step_after": resumed_at,
            "seconds_to_resume": round(resumed_s, 2) if resumed_s is not None else None,
            "attempts": info["attempts"], "finished": info["state"] == "finished"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=2, help="CPUs of the Ray cluster = actors = local workers")
    parser.add_argument("--jobs", type=int, default=8, help="small jobs submitted at once")
    parser.add_argument("--rounds", type=int, default=2, help="turns each path takes (they alternate)")
    parser.add_argument("--fault", action="store_true", help="also kill an actor mid-job and report the cost")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    import ray

    context = ray.init(num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
    address = context.address_info["gcs_address"]
    report: dict = {"actors": args.actors, "jobs": args.jobs, "ray": ray.__version__}
    paths = {"local": (["--device", "cpu"], r"joined \("),
             "ray": (["--ray", address, "--device", "cpu"], r"joined on Ray")}
    with contextlib.ExitStack() as stack:
        stack.callback(ray.shutdown)
        endpoints = {}
        for name, (flags, joined) in paths.items():  # both up at once: idle workers cost next to nothing
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"latentforge-{name}-")))
            process, endpoints[name] = start_service(tmp / "jobs", args.actors, *flags, timeout_s=600)
            stack.callback(process.wait, 60)
            stack.callback(process.terminate)
            report[name] = {"workers_ready_s": round(wait_for_workers(tmp / "service.log", joined, args.actors), 1)}
        # the two paths take turns (local, ray, ray, local, ...) so a change in the machine's load hits both
        rounds: dict[str, list[dict]] = {"local": [], "ray": []}
        for r in range(args.rounds):
            for name in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
                rounds[name].append(follow_jobs(endpoints[name], args.jobs))
        for name, runs in rounds.items():
            wall = sum(run["wall_s"] for run in runs)
            latency = sorted(s for run in runs for s in run["latency_s"])
            idle = sorted(s for run in runs for s in run["latency_s"][: args.actors])
            report[name].update({"jobs": args.jobs * args.rounds, "wall_s": round(wall, 2),
                                 "jobs_per_s": round(args.jobs * args.rounds / wall, 3),
                                 "first_progress_ms": percentiles(latency), "latency_idle_s": idle})
        if args.fault:
            report["node_failure"] = fault(endpoints["ray"])
    local, on_ray = report["local"], report["ray"]
    report["ratio_ray_over_local"] = {
        "wall": round(on_ray["wall_s"] / local["wall_s"], 3),
        "throughput": round(on_ray["jobs_per_s"] / local["jobs_per_s"], 3),
        "first_progress_p50": round(on_ray["first_progress_ms"]["p50"] / local["first_progress_ms"]["p50"], 3),
        "first_progress_idle_worker": round(sum(on_ray["latency_idle_s"]) / sum(local["latency_idle_s"]), 3)}
    for name in ("local", "ray"):
        r = report[name]
        idle = [round(s * 1000, 1) for s in r.pop("latency_idle_s")]
        r["first_progress_idle_worker_ms"] = idle
        print(f"{name:>5}: {r['jobs']} jobs in {r['wall_s']} s = {r['jobs_per_s']} jobs/s; submit→first progress "
              f"p50 {r['first_progress_ms']['p50']} ms (idle worker: {idle} ms); workers ready in "
              f"{r['workers_ready_s']} s")
    print(f"ray / local: {report['ratio_ray_over_local']}")
    if "node_failure" in report:
        f = report["node_failure"]
        print(f"actor killed at step ≥{f['last_step_streamed']} with a checkpoint at {f['checkpoint_step']}: "
              f"{f['steps_redone']} steps redone, streaming again after {f['seconds_to_resume']} s")
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
