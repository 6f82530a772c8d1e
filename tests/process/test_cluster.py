"""Three ``motet serve --node-id`` processes on one PostgreSQL store, with
real sockets: commands sent to random nodes, a node killed with SIGKILL
under load, a node stopped with SIGSTOP past its lease, and a reader node.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import ssl
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from typing import Any

import psycopg
import pytest
import trio

from motet.engine import Unavailable
from motet.engine.example import GetUserById
from motet.engine.net.client import Client, open_client
from motet.storage.errors import ConnectionLost
from motet.storage.partitions import partition_of
from motet.storage.records import Ack
from tests.support.commands import create_user, place_order
from tests.support.postgres import Cluster, new_schema_url

pytestmark = pytest.mark.process

PARTITIONS = 12
TTL = 2.0
NODE_FLAGS = ("--partitions", str(PARTITIONS), "--lease-ttl", str(TTL), "--no-metrics")


@pytest.fixture
def url(postgres_cluster: Cluster) -> str:
    return new_schema_url(postgres_cluster)


def start_nodes(motet_server: Any, url: str, count: int, *extra: str) -> list[Any]:
    return [
        motet_server("--store", url, "--node-id", f"n{i}", *NODE_FLAGS, *extra, ready_timeout=60.0)
        for i in range(1, count + 1)
    ]


@asynccontextmanager
async def clients(servers: Sequence[Any]) -> AsyncIterator[list[Client]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_client(port=s.port)) for s in servers]


async def wait_until(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = trio.current_time() + seconds
    while True:
        result = await check()
        if result:
            return result
        if trio.current_time() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await trio.sleep(0.1)


async def balanced(to: Sequence[Client], nodes: int) -> bool:
    """Every node owns its even share and sees all ``nodes`` live nodes."""
    for client in to:
        status = await client.status()
        assert status.node is not None
        if len(status.nodes) != nodes or not (
            PARTITIONS // nodes <= len(status.node.partitions) <= -(-PARTITIONS // nodes)
        ):
            return False
    return True


async def send(
    to: Sequence[Client], command: Any, command_id: str, seconds: float = 30.0
) -> tuple[Ack, float]:
    """Send to random live nodes until acked, retrying with the same command
    id on ``unavailable`` or a lost connection; the Ack and when it came."""
    deadline = trio.current_time() + seconds
    while True:
        live = [c for c in to if not c.closed]
        try:
            ack = await random.choice(live).send(command, command_id=command_id)
            return ack, trio.current_time()
        except (Unavailable, ConnectionLost):
            if trio.current_time() > deadline:
                raise
            await trio.sleep(0.05)


async def check_log(to: Client, acks: dict[str, Ack]) -> int:
    """Every Ack is in the log once, positions are gap-free, every stream's
    versions contiguous; returns the head."""
    assert acks
    events = []
    async with trio.open_nursery() as nursery:

        async def follow() -> None:
            async with aclosing(to.subscribe(0)) as stream:  # type: ignore[type-var]
                async for event in stream:
                    events.append(event)
                    if event.position == head:
                        nursery.cancel_scope.cancel()

        # The last Ack may come from another node: this one learns of that
        # commit a moment later (its NOTIFY), so follow up to the Acks' head.
        head = max(a.position for a in acks.values())
        nursery.start_soon(follow)
    positions = [e.position for e in events]
    assert positions == list(range(1, head + 1))
    assert sorted(a.position for a in acks.values()) == positions  # one event per command
    by_position = {e.position: e for e in events}
    for command_id, ack in acks.items():
        event = by_position[ack.position]
        assert (event.stream, event.version) == (ack.stream, ack.version)
        assert event.metadata.command_id == command_id
    versions: dict[str, list[int]] = {}
    for event in events:
        versions.setdefault(event.stream, []).append(event.version)
    for stream, found in versions.items():
        assert found == list(range(1, len(found) + 1)), stream
    return head


def log_head(url: str) -> int:
    """The log's head as PostgreSQL has it (a node learns of the others'
    commits a moment later)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT position FROM motet_head").fetchone()
    assert row is not None
    return int(row[0])


