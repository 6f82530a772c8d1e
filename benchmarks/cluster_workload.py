"""The seed workload on 1, 2 and 3 nodes sharing one PostgreSQL store, and
the failover time of a killed node.

Run from the repository root::

    python -m benchmarks.cluster_workload                    # 2,000 users, 20,000 commands
    python -m benchmarks.cluster_workload --nodes 1 3 --commands 50000 --lease-ttl 10

For each node count it creates a fresh store (a new schema of a throwaway
local PostgreSQL cluster, fsync on, unless ``--url`` names one), starts that
many ``motet serve --node-id`` processes (durability ``sync``), waits until
the partitions are spread, and drives the seed workload of
``benchmarks.seed_workload`` over ``--connections`` connections spread
round-robin over the nodes (``--in-flight`` pipelined commands each): a
command reaching a node that does not own its aggregate is forwarded. Then,
on the last cluster, it kills one node with SIGKILL and measures the
failover time: from the kill until every partition the node owned accepts a
command again (sent to a survivor, retried while it answers
``unavailable``). Prints a table and one JSON line.

``--route owner`` sends each command straight to the node owning its
aggregate's partition (as a partition-aware client would), instead of
round-robin: the cost of forwarding is then left out. Each phase reports the
CPU seconds per 1,000 commands of the node processes, of the PostgreSQL
server (its processes, when the server runs on this machine) and of the
driver, and every node's projection lag (``lag_seconds`` of its status,
sampled every 50 ms while the phase runs).

With one head counter all writes share one commit stream: more nodes are
expected to add availability and read capacity, not write throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from motet.engine import Unavailable, open_client
from motet.engine.example import CreateUser, PlaceOrder, UpdateUser
from motet.storage.partitions import partition_of

from .seed_workload import QUANTILES, PlaceOrderSpec, make_workload, quantiles
from .tcp_workload import _SERVING

_PARTITIONS = 64
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _motet() -> list[str]:
    motet = Path(sys.executable).parent / "motet"
    return [str(motet)] if motet.exists() else [
        sys.executable, "-c", "import sys; from motet.engine.cli import main; sys.exit(main())"
    ]  # fmt: skip


def _start_node(url: str, node_id: str, lease_ttl: float) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [*_motet(), "serve", "--store", url, "--node-id", node_id, "--port", "0",
         "--no-metrics", "--lease-ttl", str(lease_ttl), "--partitions", str(_PARTITIONS),
         "--log-level", "info"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise RuntimeError(f"motet serve exited with {process.wait()} before serving")
        match = _SERVING.search(line)
        if match and "serving" in line:
            # Keep draining its log, so the pipe never fills up and blocks it.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, int(match.group(1))
    process.kill()
    raise RuntimeError("motet serve did not start in time")


@contextmanager
def _nodes(url: str, count: int, lease_ttl: float) -> Iterator[list[tuple[Any, int]]]:
    nodes: list[tuple[Any, int]] = []
    try:
        for n in range(1, count + 1):
            nodes.append(_start_node(url, f"n{n}", lease_ttl))
        yield nodes
    finally:
        for process, _port in nodes:
            if process.poll() is None:
                process.terminate()
        for process, _port in nodes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _wait_balanced(ports: Sequence[int], seconds: float = 60.0) -> None:
    with trio.fail_after(seconds):
        while True:
            owned = []
            for port in ports:
                async with open_client("127.0.0.1", port) as client:
                    status = await client.status()
                    owned.append(status.node.partitions if status.node else [])
                    seen = len(status.nodes)
            if (
                seen == len(ports)
                and all(len(o) >= _PARTITIONS // len(ports) for o in owned)
                and sum(map(len, owned)) == _PARTITIONS
            ):
                return
            await trio.sleep(0.2)


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used, 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _server_pids(postmaster: int | None) -> list[int]:
    """The PostgreSQL server's processes: the postmaster and its children."""
    if postmaster is None:
        return []
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == postmaster:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return pids


def _postmaster_pid(url: str) -> int | None:
    """The pid of the server at ``url`` when it runs on this machine (its
    data directory is readable here), else ``None``."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    try:
        return int((Path(row[0]) / "postmaster.pid").read_text().split()[0]) if row else None
    except (OSError, ValueError, IndexError):
        return None


class _Cpu:
    """CPU seconds used by the nodes, the server and this driver since made."""

    def __init__(self, nodes: Sequence[int], postmaster: int | None) -> None:
        self._nodes = list(nodes)
        self._server = _server_pids(postmaster)
        self._started = self._now()

    def _now(self) -> tuple[float, float, float]:
        return (
            sum(map(_process_cpu, self._nodes)),
            sum(map(_process_cpu, self._server)),
            time.process_time(),
        )

    def per_1k(self, commands: int) -> dict[str, float | None]:
        now = self._now()
        nodes, server, driver = (b - a for a, b in zip(self._started, now, strict=True))
        per = 1000.0 / max(commands, 1)
        return {
            "cpu_s_per_1k_nodes": round(nodes * per, 4),
            "cpu_s_per_1k_postgres": round(server * per, 4) if self._server else None,
            "cpu_s_per_1k_driver": round(driver * per, 4),
        }


def _head(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT position FROM motet_head").fetchone()
    return int(row[0]) if row else 0


def _commits_after(url: str, position: int) -> int:
    """How many append transactions, of any node, wrote the events after
    ``position`` (each event row's ``xmin`` is the transaction that wrote it)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT xmin::text) FROM motet_events WHERE position > %s", (position,)
        ).fetchone()
    return int(row[0]) if row else 0


