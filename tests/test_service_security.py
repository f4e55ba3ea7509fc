"""Security: no listening off loopback without keys; with CURVE, only allow-listed clients get answers."""

from __future__ import annotations

import time

import pytest
import zmq

from backend.cli import main
from backend.service.client import Client, CurveKeys, ServiceTimeout
from backend.service.security import CLIENTS_DIR, check_bind, is_loopback, make_keys

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("endpoint", "local"), [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.4.5:1", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/x", True), ("inproc://x", True),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://eth0:5555", False),
    ("tcp://192.168.1.2:5555", False), ("tcp://[::]:5555", False), ("tcp://example.com:5555", False),
    ("tcp://127.0.0.1;10.0.0.1:5555", False), ("udp://127.0.0.1:5555", False),
])
def test_loopback_detection(endpoint: str, local: bool) -> None:
    assert is_loopback(endpoint) is local


@pytest.mark.parametrize("flags", [
    ["--bind", "tcp://0.0.0.0:5599"],
    ["--bind", "tcp://*:5599"],
    ["--ray", "local", "--bind", "tcp://0.0.0.0:5598"],  # jobs on Ray: the front door's rule is the same
])
def test_a_reachable_bind_without_keys_is_refused_before_anything_listens(flags, tmp_path, monkeypatch,
                                                                          capsys) -> None:  # noqa: ANN001
    def no_bind(*_: object) -> None:
        raise AssertionError("the service bound a socket")

    monkeypatch.setattr(zmq.Socket, "bind", no_bind)
    argv = ["serve", "--jobs", str(tmp_path / "jobs"), "--model", "target:none.glb", "--workers", "0", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refusing to listen" in err and "latentforge keys" in err
    check_bind("tcp://0.0.0.0:5599", tmp_path)  # with a keys folder it would be allowed


@pytest.fixture(scope="module")
def keys(tmp_path_factory):  # noqa: ANN001, ANN201
    folder = tmp_path_factory.mktemp("keys")
    assert main(["keys", "--dir", str(folder), "--client", "alice"]) == 0
    return folder


@pytest.fixture(scope="module")
def curve_service(start_service, keys):  # noqa: ANN001, ANN201
    return start_service("--keys", str(keys), workers=0)


def client_keys(folder, name: str) -> CurveKeys:  # noqa: ANN001
    return CurveKeys.load(folder / "server.key", folder / CLIENTS_DIR / f"{name}.key_secret")


def test_an_allow_listed_client_is_served(curve_service, keys) -> None:  # noqa: ANN001
    with curve_service.client(keys=client_keys(keys, "alice")) as client:
        assert client.hello()["protocol"] == 1


def test_strangers_get_no_reply(curve_service, keys) -> None:  # noqa: ANN001
    public, secret = zmq.curve_keypair()
    server_public = client_keys(keys, "alice").server_public
    stranger = CurveKeys(server_public, public, secret)
    for who in (stranger, None):  # an unknown key, and no encryption at all
        with Client(curve_service.endpoint, timeout_s=1.0, keys=who) as client, pytest.raises(ServiceTimeout):
            client.hello()
    assert curve_service.process.poll() is None


def test_a_client_added_while_running_is_served(curve_service, keys) -> None:  # noqa: ANN001
    make_keys(keys, ["bob"])
    bob = client_keys(keys, "bob")
    deadline = time.monotonic() + 15
    while True:  # the service re-reads its allow-list every couple of seconds
        try:
            with Client(curve_service.endpoint, timeout_s=1.0, keys=bob) as client:
                assert client.hello()["protocol"] == 1
                return
        except ServiceTimeout:
            assert time.monotonic() < deadline, "bob's key was never accepted"