async def check_read_models(to: Sequence[Client], users: list[str], head: int) -> None:
    """Each node's GetUserById equals a fold of the user's stream."""
    for user in users:
        events = await to[0].read_stream(f"User-{user}")
        orders = [e for e in events if e.type == "OrderPlaced"]
        expected = (len(orders), sum(e.data["amount"] for e in orders))
        for client in to:
            found = await client.ask(GetUserById(user_id=user), after=head, timeout=20)
            assert (found["order_count"], found["total_spent"]) == expected, user


async def run_load(
    to: Sequence[Client], users: list[str], orders: int, acks: dict[str, Ack], tasks: int = 10
) -> None:
    async def worker(task: int) -> None:
        for n in range(task, orders, tasks):
            command_id = f"order-{n}"
            user = users[n % len(users)]
            acks[command_id], _ = await send(to, place_order(user, f"o{n}", n % 7 + 1), command_id)

    async with trio.open_nursery() as nursery:
        for task in range(tasks):
            nursery.start_soon(worker, task)


async def test_three_nodes_answer_the_same_and_keep_the_log_whole(
    motet_server: Any, url: str
) -> None:
    nodes = start_nodes(motet_server, url, 3)
    async with clients(nodes) as to:
        await wait_until(lambda: balanced(to, 3), 30, "partitions spread over 3 nodes")
        users = [f"u{i}" for i in range(24)]
        acks: dict[str, Ack] = {}
        for user in users:
            acks[f"create-{user}"], _ = await send(to, create_user(user), f"create-{user}")
        await run_load(to, users, 240, acks)

        head = await check_log(to[0], acks)
        await check_read_models(to, users, head)
        # A retry on each node returns the first Ack and appends nothing.
        for client in to:
            again, _ = await send([client], create_user("u0"), "create-u0")
            assert again == acks["create-u0"]
        assert log_head(url) == head
        status = await to[2].status()
        assert status.node is not None and status.node.id == "n3"
        owners = [p for n in status.nodes for p in n.partitions]
        assert sorted(owners) == list(range(PARTITIONS))
        assert {n.address for n in status.nodes} == {f"127.0.0.1:{s.port}" for s in nodes}


async def test_a_node_killed_under_load_loses_nothing_and_its_partitions_move(
    motet_server: Any, url: str
) -> None:
    nodes = start_nodes(motet_server, url, 3)
    async with clients(nodes) as to:
        await wait_until(lambda: balanced(to, 3), 30, "partitions spread over 3 nodes")
        users = [f"u{i}" for i in range(24)]
        acks: dict[str, Ack] = {}
        for user in users:
            acks[f"create-{user}"], _ = await send(to, create_user(user), f"create-{user}")
        victim = (await to[2].status()).node
        assert victim is not None and victim.partitions
        # Commands acknowledged by the victim itself, retried elsewhere later.
        theirs = [u for u in users if partition_of(f"User-{u}", PARTITIONS) in victim.partitions][
            :3
        ]
        direct = {
            f"direct-{u}": (await send([to[2]], place_order(u, f"d-{u}", 1), f"direct-{u}"))[0]
            for u in theirs
        }
        acks.update(direct)

        killed_at = 0.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_load, to, users, 300, acks)
            await trio.sleep(1.0)
            nodes[2].process.send_signal(signal.SIGKILL)
            killed_at = trio.current_time()
        assert nodes[2].process.wait(10) == -signal.SIGKILL

        # Every partition of the dead node takes commands again on the others
        # within the lease TTL and a few seconds.
        survivors = to[:2]
        served = []
        for partition in victim.partitions:
            user = next(
                f"p{partition}-{i}"
                for i in range(10_000)
                if partition_of(f"User-p{partition}-{i}", PARTITIONS) == partition
            )
            # Each survivor: one runs it, the other forwards it (once its
            # view has caught up).
            for client in survivors:
                acks[f"probe-{user}"], at = await send([client], create_user(user), f"probe-{user}")
                served.append(at - killed_at)
        assert max(served) < TTL + 5, served

        # A retry of what the dead node acknowledged returns its Ack, appends nothing.
        head = log_head(url)
        for command_id, ack in direct.items():
            user = command_id.removeprefix("direct-")
            again, _ = await send(survivors, place_order(user, f"d-{user}", 1), command_id)
            assert again == ack
        assert log_head(url) == head

        head = await check_log(survivors[0], acks)
        await check_read_models(survivors, users, head)
        await wait_until(lambda: balanced(survivors, 2), 3 * TTL, "partitions over 2 nodes")


