"""Hostile ids: keys the store cannot take, and command ids reused for other commands.

One client's bad input must fail only that client's command: a stream id or
command id too long for an LMDB key is refused at the edge with ``invalid``
naming the limit, and every good command pipelined with it commits. A
command id already used by a different command is refused, never answered
with the first command's Ack.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from motet.engine import Engine, open_engine
from motet.engine.example import CreateUser, PlaceOrder, UpdateUser
from motet.engine.example import app as example_app
from motet.engine.net.client import open_client
from motet.storage.errors import CommandIdReused
from motet.storage.personal import MAX_SUBJECT_BYTES
from motet.storage.store import MAX_COMMAND_ID_BYTES, MAX_STREAM_BYTES


def create(user_id: str) -> dict[str, Any]:
    return {
        "op": "command",
        "type": "CreateUser",
        "data": {
            "user_id": user_id,
            "name": "N",
            "email": f"{len(user_id)}@example.com",
            "password": "pw",
        },
    }


# The example app's user ids are data subjects (its users' names, emails and
# cities are personal data), so the longest is the longest subject: shorter
# than what "User-" + id alone would allow (MAX_STREAM_BYTES - 5 bytes),
# because "Subject-" + id must be a stream id too.
LONGEST_USER_ID = MAX_SUBJECT_BYTES


async def test_too_long_ids_fail_alone_in_a_pipelined_batch(engine: Engine, server: Any) -> None:
    good = [create(f"good-{i}") for i in range(200)]
    # Around and past every limit: user ids just past the subject limit up to
    # 500 bytes (stream ids of up to 505 bytes) and command ids past 511 bytes.
    bad = [create("x" * n) for n in range(LONGEST_USER_ID + 1, 501)]
    bad += [{**create(f"bad-cid-{n}"), "command_id": "c" * n} for n in (512, 600)]
    fits = [create("y" * n) for n in (LONGEST_USER_ID - 1, LONGEST_USER_ID)]
    fits += [{**create("z-cid"), "command_id": "c" * MAX_COMMAND_ID_BYTES}]
    requests = []
    for i, request in enumerate(good):
        requests.append(("good", request))
        if i % 20 == 0 and bad:
            requests.append(("bad", bad.pop()))
    requests += [("bad", request) for request in bad] + [("good", r) for r in fits]
    replies: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    async with open_client("127.0.0.1", server.port) as client:

        async def one(kind: str, request: dict[str, Any]) -> None:
            replies.append((kind, request, await client.request(request)))

        async with trio.open_nursery() as nursery:
            for kind, request in requests:
                nursery.start_soon(one, kind, request)

        for kind, request, reply in replies:
            if kind == "good":
                assert reply["ok"], (request["data"]["user_id"][:20], reply)
            else:
                assert not reply["ok"]
                assert reply["error"]["code"] == "invalid", reply
                assert "longer than the limit of" in reply["error"]["message"]
        # The longest stream that fits is readable; one byte more is refused
        # by the read op naming the limit, not written and then unreadable.
        longest = "User-" + "y" * LONGEST_USER_ID
        assert len(await client.read_stream(longest)) == 1
        too_long = "User-" + "y" * (MAX_STREAM_BYTES - len("User-") + 1)
        reply = await client.request({"op": "read", "stream": too_long})
        assert reply["error"]["code"] == "invalid"
        assert f"limit of {MAX_STREAM_BYTES} bytes" in reply["error"]["message"]

    committed = {stream for stream, _ in engine.store.streams()}
    assert {f"User-{r['data']['user_id']}" for r in good + fits} <= committed
    assert all(len(s.encode()) <= MAX_STREAM_BYTES for s in committed)


async def test_the_aggregate_id_limit_follows_from_the_name(engine: Engine) -> None:
    longest_id = MAX_STREAM_BYTES - len("User-")
    with pytest.raises(ValueError, match=rf"^User id is {longest_id + 1} bytes.*limit of"):
        await engine.send(
            CreateUser(
                user_id="u" * (longest_id + 1), name="N", email="n@example.com", password="pw"
            )
        )


async def test_a_user_id_past_the_subject_limit_is_refused_naming_it(engine: Engine) -> None:
    with pytest.raises(
        ValueError,
        match=rf"^subject is {LONGEST_USER_ID + 1} bytes.*limit of {MAX_SUBJECT_BYTES} bytes",
    ):
        await engine.send(
            CreateUser(
                user_id="u" * (LONGEST_USER_ID + 1), name="N", email="n@example.com", password="pw"
            )
        )
    # Nothing was written, and the actor still takes commands.
    assert engine.store.stream_version("User-" + "u" * (LONGEST_USER_ID + 1)) == 0


@pytest.fixture(params=["lmdb", "memory", "postgresql"])
async def any_engine(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    path: Any = tmp_path / "data" if request.param == "lmdb" else None
    if request.param == "postgresql":
        from tests.support.postgres import new_schema_url

        path = new_schema_url(request.getfixturevalue("postgres_cluster"))
    async with open_engine(path, example_app, durability="none") as engine:
        yield engine


async def test_a_command_id_reused_for_another_command_is_refused(any_engine: Engine) -> None:
    engine = any_engine
    first = await engine.send(
        CreateUser(user_id="u1", name="A", email="a@example.com", password="pw"), command_id="k1"
    )

    # The same command again: the first Ack, nothing appended.
    again = await engine.send(
        CreateUser(user_id="u1", name="A", email="a@example.com", password="pw"), command_id="k1"
    )
    assert again == first
    # Another command under that id: refused, naming the id and the first command.
    for other in (
        CreateUser(user_id="u2", name="B", email="b@example.com", password="pw"),  # another stream
        CreateUser(user_id="u1", name="A", email="a2@example.com", password="pw"),  # other data
        UpdateUser(user_id="u1", name="C"),  # another type
    ):
        with pytest.raises(CommandIdReused, match=r"'k1' was already used by a CreateUser") as info:
            await engine.send(other, command_id="k1")
        assert "'User-u1'" in str(info.value)
        assert isinstance(info.value, ValueError)
    assert engine.store.stream_version("User-u2") == 0
    assert engine.store.stream_version("User-u1") == 1


async def test_a_reused_command_id_is_refused_while_the_first_is_in_flight(
    engine: Engine,
) -> None:
    await engine.send(CreateUser(user_id="u1", name="A", email="a@example.com", password="pw"))
    outcomes: list[Any] = []

    async def send(command: Any) -> None:
        try:
            outcomes.append(await engine.send(command, command_id="order-1"))
        except Exception as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, PlaceOrder(user_id="u1", order_id="o1", amount=10.0))
        nursery.start_soon(send, PlaceOrder(user_id="u1", order_id="o2", amount=99.0))
    # Answers come in completion order: the refusal is immediate.
    assert sorted(type(o).__name__ for o in outcomes) == ["Ack", "CommandIdReused"]
    assert engine.store.stream_version("User-u1") == 2


async def test_a_reused_command_id_is_refused_over_the_wire(server: Any) -> None:
    async with open_client("127.0.0.1", server.port) as client:
        first = await client.request({**create("w1"), "command_id": "wk"})
        assert first["ok"]
        again = await client.request({**create("w1"), "command_id": "wk"})
        assert again == first
        other = await client.request({**create("w2"), "command_id": "wk"})
        assert other["error"]["code"] == "invalid"
        assert (
            "'wk' was already used by a CreateUser command on stream 'User-w1'"
            in (other["error"]["message"])
        )


async def test_acks_from_before_fingerprints_are_honoured(tmp_path: Any) -> None:
    """An Ack stored without a fingerprint (an older store) answers a retry as before."""
    import msgspec

    from motet.storage.records import Ack

    async with open_engine(tmp_path / "d", example_app) as engine:
        ack = await engine.send(
            CreateUser(user_id="u1", name="A", email="a@example.com", password="pw"),
            command_id="old",
        )
        store = engine.store
        with store._env.begin(write=True) as txn:  # type: ignore[attr-defined]
            txn.put(b"old", msgspec.msgpack.encode(ack), db=store._commands)  # type: ignore[attr-defined]
        assert store.get_ack("old") == Ack("User-u1", 1, ack.position)
        again = await engine.send(
            CreateUser(user_id="u1", name="A", email="a@example.com", password="pw"),
            command_id="old",
        )
        assert again == ack


async def test_a_command_is_fingerprinted_once_however_far_it_goes(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import motet.actors.request as request_module

    digested: list[Any] = []
    real = request_module.fingerprint_of

    def counted(command: Any, command_id: str) -> Any:
        digested.append(command)
        return real(command, command_id)

    monkeypatch.setattr(request_module, "fingerprint_of", counted)
    async with open_engine(tmp_path / "store", example_app) as engine:
        create_u1 = CreateUser(user_id="u1", name="N", email="u1@example.com", password="pw")
        await engine.send(create_u1, command_id="create-u1")
        assert digested == [create_u1]  # checked on arrival, stored with the append
        order = PlaceOrder(user_id="u1", order_id="o1", amount=2.0)
        first = await engine.send(order, command_id="order-o1")
        assert await engine.send(order, command_id="order-o1") == first
        assert digested == [create_u1, order, order]  # the retry: its own, once
        assert engine.store.get_ack_record("order-o1").digest is not None  # type: ignore[attr-defined]
