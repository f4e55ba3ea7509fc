"""Protocol v1 in-process: encoding, every refusal, PROTOCOL.md, the torch-free client, the job store."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from backend import errors
from backend.catalog import TASKS
from backend.service import checkpoint_wire, protocol, tasks
from backend.service.jobs import JobStore, UnknownJob
from backend.service.protocol import ProtocolError, decode, encode

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "backend" / "service"


def frames(kind: str, fields: dict | None = None, arrays: dict | None = None, blobs: dict | None = None) -> list:
    return [bytes(f) for f in encode(kind, fields, arrays, blobs)]


def refusal(raw: list[bytes], **kw: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as err:
        decode(raw, **kw)
    return err.value


def test_round_trip_of_arrays_and_blobs() -> None:
    vertices = np.arange(12, dtype=">f4").reshape(4, 3)  # big-endian in, little-endian on the wire
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    raw = frames("result", {"job": "a" * 32, "stats": {"faces": 2}},
                 {"vertices": vertices, "faces": faces, "uvs": np.zeros((4, 2), np.float32)}, {"texture": b"\x89PNG"})
    assert json.loads(raw[0])["arrays"][0] == {"name": "vertices", "dtype": "float32", "shape": [4, 3]}
    message = decode(raw, protocol.TRUSTED_LIMITS)
    assert message.type == "result" and message.fields == {"job": "a" * 32, "stats": {"faces": 2}}
    assert np.array_equal(message.arrays["vertices"], vertices) and message.arrays["faces"].dtype == np.int32
    assert message.blobs == {"texture": b"\x89PNG"}


@pytest.mark.parametrize(("raw", "code"), [
    ([b"\xff"], "bad_message"),
    ([b"[1, 2]"], "bad_message"),
    ([b'{"v": 1, "type": "hello", "client": NaN}'], "bad_message"),
    ([b'{"v": 2, "type": "hello", "id": "r1"}'], "unsupported_version"),
    ([b'{"v": true, "type": "hello"}'], "unsupported_version"),
    ([b'{"v": 1, "type": "launch", "id": "r1"}'], "unknown_type"),
    ([b'{"v": 1, "type": "welcome", "id": "r1"}'], "unexpected_type"),
    ([b'{"v": 1, "type": "hello", "id": "r1"}', b"extra"], "bad_frames"),
    ([b'{"v": 1, "type": "hello", "id": "r1", "x": 1}'], "bad_field"),
    ([b'{"v": 1, "type": "status", "id": "r1", "job": "../../etc"}'], "bad_field"),
    ([b'{"v": 1, "type": "status", "id": "r1"}'], "bad_field"),
    ([b'{"v": 1, "type": "list", "id": "r1", "limit": true}'], "bad_field"),
    ([b'{"v": 1, "type": "submit", "id": "r1", "task": "generate", "seed": -1}'], "bad_field"),
    ([b'{"v": 1, "type": "submit", "id": "r1", "task": "generate", "arrays": [{"name": "vertices", '
      b'"dtype": "float32", "shape": [100000000, 3]}]}', b""], "too_large"),
    ([b'{"v": 1, "type": "submit", "id": "r1", "task": "generate", "arrays": [{"name": "vertices", '
      b'"dtype": "object", "shape": [1, 3]}]}', b"\0" * 12], "bad_array"),
    ([b'{"v": 1, "type": "submit", "id": "r1", "task": "generate", "arrays": [{"name": "weights", '
      b'"dtype": "float32", "shape": [1, 3]}]}', b"\0" * 12], "bad_array"),
    ([b'{"v": 1, "type": "hello", "id": "r1", "blobs": [{"name": "preview", "size": 1}]}', b"x"], "bad_frames"),
])
def test_each_kind_of_bad_message_has_its_code_and_keeps_the_request_id(raw: list[bytes], code: str) -> None:
    err = refusal(raw, accept=protocol.CLIENT_REQUESTS)
    assert err.code == code and err.code in protocol.ERROR_CODES
    if b'"id": "r1"' in raw[0]:
        assert err.request_id == "r1"


def test_mesh_rules_of_submits() -> None:
    v, f = np.eye(3, dtype=np.float32), np.array([[0, 1, 2]])
    ok = {"id": "r", "task": "paint", "prompt": "p"}
    assert decode(frames("submit", ok, {"vertices": v, "faces": f, "uvs": np.zeros((3, 2), np.float32)}))
    for arrays in ({"vertices": v}, {"vertices": v, "faces": f + 1}, {"vertices": v * np.nan, "faces": f},
                   {"vertices": v, "faces": f, "uvs": np.zeros((2, 2), np.float32)},
                   {"vertices": v.astype(np.float64), "faces": f}, {"vertices": v[:, :2], "faces": f}):
        assert refusal(frames("submit", ok, arrays)).code == "bad_array"
    assert refusal(frames("submit", {**ok, "task": "generate"}, {"vertices": v})).code == "bad_array"
    assert refusal(frames("submit", {**ok, "prompt": "x" * (protocol.MAX_PROMPT_CHARS + 1)})).code == "bad_field"


def test_limits_and_schemas_agree_with_the_backend() -> None:
    from backend.mesh import MAX_FACES
    from backend.tasks.distill import MAX_PROMPT_CHARS

    assert set(protocol.SCHEMAS) == protocol.MESSAGE_TYPES
    assert protocol.MAX_PROMPT_CHARS == MAX_PROMPT_CHARS and protocol.MAX_FACES == MAX_FACES
    assert set(TASKS) == protocol.TASK_NAMES
    for cls in (errors.ConfigError, errors.InputError, errors.ModelNotFoundError, errors.Cancelled,
                tasks.UnsupportedTask):
        assert cls.code in protocol.ERROR_CODES
    # every code the service sends by name is documented
    source = "\n".join(p.read_text() for p in SERVICE.rglob("*.py"))
    used = {code for pattern in (r'Refused\(\s*"(\w+)"', r'error_fields\(\s*"(\w+)"', r'\bend\(record, "\w+", "(\w+)"')
            for code in re.findall(pattern, source)}
    assert used and used <= set(protocol.ERROR_CODES), used - set(protocol.ERROR_CODES)


def _protocol_md_table(title: str) -> dict[str, str]:
    text = (ROOT / "PROTOCOL.md").read_text(encoding="utf-8")
    section = text.split(f"## {title}\n", 1)[1]
    table = re.search(r"^\|.*?(?=\n[^|])", section, re.M | re.S).group(0)  # the section's first table
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| ([^|]*)\|", table, re.M)}


def test_protocol_md_lists_exactly_the_message_types_and_who_sends_them() -> None:
    table = _protocol_md_table("Message types")
    assert set(table) == protocol.MESSAGE_TYPES
    roles = {"client": protocol.CLIENT_REQUESTS, "service": protocol.SERVER_REPLIES | protocol.BROKER_TO_WORKER,
             "worker": protocol.WORKER_TO_BROKER}
    for kind, senders in table.items():
        assert {s.strip() for s in senders.split(",")} == {r for r, kinds in roles.items() if kind in kinds}, kind


def test_protocol_md_lists_exactly_the_error_codes() -> None:
    assert set(_protocol_md_table("Error codes")) == set(protocol.ERROR_CODES)


BLOCK_TORCH = "import sys; sys.modules['torch'] = None  # any import of torch now fails\n"


def test_protocol_and_client_import_without_torch_or_the_backend(tmp_path: Path) -> None:
    # as the service package, and as the files the add-on ships, copied into another package
    shipped = tmp_path / "addon_pkg"
    protocol = [f"service/protocol/{name}.py" for name in ("__init__", "base", "fields", "arrays", "codec")]
    for name in ("__init__.py", "catalog.py", "service/__init__.py", *protocol, "service/client.py"):
        (shipped / "backend" / name).parent.mkdir(parents=True, exist_ok=True)
        (shipped / "backend" / name).write_text((ROOT / "backend" / name).read_text())
    (shipped / "__init__.py").write_text("")
    script = BLOCK_TORCH + textwrap.dedent("""
        from backend.service import client, protocol
        loaded = sorted(m for m in sys.modules if m.startswith("backend"))
        assert loaded == ["backend", "backend.catalog", "backend.service", "backend.service.client",
                          "backend.service.protocol", "backend.service.protocol.arrays",
                          "backend.service.protocol.base", "backend.service.protocol.codec",
                          "backend.service.protocol.fields"], loaded
        for name in loaded:
            sys.modules[name] = None
        sys.path.insert(0, sys.argv[1])
        from addon_pkg.backend.service.client import Client
        Client("tcp://127.0.0.1:9", timeout_s=0.1).close()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_job_ids_cannot_name_paths_outside_the_store(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    record = store.create({"task": "generate", "prompt": "p"}, {"vertices": np.eye(3, dtype=np.float32)}, "me")
    assert re.fullmatch(r"[0-9a-f]{32}", record.id) and store.folder(record.id).parent == store.root
    assert np.array_equal(store.inputs(record.id)["vertices"], np.eye(3))
    for bad in ("..", "../" + record.id, record.id + "/..", record.id.upper(), "/etc", record.id[:-1] + "/"):
        with pytest.raises(UnknownJob):
            store.folder(bad)
    # a half-created job never appears; an unreadable one is listed as failed with the reason
    (store.root / f".new-{'1' * 32}").mkdir()
    (store.folder("2" * 32)).mkdir()
    records = {r.id: r for r in store.load_all()}
    assert set(records) == {record.id, "2" * 32} and records["2" * 32].state == "failed"
    assert "unreadable" in records["2" * 32].error["message"]


def test_checkpoints_travel_as_json_and_arrays(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), betas=(0.9, 0.99))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(3)
    state = {"stage": 1, "step": 7, "scene": model.state_dict(), "generator": generator.get_state(),
             "optimizer": optimizer.state_dict()}
    skeleton, arrays = checkpoint_wire.flatten(state)
    json.dumps(skeleton, allow_nan=False)
    assert checkpoint_wire.position(skeleton) == {"stage": 1, "step": 7}
    store = JobStore(tmp_path)
    job = store.create({"task": "generate"}, {}, "me").id
    store.save_checkpoint(job, skeleton, arrays)
    back = checkpoint_wire.unflatten(*store.load_checkpoint(job))
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(back["generator"], state["generator"]) and back["step"] == 7
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    fresh.load_state_dict(back["optimizer"])  # loads like the original
    for key, value in state["scene"].items():
        assert torch.equal(back["scene"][key], value)


def test_settings_apply_in_order_preset_fields_overrides() -> None:
    spec = tasks.JobSpec("generate", {"task": "generate", "prompt": "p", "preset": "draft", "iterations": 7})
    config = spec.config()
    assert config.optim.iters == 7 and config.export.texture_size == 512  # the draft preset's
    spec.fields["overrides"] = {"optim": {"iters": 9}}
    assert spec.config().optim.iters == 9
    hifa = tasks.JobSpec("generate", {"task": "generate", "method": "hifa"}).config()
    assert hifa.objective.name == "hifa" and hifa.timesteps.schedule == "sqrt"  # the method's own defaults


def test_the_client_checks_a_submit_before_sending() -> None:
    from backend.service.client import Client, ServiceError

    with Client("tcp://127.0.0.1:9", timeout_s=0.2) as client, pytest.raises(ServiceError) as err:
        client.submit("p", "paint", vertices=np.eye(3), faces=[[0, 1, 5]])
    assert err.value.code == "bad_array"