def events_appended(node: Any) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics") as reply:
        text = reply.read().decode()
    match = re.search(r"^motet_events_appended_total (\S+)$", text, re.MULTILINE)
    assert match is not None
    return float(match[1])


async def test_a_node_stopped_past_its_lease_commits_nothing_once_taken_over(
    motet_server: Any, url: str, postgres_cluster: Cluster
) -> None:
    flags = ("--partitions", str(PARTITIONS), "--lease-ttl", str(TTL))
    nodes = [
        motet_server("--store", url, "--node-id", f"n{i}", *flags, ready_timeout=60.0)
        for i in (1, 2)
    ]
    stopped = nodes[0]
    async with clients(nodes) as to:
        await wait_until(lambda: balanced(to, 2), 30, "partitions spread over 2 nodes")
        held = (await to[0].status()).node
        assert held is not None
        users = [
            next(
                f"s{p}-{i}"
                for i in range(10_000)
                if partition_of(f"User-s{p}-{i}", PARTITIONS) == p
            )
            for p in held.partitions
        ]
        for user in users:
            await send([to[0]], create_user(user), f"create-{user}")
        before = events_appended(stopped)

        os.kill(stopped.process.pid, signal.SIGSTOP)
        try:

            async def taken_over() -> bool:
                status = await to[1].status()
                assert status.node is not None
                return set(held.partitions) <= set(status.node.partitions)

            await wait_until(taken_over, TTL * 4, "the other node takes the partitions")
            with psycopg.connect(url, autocommit=True) as conn:
                epochs = dict(
                    conn.execute(
                        "SELECT partition, epoch FROM motet_partitions WHERE owner = 'n2'"
                    ).fetchall()
                )
            # Commands for the lost partitions wait in the stopped node's socket.
            answers: list[Any] = []
            async with open_client(port=stopped.port) as late, trio.open_nursery() as nursery:

                async def order(user: str) -> None:
                    try:
                        answers.append(await late.send(place_order(user, f"late-{user}", 2)))
                    except Unavailable as exc:
                        answers.append(exc)

                for user in users:
                    nursery.start_soon(order, user)
                await trio.sleep(0.5)
                os.kill(stopped.process.pid, signal.SIGCONT)
                with trio.fail_after(20):
                    while len(answers) < len(users):
                        await trio.sleep(0.05)
        finally:
            os.kill(stopped.process.pid, signal.SIGCONT)

        # It committed none of them itself: each was refused or forwarded.
        assert events_appended(stopped) == before
        assert all(isinstance(a, (Ack, Unavailable)) for a in answers), answers
        for answer in answers:
            if isinstance(answer, Ack):
                assert answer.version == 2
        with psycopg.connect(url, autocommit=True) as conn:
            for partition in held.partitions:
                (epoch,) = conn.execute(
                    "SELECT epoch FROM motet_partitions WHERE partition = %s", (partition,)
                ).fetchone() or (0,)
                assert epoch >= epochs[partition] > 1
        assert "lost partitions" in stopped.log()
        # It rejoins: the partitions spread over both nodes again.
        await wait_until(lambda: balanced(to, 2), 6 * TTL, "partitions spread again")


