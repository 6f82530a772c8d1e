"""A process killed mid-stream loses no acknowledged command and leaves a
consistent log.

A child process runs the engine on a real LMDB directory and pipelines
PlaceOrder commands from many tasks, printing one JSON line per Ack (after
the Ack, so every printed line was acknowledged). The parent kills it with
SIGKILL at an arbitrary moment, reopens the store and checks that every
printed Ack is in the log exactly where it said, that the log is gap-free and
every stream contiguous, and that new commands continue the versions.

With ``durability="none"`` nothing is fsynced, but a process crash must
still lose nothing: the commits are in the OS page cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from motet.engine import open_engine
from motet.engine.example import OrderPlaced, PlaceOrder, UserCreated, app
from tests.support.paths import REPO

USERS = 25
TASKS = 50
ACKS_BEFORE_KILL = 2_000

CHILD = """
import json
import sys

import trio

from motet.engine import open_engine
from motet.engine.example import CreateUser, PlaceOrder, app


def emit(kind, command_id, user, ack):
    line = {
        "kind": kind,
        "command_id": command_id,
        "user": user,
        "stream": ack.stream,
        "version": ack.version,
        "position": ack.position,
    }
    sys.stdout.write(json.dumps(line) + "\\n")
    sys.stdout.flush()


async def main(path, durability, users, tasks):
    async with open_engine(path, app, durability=durability) as engine:
        for n in range(users):
            user, command_id = f"u{n}", f"create-{n}"
            email = f"{user}@example.org"
            command = CreateUser(user_id=user, name=user, email=email, password="pw")
            emit("create", command_id, user, await engine.send(command, command_id=command_id))

        async def worker(task):
            k = 0
            while True:
                user, order_id = f"u{(task + k) % users}", f"t{task}-{k}"
                command = PlaceOrder(user_id=user, order_id=order_id, amount=1 + k % 7)
                emit("order", order_id, user, await engine.send(command, command_id=order_id))
                k += 1

        async with trio.open_nursery() as nursery:
            for task in range(tasks):
                nursery.start_soon(worker, task)


trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
"""


async def run_and_kill(
    tmp_path: Path, durability: str, delay: float
) -> tuple[Path, list[dict[str, Any]]]:
    """Run the child until it printed enough Acks and ``delay`` seconds more,
    SIGKILL it, and return the store's path and every Ack line it printed."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    store_path = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(script), str(store_path), durability, str(USERS), str(TASKS)]
    buffer = b""
    lines: list[dict[str, Any]] = []

    def take_lines() -> None:
        nonlocal buffer
        *complete, buffer = buffer.split(b"\n")
        lines.extend(json.loads(line) for line in complete)

    with open(tmp_path / "child.stderr", "wb") as stderr:
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env=env,
                    check=False,
                )
            )
            assert process.stdout is not None
            async with process.stdout:
                with trio.fail_after(30):
                    while len(lines) < ACKS_BEFORE_KILL + USERS:
                        chunk = await process.stdout.receive_some(65_536)
                        if not chunk:
                            break
                        buffer += chunk
                        take_lines()
                    # The child answers in bursts (one per group commit); a
                    # delay moves the kill to another point of its cycle.
                    with trio.move_on_after(delay):
                        while chunk := await process.stdout.receive_some(65_536):
                            buffer += chunk
                            take_lines()
                process.send_signal(signal.SIGKILL)
                # What the child printed before it died was acknowledged too.
                with trio.fail_after(10):
                    while chunk := await process.stdout.receive_some(65_536):
                        buffer += chunk
                    take_lines()
                with trio.fail_after(10):
                    await process.wait()
    errors = (tmp_path / "child.stderr").read_text()
    assert process.returncode == -signal.SIGKILL, errors
    # A line cut short by the kill (no newline) may stay in ``buffer``: its
    # Ack was never seen, so it proves nothing either way.
    assert len(lines) >= ACKS_BEFORE_KILL + USERS, errors
    return store_path, lines


@pytest.mark.parametrize("delay", [0.0, 0.0137, 0.0591])
@pytest.mark.parametrize("durability", ["sync", "none"])
async def test_a_killed_process_loses_no_acknowledged_command(
    tmp_path: Path, durability: str, delay: float
) -> None:
    store_path, acked = await run_and_kill(tmp_path, durability, delay)
    creates = [line for line in acked if line["kind"] == "create"]
    orders = [line for line in acked if line["kind"] == "order"]
    assert len(creates) == USERS
    assert len(orders) >= ACKS_BEFORE_KILL

    async with open_engine(store_path, app, durability=durability) as engine:
        store = engine.store
        head = store.head_position
        assert head >= len(acked)
        print(f"{durability} delay={delay}: {len(acked)} acks seen, head {head}")

        # The whole log: gap-free 1..head.
        log = []
        while batch := store.read_all(log[-1].position if log else 0, limit=5_000):
            log.extend(batch)
        assert [event.position for event in log] == list(range(1, head + 1))
        by_position = {event.position: event for event in log}

        # Every printed Ack is in the log where it said, with its command.
        assert len({line["position"] for line in acked}) == len(acked)
        for line in acked:
            event = by_position[line["position"]]
            assert (event.stream, event.version) == (line["stream"], line["version"]), line
            assert event.metadata.command_id == line["command_id"]
            data = engine.codec.decode_event(event)
            if line["kind"] == "create":
                assert isinstance(data, UserCreated)
            else:
                assert isinstance(data, OrderPlaced)
                assert data.order_id == line["command_id"]
            assert data.user_id == line["user"]
            # The command-id index agrees with the log.
            ack = store.get_ack(line["command_id"])
            assert ack is not None
            assert (ack.stream, ack.version, ack.position) == (
                line["stream"],
                line["version"],
                line["position"],
            )

        # Every stream is contiguous 1..n; the streams account for the whole log.
        streams = dict(store.streams())
        assert set(streams) == {f"User-u{n}" for n in range(USERS)}
        assert sum(streams.values()) == head
        acked_versions: dict[str, int] = defaultdict(int)
        for line in acked:
            acked_versions[line["stream"]] = max(acked_versions[line["stream"]], line["version"])
        for stream, version in streams.items():
            events = await engine.read_stream(stream)
            assert [event.version for event in events] == list(range(1, version + 1))
            positions = [event.position for event in events]
            assert positions == sorted(positions)
            assert version >= acked_versions[stream]

        # A retried command gets its original Ack and runs nothing.
        first = orders[0]
        user = first["user"]
        retry = PlaceOrder(user_id=user, order_id=first["command_id"], amount=1)
        ack = await engine.send(retry, command_id=first["command_id"])
        assert (ack.stream, ack.version, ack.position) == (
            first["stream"],
            first["version"],
            first["position"],
        )
        assert engine.head_position == head

        # New commands continue every stream's versions and the log's positions.
        for n in range(USERS):
            stream = f"User-u{n}"
            ack = await engine.send(PlaceOrder(user_id=f"u{n}", order_id=f"after-{n}", amount=1))
            assert (ack.stream, ack.version, ack.position) == (
                stream,
                streams[stream] + 1,
                head + n + 1,
            )
            state = engine.registry.live(stream).state  # type: ignore[union-attr]
            assert state.order_count == streams[stream]  # every event after the first is an order
