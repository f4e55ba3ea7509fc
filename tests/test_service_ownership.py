"""Jobs belong to their submitter: two CURVE keys cannot see or touch each other's jobs, queue limits are
per key, a revoked key is cut off within seconds, and the allow-list survives files vanishing under it."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import zmq

from backend.cli import main
from backend.service.client import Client, CurveKeys, ServiceError, ServiceTimeout
from backend.service.security import ALLOWED_DIR, CLIENTS_DIR

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):  # noqa: ANN001, ANN201
    folder = tmp_path_factory.mktemp("keys")
    assert main(["keys", "--dir", str(folder), "--client", "alice", "--client", "bob", "--client", "carol"]) == 0
    return folder


@pytest.fixture(scope="module")
def service(start_service, keys):  # noqa: ANN001, ANN201
    return start_service("--keys", str(keys), "--max-queued", "2", workers=0)


def connect(service, keys, name: str, timeout_s: float = 5.0) -> Client:  # noqa: ANN001
    who = CurveKeys.load(keys / "server.key", keys / CLIENTS_DIR / f"{name}.key_secret")
    return Client(service.endpoint, timeout_s=timeout_s, keys=who)


def code_of(call) -> str:  # noqa: ANN001
    with pytest.raises(ServiceError) as err:
        call()
    return err.value.code


def test_two_keys_neither_see_nor_touch_each_others_jobs(service, keys) -> None:  # noqa: ANN001
    with connect(service, keys, "alice") as alice, connect(service, keys, "bob") as bob:
        mine = alice.submit("alice's teapot")
        theirs = bob.submit("bob's kettle")
        assert {j["job"] for j in alice.list()} == {mine}
        assert {j["job"] for j in bob.list()} == {theirs}
        for call in (lambda: bob.status(mine), lambda: bob.cancel(mine), lambda: bob.fetch(mine)):
            assert code_of(call) == "unknown_job"
        assert alice.status(mine)["state"] == "queued" and "prompt" in alice.status(mine)
        assert alice.cancel(mine)["state"] == "cancelled" and bob.status(theirs)["state"] == "queued"
        assert bob.cancel(theirs)["state"] == "cancelled"


def test_the_queue_limit_is_per_key_not_per_connection(service, keys) -> None:  # noqa: ANN001
    with connect(service, keys, "alice") as alice:
        first, second = alice.submit("one"), alice.submit("two")
        assert code_of(lambda: alice.submit("three")) == "queue_full"
    with connect(service, keys, "alice") as again:  # a new connection is the same client
        assert code_of(lambda: again.submit("three")) == "queue_full"
        with connect(service, keys, "bob") as bob:  # another key has its own allowance
            bob.cancel(bob.submit("bob's own"))
        again.cancel(first)
        again.cancel(again.submit("three"))
        again.cancel(second)


def test_a_revoked_key_is_cut_off_within_seconds(service, keys) -> None:  # noqa: ANN001
    carol = connect(service, keys, "carol", timeout_s=1.0)
    job = carol.submit("carol's lamp", watch=True)
    (keys / ALLOWED_DIR / "carol.key").unlink()
    deadline = time.monotonic() + 10
    while True:  # the open session stops being answered once the allow-list is re-read
        try:
            carol.hello()
        except ServiceTimeout:
            break
        assert time.monotonic() < deadline, "a revoked key was still answered after 10 s"
        time.sleep(0.2)
    with pytest.raises(ServiceTimeout):  # nor does a fresh connection with that key get anywhere
        connect(service, keys, "carol", timeout_s=1.0).hello()
    carol.close()
    assert "left the allow-list" in service.log()
    with connect(service, keys, "alice") as alice:
        assert alice.hello()["protocol"] == 1 and job not in {j["job"] for j in alice.list()}


def test_the_allow_list_changing_under_the_service_keeps_the_last_good_keys(service, keys) -> None:  # noqa: ANN001
    allowed = keys / ALLOWED_DIR
    stop = threading.Event()

    def churn() -> None:  # key files and the whole folder appear and vanish while the service reads them
        i = 0
        while not stop.is_set():
            public, _ = zmq.curve_keypair()
            path = allowed / f"tmp{i}.key"
            path.write_text(f'curve\n    public-key = "{public.decode()}"\n')
            path.unlink()
            (allowed / f"half{i}.key").write_text("curve\n    public-k")
            (allowed / f"half{i}.key").unlink()
            i += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        time.sleep(3)
    finally:
        stop.set()
        thread.join()
    moved = keys / "moved-away"
    shutil.move(allowed, moved)  # a missing folder: the last good set stays
    try:
        time.sleep(3)
        assert "keeping the last good set" in service.log()
        with connect(service, keys, "alice") as alice:
            assert alice.hello()["protocol"] == 1
    finally:
        shutil.move(moved, allowed)
    assert service.process.poll() is None and "Traceback" not in service.log(), service.log()


def test_a_group_of_variants_is_its_owners_alone_and_counts_against_their_queue(service, keys) -> None:  # noqa: ANN001
    with connect(service, keys, "alice") as alice, connect(service, keys, "bob") as bob:
        assert alice.hello()["limits"]["max_variants"] == 8
        over = {9: ("bad_config", "over this service's limit of 8"), 3: ("queue_full", "room for 2 more")}
        for count, (code, words) in over.items():  # nothing is stored: the refusal comes before any job exists
            with pytest.raises(ServiceError) as err:
                alice.submit_variants(count, "alice's teapot")
            assert err.value.code == code and words in err.value.message, err.value.message
        group = alice.submit_variants(2, "alice's teapot", seed=5)
        (first, _), (second, _) = group.jobs
        assert [seed for _, seed in group.jobs] == [5, 6]
        *earlier, entry = alice.list()  # one entry: the group, with its variants
        assert entry["job"] == group.group and entry["state"] == "queued"
        assert [v["job"] for v in entry["variants"]] == [first, second]
        assert not {first, second} & {e["job"] for e in earlier}
        assert code_of(lambda: alice.submit("one more")) == "queue_full"  # the two drafts fill alice's queue
        assert group.group not in {e["job"] for e in bob.list()}
        for call in (lambda: bob.status(group.group), lambda: bob.cancel(group.group), lambda: bob.finish(first),
                     lambda: bob.finish(group.group), lambda: bob.status(first)):
            assert code_of(call) == "unknown_job"
        # a draft that has not started yet, finished: it runs its whole schedule from the start; the other goes
        assert alice.finish(first)["draft"] is None
        assert alice.status(second)["state"] == "cancelled" and alice.status(first)["state"] == "queued"
        assert alice.cancel(group.group)["state"] == "cancelled"
        assert code_of(lambda: alice.finish(second)) == "not_finishable"
