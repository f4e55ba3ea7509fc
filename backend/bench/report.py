"""The bench's JSON documents as readable tables."""

from __future__ import annotations

from backend.bench.field import field_report
from backend.bench.steps import PARTS


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)

def report(doc: dict) -> str:
    """The run as two readable tables: the summary and where each step's time goes."""
    dev = doc["device"]
    lines = [f"latentforge bench on {dev['name']} ({dev['type']}), torch {dev['torch']}, diffusers {dev['diffusers']}, "
             f"{doc['model']['source']} in {doc['model']['dtype']}"]
    if doc["note"]:
        lines.append(f"{doc['note']}")
    head = f"{'task':<22}{'ms/step':>9}{'floor':>8}{'ratio':>7}{'steps/s':>9}{'peak GB':>9}{'refine ms':>11}" \
           f"{'export s':>10}{'job s':>9}"
    lines += ["", head, "-" * len(head)]
    for name, r in doc["tasks"].items():
        refine = r["refine"]["ms_per_step"] if r["refine"] else None
        lines.append(f"{name:<22}{r['ms_per_step']:>9.1f}{r['floor_ms']:>8.1f}{r['ratio']:>7.2f}{r['steps_per_s']:>9.2f}"
                     f"{fmt(r['peak_memory_gb'], '.2f'):>9}{fmt(refine):>11}{fmt(r['export_s']):>10}"
                     f"{fmt(r['job']['total_s'], '.0f'):>9}")
    head = f"{'ms per part':<22}" + "".join(f"{p:>13}" for p in PARTS)
    lines += ["", head, "-" * len(head)]
    for name, r in doc["tasks"].items():
        lines.append(f"{name:<22}" + "".join(f"{r['parts_ms'][p]:>13.2f}" for p in PARTS))
    floors = ", ".join(f"{f['ms']:.2f} ms ({f['method']}, batch {f['batch']}, {f['latent']}²)"
                       for f in doc["unet_floor"])
    lines += field_report(doc)
    for name, extra in (doc.get("extra_over_sds") or {}).items():
        parts = ", ".join(f"{p} {ms:+.1f}" for p, ms in extra["extra_ms"].items() if abs(ms) >= 0.05) or "nothing"
        calls = doc["tasks"][name]["unet_calls_per_step"] - doc["tasks"]["generate-sds"]["unet_calls_per_step"]
        parts += " ms" + (f" ({calls:+.0f} U-Net calls)" if calls else "")
        count = extra["objective_parameters"]
        trained = f", training {count:,} more parameters" if count else ""
        sds_ms = doc["tasks"]["generate-sds"]["ms_per_step"]
        lines.append(f"{name} = generate-sds {sds_ms:.1f} ms + {parts} = {extra['step_ms']:.1f} ms, "
                     f"{extra['ratio_to_sds']:.2f}× SDS{trained}")
    lines += ["", f"U-Net floor per call: {floors}"]
    missing = {m for r in doc["tasks"].values() for m in r["job"]["missing"]}
    if missing:
        lines.append(f"job time not projected where not measured: {', '.join(sorted(missing))}")
    return "\n".join(lines)

def export_breakdown_report(doc: dict) -> str:
    cases = doc["export"]
    steps = list(next(iter(cases.values()))["steps_s"])
    head = f"{'export s':<22}" + "".join(f"{kind:>14}" for kind in cases)
    lines = [f"export breakdown on {doc['device']['name']} ({doc['device']['type']})", "", head, "-" * len(head)]
    for step in steps:
        lines.append(f"{step:<22}" + "".join(f"{c['steps_s'].get(step, 0.0):>14.2f}" for c in cases.values()))
    rows = [("total", "total_s", ".2f"), ("CPU seconds", "cpu_s", ".1f"), ("peak RSS GB", "peak_rss_gb", ".2f"),
            ("density points", "density_points", ","), ("dense grid points", "dense_grid_points", ","),
            ("faces", "faces", ","), ("UV charts", "charts", ",")]
    for label, key, spec in rows:
        lines.append(f"{label:<22}" + "".join(f"{format(c[key], spec):>14}" for c in cases.values()))
    if any(c["peak_gpu_gb"] is not None for c in cases.values()):
        lines.append(f"{'peak GPU GB':<22}" + "".join(f"{fmt(c['peak_gpu_gb'], '.2f'):>14}" for c in cases.values()))
    return "\n".join(lines)