async def _owners(ports: Sequence[int]) -> dict[int, int]:
    """partition -> the port of the node that owns it."""
    owners: dict[int, int] = {}
    for port in ports:
        async with open_client("127.0.0.1", port) as client:
            status = await client.status()
        for partition in status.node.partitions if status.node else []:
            owners[partition] = port
    return owners


async def _sample_lag(port: int, lags: list[float], every: float = 0.05) -> None:
    """Record the node's largest projection lag (seconds) every ``every`` s."""
    async with open_client("127.0.0.1", port) as client:
        while True:
            status = await client.status()
            lags.append(max((p.lag_seconds for p in status.projections), default=0.0))
            await trio.sleep(every)


async def _drive(
    ports: Sequence[int],
    commands: Sequence[Any],
    connections: int,
    in_flight: int,
    *,
    route: str = "any",
    cpu: _Cpu | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lags: dict[int, list[float]] = {port: [] for port in ports}

    async def worker(client: Any, share: Sequence[Any]) -> None:
        for command in share:
            started = time.perf_counter()
            try:
                await client.send(command)
            except Exception as exc:
                errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                continue
            latencies.append(time.perf_counter() - started)

    async def connection(port: int, share: Sequence[Any]) -> None:
        async with open_client("127.0.0.1", port) as client, trio.open_nursery() as nursery:
            for i in range(in_flight):
                nursery.start_soon(worker, client, share[i::in_flight])

    # Each connection's share of the commands: round-robin over the nodes, or
    # (route "owner") every command to the node owning its partition.
    shares: list[tuple[int, Sequence[Any]]] = []
    if route == "owner":
        owners = await _owners(ports)
        by_port: dict[int, list[Any]] = {port: [] for port in ports}
        for command in commands:
            by_port[owners[partition_of(f"User-{command.user_id}", _PARTITIONS)]].append(command)
        for n, port in enumerate(ports):
            mine = range(n, connections, len(ports))  # this node's connections
            shares += [(port, by_port[port][i :: len(mine)]) for i in range(len(mine))]
    else:
        shares = [(ports[c % len(ports)], commands[c::connections]) for c in range(connections)]
    before = _head(url) if url is not None else 0
    started = time.perf_counter()
    async with trio.open_nursery() as sampling:
        for port in ports:
            sampling.start_soon(_sample_lag, port, lags[port])
        async with trio.open_nursery() as nursery:
            for port, share in shares:
                nursery.start_soon(connection, port, share)
        seconds = time.perf_counter() - started
        sampling.cancel_scope.cancel()
    lag_p99 = [quantiles(lags[port], {"p99": 0.99})["p99"] for port in ports]
    commits = _commits_after(url, before) if url is not None else 0
    return {
        "commands": len(latencies),
        "seconds": round(seconds, 2),
        "commands_per_s": round(len(latencies) / seconds),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(3)),
        **quantiles([latency * 1000.0 for latency in latencies], QUANTILES),
        "commits": commits,
        "mean_batch": round(len(latencies) / commits, 1) if commits else None,
        "lag_p99_ms_by_node": [None if lag is None else round(lag * 1000.0, 1) for lag in lag_p99],
        **(cpu.per_1k(len(latencies)) if cpu is not None else {}),
    }


