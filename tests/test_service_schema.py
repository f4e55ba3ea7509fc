"""The one schema of settings, in-process: its table matches the configs, presets fit under the ceilings,
and the wire refuses text that is not Unicode, versions that are not integers, and oversize frames with
the request's id."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.catalog import PRESETS
from backend.cli import main
from backend.errors import ConfigError
from backend.service import protocol, schema, tasks
from backend.service.protocol import ProtocolError, decode
from backend.tasks.distill import MAX_SEED
from backend.tasks.generate import GenerateConfig
from backend.tasks.paint import PaintConfig

CONFIGS = (GenerateConfig, PaintConfig)


def test_every_ceiling_names_a_setting_and_every_scaling_setting_has_one() -> None:
    known = {path: s for config in CONFIGS for path, s in schema.settings(config).items()}
    assert set(schema.CEILINGS) <= set(known), set(schema.CEILINGS) - set(known)
    for path, setting in known.items():
        if setting.type is int and schema.SCALING_NAME.search(setting.leaf):
            assert setting.ceiling is not None and setting.ceiling >= setting.default, path
    assert [p for p, s in known.items() if s.forbidden] == ["depth.model"]
    for task, config in (("generate", GenerateConfig), ("paint", PaintConfig)):  # each shorthand is a setting
        assert set(tasks.submit_settings(task).values()) <= set(schema.settings(config)), task
    assert protocol.MAX_SEED == MAX_SEED == 2**63 - 1


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_fits_under_the_ceilings(preset: str) -> None:
    tasks.check_spec(tasks.JobSpec.from_submit({"task": "generate", "prompt": "p", "preset": preset}, {}))


def test_the_service_applies_paint_presets_as_the_command_line_does() -> None:
    def paint(**fields: object) -> object:
        return tasks.JobSpec("paint", {"task": "paint", "prompt": "p", **fields}).config()

    draft = paint(preset="draft")
    assert (draft.iters, draft.texture_size) == (1500, 512)  # the same pin as test_cli's
    assert (paint(preset="draft", iterations=20).iters, paint(preset="draft", iterations=20).texture_size) == (20, 512)
    high = paint(preset="high", overrides={"texture_size": 1024})
    assert (high.iters, high.texture_size) == (10_000, 1024)  # the submit's own settings beat the preset


def test_a_ceiling_refusal_names_the_submit_field_it_came_from() -> None:
    spec = tasks.JobSpec.from_submit({"task": "paint", "prompt": "p", "iterations": 10**7},
                                     {"vertices": np.eye(3, dtype=np.float32), "faces": np.array([[0, 1, 2]])})
    with pytest.raises(ConfigError, match=r"iters \(the submit's `iterations`\) is 10,000,000"):
        tasks.check_spec(spec)


def test_the_command_line_applies_the_same_seed_and_negative_limits(tmp_path, capsys) -> None:  # noqa: ANN001
    for flags, words in ((["--seed", str(2**63)], "seed must be in [0, 2^63 - 1]"),
                         (["--negative", "x" * 1001], "negative prompt is 1001 characters")):
        argv = ["generate", "--prompt", "a cube", "--guidance", "target:none.glb", "--out", str(tmp_path / "a.glb")]
        assert main([*argv, *flags]) == 2
        assert words in capsys.readouterr().err


@pytest.mark.parametrize("header", [
    '{"v":1,"type":"hello","id":"r1","client":"\\ud800"}',
    '{"v":1,"type":"hello","id":"r1","\\udfff":1}',
    '{"v":1,"type":"submit","id":"r1","task":"generate","overrides":{"a":[{"\\ud83d":1}]}}',
])
def test_text_that_is_not_unicode_is_refused_anywhere_in_a_header(header: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode([header.encode()])
    assert err.value.code == "bad_message" and "Unicode" in err.value.message and err.value.request_id == "r1"
    assert protocol.printable("a\ud800b") == "a\ufffdb" and protocol.printable("ok") == "ok"
    assert decode([b'{"v":1,"type":"hello","client":"\\ud83d\\ude00"}']).fields["client"] == "😀"


@pytest.mark.parametrize("version", ["1.0", "true", '"1"', "2"])
def test_v_must_be_the_integer_one(version: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode([f'{{"v":{version},"type":"hello","id":"r1"}}'.encode()])
    assert err.value.code == "unsupported_version" and err.value.request_id == "r1"


def test_too_large_carries_the_id_when_the_header_parses() -> None:
    small = protocol.Limits(max_message_bytes=64, max_header_bytes=200, max_frames=1, max_array_bytes=32)
    head = {"v": 1, "type": "submit", "id": "r9", "task": "generate"}
    for frames in ([json.dumps(head).encode(), b"x" * 100], [json.dumps(head).encode(), b"", b""]):
        with pytest.raises(ProtocolError) as err:
            decode(frames, small)
        assert err.value.code == "too_large" and err.value.request_id == "r9"
    with pytest.raises(ProtocolError) as err:  # a header over its own limit cannot be read for an id
        decode([json.dumps({**head, "prompt": "x" * 300}).encode()], small)
    assert err.value.code == "too_large" and err.value.request_id is None