async def test_a_reader_node_serves_reads_and_refuses_commands(
    motet: Any, motet_server: Any, url: str
) -> None:
    (writer,) = start_nodes(motet_server, url, 1)
    reader = motet_server(
        "--store",
        url,
        "--role",
        "reader",
        "--node-id",
        "r1",
        "--http-port",
        "0",
        *NODE_FLAGS,
        ready_timeout=60.0,
    )
    async with (
        open_client(port=writer.port) as to_writer,
        open_client(port=reader.port) as to_reader,
    ):
        acks = {
            f"c{i}": (await send([to_writer], create_user(f"u{i}"), f"c{i}"))[0] for i in range(5)
        }
        last = max(a.position for a in acks.values())
        user = await to_reader.ask(GetUserById(user_id="u3"), after=last, timeout=20)
        assert user["name"] == "Name u3"
        assert await to_reader.read_stream("User-u3") == await to_writer.read_stream("User-u3")
        seen = []
        async with aclosing(to_reader.subscribe(0)) as stream:  # type: ignore[type-var]
            async for event in stream:
                seen.append(event.position)
                if event.position == last:
                    break
        assert seen == list(range(1, last + 1))
        with pytest.raises(Unavailable, match="role 'reader' and takes no commands"):
            await to_reader.send(create_user("x"))

        async def both_seen() -> bool:
            expected = {
                ("n1", "writer", f"127.0.0.1:{writer.port}"),
                ("r1", "reader", f"127.0.0.1:{reader.port}"),
            }
            for client in (to_writer, to_reader):
                status = await client.status()
                if {(n.id, n.role, n.address) for n in status.nodes} != expected:
                    return False
            return True

        await wait_until(both_seen, 3 * TTL, "both nodes see both, with their addresses")
        status = await to_reader.status()
        assert status.node is not None
        assert (status.node.role, status.node.partitions) == ("reader", [])
        with urllib.request.urlopen(f"http://127.0.0.1:{reader.http_port}/status") as reply:
            body = json.loads(reply.read())
        assert body["node"] == {
            "id": "r1",
            "role": "reader",
            "address": f"127.0.0.1:{reader.port}",
            "partitions": [],
        }
        assert [n["id"] for n in body["nodes"]] == ["n1", "r1"]
        assert body["nodes"][0]["partitions"] == list(range(PARTITIONS))
    table = motet.run("status", "--port", str(reader.port))
    assert table.returncode == 0, table.stderr
    assert "node           r1 (reader)" in table.stdout
    assert f"n1                  writer  127.0.0.1:{writer.port:<14}0-{PARTITIONS - 1}" in (
        table.stdout
    )


async def test_nodes_serving_tls_with_a_token_forward_over_tls(
    motet_server: Any, url: str, tls_files: Any
) -> None:
    secure = (
        "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key),
        "--peer-cafile", str(tls_files.ca), "--token", "s3cret",
    )  # fmt: skip
    nodes = start_nodes(motet_server, url, 2, *secure)
    context = ssl.create_default_context(cafile=str(tls_files.ca))
    async with AsyncExitStack() as stack:
        to = [
            await stack.enter_async_context(
                open_client(port=s.port, token="s3cret", ssl_context=context)
            )
            for s in nodes
        ]
        await wait_until(lambda: balanced(to, 2), 30, "partitions spread over 2 nodes")
        theirs = (await to[1].status()).node
        assert theirs is not None
        user = next(
            f"t{i}"
            for i in range(10_000)
            if partition_of(f"User-t{i}", PARTITIONS) in theirs.partitions
        )
        # Sent to the first node, run by the second: forwarded over TLS.
        ack, _ = await send(to[:1], create_user(user), "tls-1")
        assert (await to[1].read_stream(f"User-{user}"))[0].position == ack.position
