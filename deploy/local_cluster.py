"""A throwaway three-node Motet cluster on this machine, to try nodes out.

``make cluster`` (or ``python deploy/local_cluster.py`` from the checkout)
starts a fresh PostgreSQL cluster in a temporary directory and three
``motet serve --node-id`` processes on it, prints where they listen, and
stops everything (deleting the database) on Ctrl-C. Needs the PostgreSQL
server programs (``initdb``, ``pg_ctl``) and the ``postgres`` extra.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.postgres import running_cluster  # noqa: E402


def _motet() -> str:
    """The ``motet`` executable beside this Python (the checkout's virtualenv)."""
    beside = Path(sys.executable).with_name("motet")
    return str(beside) if beside.exists() else "motet"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3, help="(default: %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=7701,
        help="line port of node 1; node N gets port+N-1 "
        "(HTTP: +1000, metrics: +2000) (default: %(default)s)",
    )
    parser.add_argument("--lease-ttl", default="10", help="seconds (default: %(default)s)")
    parser.add_argument("--partitions", default="64", help="(default: %(default)s)")
    args = parser.parse_args(argv)

    stop = False

    def stopping(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, stopping)
    signal.signal(signal.SIGTERM, stopping)
    with running_cluster() as postgres:
        url = postgres.conninfo()
        nodes: list[subprocess.Popen[bytes]] = []
        try:
            for n in range(1, args.nodes + 1):
                port = args.port + n - 1
                nodes.append(
                    subprocess.Popen(
                        [_motet(), "serve", "--store", url,
                         "--node-id", f"node{n}", "--port", str(port),
                         "--http-port", str(port + 1000), "--metrics-port", str(port + 2000),
                         "--lease-ttl", args.lease_ttl, "--partitions", args.partitions,
                         "--log-level", "warning"],
                        cwd=REPO,
                    )
                )  # fmt: skip
            time.sleep(2)
            print(f"\nPostgreSQL: {url}")
            for n, node in enumerate(nodes, 1):
                port = args.port + n - 1
                print(
                    f"node{n} (pid {node.pid}): line protocol 127.0.0.1:{port}, "
                    f"HTTP http://127.0.0.1:{port + 1000}/, "
                    f"metrics http://127.0.0.1:{port + 2000}/metrics"
                )
            print(
                f"\nTry: motet status --port {args.port}   |   motet client --port "
                f"{args.port + 1}\nKill a node (kill -9 PID) and watch its partitions move "
                f"within the lease TTL ({args.lease_ttl} s). Ctrl-C stops everything.\n",
                flush=True,
            )
            while not stop and any(node.poll() is None for node in nodes):
                time.sleep(0.2)
        finally:
            for node in nodes:
                if node.poll() is None:
                    node.send_signal(signal.SIGTERM)
            for node in nodes:
                try:
                    node.wait(15)
                except subprocess.TimeoutExpired:
                    node.kill()
                    node.wait()
    print("stopped; the throwaway database is deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
