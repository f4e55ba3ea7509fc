"""The `latentforge generate` command: end to end on a tiny real SD checkpoint, and its bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from tiny_config import TINY

from backend.cli import main

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "backend" / "examples" / "toadstool" / "target.glb"


def write_config(folder: Path, **extra: object) -> Path:
    path = folder / "tiny.json"
    path.write_text(json.dumps({**TINY, **extra}))
    return path


def check_glb(path: Path) -> trimesh.Trimesh:
    mesh = trimesh.load(path, force="mesh")
    assert len(mesh.faces) > 0
    assert mesh.visual.uv is not None and len(mesh.visual.uv) == len(mesh.vertices)
    assert mesh.visual.material.baseColorTexture is not None
    assert path.with_suffix(".png").is_file()
    return mesh


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=REPO, timeout=600)


def test_cli_generates_a_glb_from_a_diffusers_folder(tiny_sd_dir, tmp_path):
    out = tmp_path / "asset.glb"
    proc = run_cli("generate", "--prompt", "a toadstool", "--model", str(tiny_sd_dir), "--device", "cpu",
                   "--config", str(write_config(tmp_path)), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "latent" in proc.stderr and "rgb_refine" in proc.stderr  # tqdm bars per stage
    check_glb(out)


def test_cli_generates_from_a_single_file_checkpoint(tiny_sd_single_file, tmp_path):
    out = tmp_path / "asset.glb"
    proc = run_cli("generate", "--prompt", "a toadstool", "--guidance", f"sd:{tiny_sd_single_file.checkpoint}",
                   "--device", "cpu", "--config", str(write_config(tmp_path)), "--out", str(out),
                   env={"LATENTFORGE_SD_CONFIG": str(tiny_sd_single_file.config)})
    assert proc.returncode == 0, proc.stderr
    check_glb(out)


def test_same_seed_same_asset(tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.glb"
        assert main(["generate", "--prompt", "x", "--guidance", f"target:{TARGET}", "--device", "cpu",
                     "--seed", "7", "--config", str(write_config(tmp_path)), "--out", str(out)]) == 0
        outs.append(trimesh.load(out, force="mesh"))
    # identical up to float32 rounding in threaded CPU kernels
    assert outs[0].vertices.shape == outs[1].vertices.shape
    assert np.allclose(outs[0].vertices, outs[1].vertices, atol=1e-5)
    tex = [np.asarray(o.visual.material.baseColorTexture, dtype=np.int16) for o in outs]
    assert np.abs(tex[0] - tex[1]).max() <= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/no/such/model/folder"], "/no/such/model/folder"),
        (["--model", "missing-checkpoint.safetensors"], "missing-checkpoint.safetensors"),
        (["--prompt", "   "], "prompt is empty"),
        (["--iters", "0"], "iters must be at least 1"),
        (["--resolution", "30"], "multiple of 8"),
        (["--guidance", "target:{tmp}/notes.txt"], "not a mesh file"),
        (["--guidance", "target:{tmp}/empty.glb"], "empty.glb"),
        (["--config", "{tmp}/nan.json"], "finite"),
        (["--config", "{tmp}/typo.json"], "unknown setting"),
        (["--method", "magic"], "unknown method"),
        (["--guidance", "foo:bar"], "unknown guidance scheme 'foo:'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--sketch", "{tmp}/notes.txt"], "{tmp}/notes.txt"),  # the path as typed, not only its name
        (["--sketch", "{tmp}/nowhere/sketch.glb"], "{tmp}/nowhere/sketch.glb"),
        (["--quality", "ultra"], "invalid choice: 'ultra'"),
        (["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else ["--seed", "x"], ""),
    ],
)
def test_bad_input_is_a_clear_error_without_traceback(args, message, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a mesh")
    (tmp_path / "empty.glb").write_bytes(b"")
    (tmp_path / "nan.json").write_text('{"optim": {"lr": NaN}}')
    (tmp_path / "typo.json").write_text('{"optim": {"itres": 10}}')
    base = {"--prompt": "a toadstool", "--guidance": f"target:{TARGET}", "--out": str(tmp_path / "o.glb")}
    given = [a.format(tmp=tmp_path) for a in args]
    if "--model" in given:
        base.pop("--guidance")
    for flag, value in base.items():
        if flag not in given:
            given += [flag, value]
    try:
        code = main(["generate", "--device", "cpu", *given] if "--device" not in given else ["generate", *given])
    except SystemExit as exc:  # argparse's own errors (a non-number seed) exit 2 with usage
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "o.glb").exists()


def shadowed_torch(folder: Path) -> dict:
    """An environment whose `import torch` fails, as on a machine where loading it is what is slow."""
    (folder / "torch").mkdir()
    (folder / "torch" / "__init__.py").write_text("raise ImportError('torch must not be imported here')\n")
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(REPO)])}


def test_help_and_usage_errors_need_no_torch(tmp_path):
    env = shadowed_torch(tmp_path)
    for args in (["--help"], ["generate", "--help"], ["paint", "--help"], ["serve", "--help"]):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "usage: latentforge" in proc.stdout
    proc = run_cli("generate", "--device", "tpu", "--out", "x.glb", env=env)
    assert proc.returncode == 2 and "unknown device 'tpu'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("serve", "--bind", "tcp://0.0.0.0:5999", env=env)  # public without keys: refused first
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--keys" in proc.stderr


def test_listed_commands_match_their_modules():
    from backend.cli import LAZY_COMMANDS, build_parser

    def helps(argv: list[str]) -> dict[str, str]:
        sub = next(a for a in build_parser(argv)._actions if a.dest == "command")
        return {c.dest: c.help for c in sub._choices_actions}

    for name in LAZY_COMMANDS:
        assert helps([name])[name] == LAZY_COMMANDS[name][1]
    assert list(helps(["generate"])) == list(helps(["bench"])) == list(helps(["serve"]))


def test_cpu_warning_projects_the_time_and_suggests_draft(capsys, tmp_path):
    import torch

    from backend.cli import build_config, warn_cpu_schedule
    from backend.examples import example_config

    cpu = torch.device("cpu")
    args = parse(["generate", "--prompt", "x", "--out", "o.glb"])
    warn_cpu_schedule("generate", build_config("generate", args), args, "sd:", cpu)
    err = capsys.readouterr().err
    assert "warning: on the CPU these settings take roughly" in err and "--quality draft" in err
    args = parse(["generate", "--prompt", "x", "--quality", "draft", "--out", "o.glb"])
    config = build_config("generate", args)
    warn_cpu_schedule("generate", config, args, "sd:", cpu)
    # explicit settings still hear about hours, and which stage they go to, but not about the preset they chose
    err = capsys.readouterr().err
    assert "take roughly" in err and "in the latent stage (1,500 steps at 64²; --iters)" in err
    assert "--quality draft" not in err
    assert (config.optim.iters, config.refine.iters, config.export.texture_size) == (1500, 0, 512)
    # a couple of latent steps leave the default 1,000 mesh steps at 512²
    args = parse(["generate", "--prompt", "x", "--iters", "2", "--refine-iters", "0", "--out", "o.glb"])
    warn_cpu_schedule("generate", build_config("generate", args), args, "target:t.glb", cpu)
    assert "in the mesh stage (1,000 steps at 512²; --mesh-iters, --mesh-resolution)" in capsys.readouterr().err
    # the demo's CPU schedule with its reference mesh ends in minutes: nothing to say
    (tmp_path / "cpu.json").write_text(json.dumps(example_config("cpu")))
    args = parse(["generate", "--prompt", "x", "--config", str(tmp_path / "cpu.json"), "--out", "o.glb"])
    warn_cpu_schedule("generate", build_config("generate", args), args, "target:t.glb", cpu)
    assert capsys.readouterr().err == ""
    args = parse(["paint", "--prompt", "x", "--mesh", "m.glb", "--quality", "draft", "--iters", "20", "--out", "o.glb"])
    paint = build_config("paint", args)
    assert (paint.iters, paint.texture_size) == (20, 512)  # flags beat the preset


def parse(argv: list[str]):  # noqa: ANN201
    from backend.cli import build_parser

    return build_parser(argv).parse_args(argv)