async def _workload(
    ports: Sequence[int],
    pids: Sequence[int],
    postmaster: int | None,
    url: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    workload = make_workload(args.users, args.commands, args.seed)
    creates = [
        CreateUser(user_id=u.user_id, name=u.name, email=u.email, password=u.password, city=u.city)
        for u in workload.users
    ]
    mixed = [
        PlaceOrder(user_id=c.user_id, order_id=c.order_id, amount=c.amount)
        if isinstance(c, PlaceOrderSpec)
        else UpdateUser(user_id=c.user_id, city=c.city)
        for c in workload.commands
    ]
    await _wait_balanced(ports)
    phases = {}
    for name, commands in (("phase_a", creates), ("phase_b", mixed)):
        phases[name] = await _drive(
            ports,
            commands,
            args.connections,
            args.in_flight,
            route=args.route,
            cpu=_Cpu(pids, postmaster),
            url=url,
        )
    return phases


async def _failover(nodes: list[tuple[Any, int]]) -> dict[str, Any]:
    """SIGKILL the last node; seconds until each of its partitions takes a
    command again on a survivor."""
    victim, victim_port = nodes[-1]
    survivor = nodes[0][1]
    async with open_client("127.0.0.1", victim_port) as client:
        status = await client.status()
    assert status.node is not None
    partitions = status.node.partitions
    probes = {
        p: next(
            f"fo{p}-{i}"
            for i in range(100_000)
            if partition_of(f"User-fo{p}-{i}", _PARTITIONS) == p
        )
        for p in partitions
    }
    victim.send_signal(signal.SIGKILL)
    killed = time.perf_counter()
    served: dict[int, float] = {}
    async with open_client("127.0.0.1", survivor) as client:

        async def probe(partition: int, user: str) -> None:
            command = CreateUser(user_id=user, name=user, email=f"{user}@x.org", password="pw")
            while True:
                try:
                    await client.send(command, command_id=f"probe-{user}")
                    served[partition] = time.perf_counter() - killed
                    return
                except Unavailable:
                    await trio.sleep(0.02)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for partition, user in probes.items():
                    nursery.start_soon(probe, partition, user)
    times = sorted(served.values())
    return {
        "partitions_moved": len(partitions),
        "first_s": round(times[0], 2),
        "all_s": round(times[-1], 2),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options, run each cluster size, print the table and JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=6)
    parser.add_argument("--in-flight", type=int, default=100, help="pipelined per connection")
    parser.add_argument("--lease-ttl", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--url", help="a PostgreSQL server to use (default: a throwaway one)")
    parser.add_argument(
        "--route",
        choices=["any", "owner"],
        default="any",
        help="send commands round-robin (forwarded by non-owners) or to their owner",
    )
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"nodes": {}, "lease_ttl": args.lease_ttl, "route": args.route}
    with _postgres(args.url) as new_store_url:
        for count in args.nodes:
            url = new_store_url()
            postmaster = _postmaster_pid(url)
            _log(f"{count} node(s) ...")
            with _nodes(url, count, args.lease_ttl) as nodes:
                ports = [port for _process, port in nodes]
                pids = [process.pid for process, _port in nodes]
                results["nodes"][count] = trio.run(_workload, ports, pids, postmaster, url, args)
                if count == max(args.nodes) and count > 1:
                    _log("failover ...")
                    try:
                        results["failover"] = trio.run(_failover, nodes)
                    except Exception as exc:  # still print the figures measured
                        results["failover_error"] = repr(exc)[:300]

    print(
        f"\n{'nodes':>5} {'phase':<6} {'commands/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
        f" {'batch':>6}  {'CPU s/1k nodes':>14} {'pg':>6} {'driver':>6}  lag p99 ms by node"
    )
    for count, phases in results["nodes"].items():
        for name, phase in phases.items():
            server = phase["cpu_s_per_1k_postgres"]
            lags = ", ".join(
                "-" if lag is None else f"{lag:.0f}" for lag in phase["lag_p99_ms_by_node"]
            )
            print(
                f"{count:>5} {name[-1].upper():<6} {phase['commands_per_s']:>11,} "
                f"{phase['p50_ms'] or 0:>8.1f} {phase['p99_ms'] or 0:>8.1f} {phase['errors']:>7}"
                f" {phase['mean_batch'] or 0:>6.0f}  {phase['cpu_s_per_1k_nodes']:>14.3f} "
                f"{'-' if server is None else f'{server:.3f}':>6} "
                f"{phase['cpu_s_per_1k_driver']:>6.3f}  {lags}"
            )
    if "failover" in results:
        fo = results["failover"]
        print(
            f"\nfailover (lease TTL {args.lease_ttl} s): {fo['partitions_moved']} partitions "
            f"accepting commands again after {fo['first_s']} s (first) to {fo['all_s']} s (all)"
        )
    if "failover_error" in results:
        print(f"\nfailover failed: {results['failover_error']}")
    print(json.dumps(results))


@contextmanager
def _postgres(url: str | None) -> Iterator[Any]:
    """Yields a function that makes a fresh, empty store URL (a new schema)."""
    if url is not None:
        import uuid

        import psycopg

        def fresh() -> str:
            schema = f"motet_bench_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
            sep = "&" if "?" in url else "?"
            return f"{url}{sep}options=-csearch_path%3D{schema}"

        yield fresh
        return
    from tests.support.postgres import new_schema_url, running_cluster

    with running_cluster() as cluster:
        yield lambda: new_schema_url(cluster)


if __name__ == "__main__":
    main()
