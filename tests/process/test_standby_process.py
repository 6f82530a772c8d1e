"""``motet serve`` on a PostgreSQL primary with a synchronous standby, real
processes and sockets: with the standby stopped a command is answered
``unavailable`` naming the standby within the store's commit timeout, while
the server answers ping and status, and so is its retry; once the standby
is back, the refused command retried under its command id and new ones are
acknowledged, and the log holds every acknowledged event exactly once.
SIGTERM ends a server whose commit waits for the standby."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing
from typing import Any

import pytest
import trio

from motet.engine import Unavailable
from motet.engine.net.client import Client, open_client
from motet.storage.errors import ConnectionLost
from motet.storage.postgres_store import DEFAULT_COMMIT_TIMEOUT
from motet.storage.records import Ack
from tests.support.commands import create_user, place_order
from tests.support.postgres import StandbyPair, new_schema_url

COMMIT_TIMEOUT = 2.0
"""The first test's ``--commit-timeout`` (the store's default is 10 s)."""

pytestmark = pytest.mark.process


@pytest.fixture
def pair(postgres_standby_pair: StandbyPair) -> Iterator[StandbyPair]:
    postgres_standby_pair.wait_synchronous()
    yield postgres_standby_pair
    postgres_standby_pair.restore()


async def logged(client: Client, head: int) -> list[Any]:
    """Every event of the log up to ``head``, as the server hands them out."""
    events: list[Any] = []
    with trio.fail_after(10):
        async with aclosing(client.subscribe(0)) as stream:  # type: ignore[type-var]
            async for event in stream:
                events.append(event)
                if event.position == head:
                    break
    return events


async def test_a_stopped_standby_makes_commands_unavailable_and_nothing_acknowledged_is_lost(
    motet_server: Any, pair: StandbyPair
) -> None:
    url = new_schema_url(pair.primary)
    server = motet_server(
        "--store", url, "--no-metrics", "--commit-timeout", str(COMMIT_TIMEOUT), ready_timeout=60.0
    )
    acks: dict[str, Ack] = {}
    async with open_client(port=server.port) as client:
        acks["create"] = await client.send(create_user("ann"), command_id="create")
        acks["o1"] = await client.send(place_order("ann", "o1"), command_id="o1")
        await trio.to_thread.run_sync(pair.stop_standby)

        refused: list[tuple[BaseException, float]] = []

        async def order() -> None:
            started = trio.current_time()
            try:
                await client.send(place_order("ann", "o2"), command_id="o2")
            except Unavailable as exc:
                refused.append((exc, trio.current_time() - started))

        with trio.fail_after(COMMIT_TIMEOUT + 20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(order)
                await trio.sleep(0.5)
                # While the commit waits for the standby, the server answers.
                assert await client.ping() >= 0
                status = await client.status()
                assert status.head_position >= acks["o1"].position

        ((error, seconds),) = refused
        assert "not confirmed by the synchronous standby" in str(error)
        # --commit-timeout, not the store's default of 10 s.
        assert COMMIT_TIMEOUT <= seconds < COMMIT_TIMEOUT + 5
        assert server.process.poll() is None
        # Retried while the standby is still down: its Ack is in the index,
        # but from a commit the standby never confirmed, so still refused.
        with trio.fail_after(COMMIT_TIMEOUT + 20):
            with pytest.raises(Unavailable, match=r"not confirmed by the synchronous standby"):
                await client.send(place_order("ann", "o2"), command_id="o2")

        await trio.to_thread.run_sync(pair.start_standby)
        # The refused command, retried: committed once on the primary, now
        # acknowledged with that commit's Ack. Then new commands as before.
        acks["o2"] = await client.send(place_order("ann", "o2"), command_id="o2")
        acks["o3"] = await client.send(place_order("ann", "o3"), command_id="o3")

        events = await logged(client, acks["o3"].position)
    assert [e.position for e in events] == [1, 2, 3, 4]
    assert sorted(a.position for a in acks.values()) == [1, 2, 3, 4]
    by_position = {e.position: e for e in events}
    for command_id, ack in acks.items():
        event = by_position[ack.position]
        assert (event.stream, event.version, event.metadata.command_id) == (
            ack.stream,
            ack.version,
            command_id,
        )
    assert server.terminate() == 0, server.log()


async def test_motet_serve_stops_cleanly_while_a_commit_waits_for_a_stopped_standby(
    motet_server: Any, pair: StandbyPair
) -> None:
    server = motet_server(
        "--store", new_schema_url(pair.primary), "--no-metrics", ready_timeout=60.0
    )
    async with open_client(port=server.port) as client:
        await client.send(create_user("ann"), command_id="create")
        await trio.to_thread.run_sync(pair.stop_standby)
        async with trio.open_nursery() as nursery:

            async def order() -> None:
                with pytest.raises((Unavailable, ConnectionLost)):
                    await client.send(place_order("ann", "o1"), command_id="o1")

            nursery.start_soon(order)
            await trio.sleep(0.5)
            # The commit waits for the standby; SIGTERM still ends the server,
            # within the commit timeout and the shutdown's own.
            status = await trio.to_thread.run_sync(
                lambda: server.terminate(timeout=DEFAULT_COMMIT_TIMEOUT + 20)
            )
    assert status == 0, server.log()
