"""Load benchmark of the job service: many clients asking for status while jobs queue.

Starts `latentforge serve` on a free loopback port with a throwaway job folder, has `--jobs` clients
submit one small job each (they queue behind one worker), then `--clients` clients send `--requests`
status requests each, all at once, and prints the latency percentiles as JSON. Not a test: run it as
`python benchmarks/service_load.py`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from backend.examples import example_target
from backend.service.client import Client, ServiceError

# a job of a few seconds on a CPU: it is the queue that is measured, not the optimisation
SMALL_JOB = {"resolution": 8, "optim": {"iters": 60}, "refine": {"iters": 0},
             "nerf": {"levels": 2, "log2_table_size": 10, "max_resolution": 32, "hidden_dim": 16},
             "render": {"samples": 8}, "export": {"grid_resolution": 32, "texture_size": 64, "max_faces": 2000}}


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000
    if not len(ms):
        return {"n": 0}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"n": len(ms), "p50": round(p50, 2), "p90": round(p90, 2), "p99": round(p99, 2),
            "max": round(float(ms.max()), 2), "mean": round(float(ms.mean()), 2)}


def start_service(jobs: Path, workers: int, *extra: str, timeout_s: float = 120) -> tuple[subprocess.Popen, str]:
    """`latentforge serve` on a free loopback port (`extra`: more serve flags); its log is beside `jobs`."""
    log = open(jobs.parent / "service.log", "w+")  # noqa: SIM115 - read back below, closed with the folder
    process = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--bind", "tcp://127.0.0.1:*",
                                "--jobs", str(jobs), "--model", f"target:{example_target()}",
                                "--workers", str(workers), "--max-queued", "100", *extra],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        match = re.search(r"listening on (\S+)", (jobs.parent / "service.log").read_text())
        if match:
            return process, match.group(1)
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"the service did not start:\n{(jobs.parent / 'service.log').read_text()}")


def in_threads(count: int, work) -> float:  # noqa: ANN001 - work(index)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def run(endpoint: str, clients: int, requests: int, jobs: int, wait: bool) -> dict:
    submit_s: list[float] = []
    status_s: list[float] = []
    errors: list[str] = []
    ids: list[str] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        with Client(endpoint, timeout_s=30) as client:
            t = time.perf_counter()
            try:
                job = client.submit(f"load test {i}", overrides=SMALL_JOB, seed=i, watch=False)
            except ServiceError as exc:
                with lock:
                    errors.append(f"submit: {exc.code}")
                return
            with lock:
                submit_s.append(time.perf_counter() - t)
                ids.append(job)

    def status(i: int) -> None:
        with Client(endpoint, timeout_s=30) as client:
            for r in range(requests):
                t = time.perf_counter()
                try:
                    client.status(ids[(i + r) % len(ids)])
                except ServiceError as exc:
                    with lock:
                        errors.append(f"status: {exc.code}")
                    continue
                with lock:
                    status_s.append(time.perf_counter() - t)

    submit_wall = in_threads(jobs, submit)
    with Client(endpoint) as client:
        queue = client.hello()["queue"]
    status_wall = in_threads(clients, status)
    report = {"clients": clients, "requests_per_client": requests, "jobs": jobs, "queued_after_submits": queue,
              "submit_ms": percentiles(submit_s), "status_ms": percentiles(status_s),
              "status_per_s": round(len(status_s) / status_wall, 1), "submit_wall_s": round(submit_wall, 3),
              "errors": errors}
    with Client(endpoint, timeout_s=30) as client:
        if wait:
            start = time.perf_counter()
            while any(client.status(j)["state"] in ("queued", "running") for j in ids):
                time.sleep(0.5)
            report["jobs_wall_s"] = round(time.perf_counter() - start, 1)
            report["jobs_finished"] = sum(client.status(j)["state"] == "finished" for j in ids)
        else:
            for job in ids:
                client.cancel(job)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=5, help="status requests per client")
    parser.add_argument("--jobs", type=int, default=10, help="small jobs queued before the status load")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--wait", action="store_true", help="also wait for every job and time the queue")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="latentforge-load-") as tmp:
        process, endpoint = start_service(Path(tmp) / "jobs", args.workers)
        try:
            report = run(endpoint, args.clients, args.requests, args.jobs, args.wait)
        finally:
            process.terminate()
            process.wait(30)
    print(json.dumps(report, indent=2))
    return 0 if not report["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
