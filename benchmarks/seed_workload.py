"""The seed workload: Motet's headline benchmark.

Run from the repository root::

    python -m benchmarks.seed_workload                 # 10,000 users, 100,000 commands
    python -m benchmarks.seed_workload --compare --compare-commands 20000

The workload uses the example app (``motet.engine.example``) in a fresh LMDB directory:

* phase A creates ``--users`` users (``CreateUser``);
* phase B sends ``--commands`` commands to users picked uniformly at random:
  80 % ``PlaceOrder`` (amount 1..500, every order id unique) and 20 %
  ``UpdateUser`` (a new city from a short list).

Both phases are driven by ``--clients`` concurrent trio tasks; each task owns an
equal share of the phase's commands and awaits every ``engine.send`` before
sending its next command, like a client waiting for its acknowledgement. The
commands are generated from ``--seed`` before the clock starts.

How to read the output: for each phase, ``cmd/s`` is the number of commands
divided by the phase's wall-clock time, and p50/p99/p99.9 are quantiles of the
time one ``engine.send`` took, in milliseconds (it includes the time a command
waits for its group commit and its fsync). ``commits`` and ``batch`` come from
``engine.statistics()``: the number of LMDB write transactions during phase B and
the mean number of commands (and events) each one made durable. ``peak RSS`` is
the process' maximum resident set size after the Motet run. ``CPU s/1k`` is
the process' CPU time (all threads) during the phase per 1,000 commands: on a
machine shared with other work it moves far less than the rates do.

With ``--compare`` the same workload, generated from the same seed, also runs
through the Python ``eventsourcing`` library with its SQLite module (WAL mode,
``synchronous=FULL``), sequentially from one thread, as that library's users
call it; ``--compare-commands`` shortens its phase B, as it is much slower. The
ratio compares phase-B rates (commands/s), so differing command counts are fine;
the CPU ratio compares the phase-B CPU time each spends per command.
``--compare-cache`` says how that run keeps aggregates between commands: an
aggregate cache that checks the database for newer events on every get
(``fastforward``, the default, as this benchmark has always run it), one that
trusts itself (``trusted``: one process writes, as one Motet process owns its
actors; the fastest here) or none (``none``, the library's default: every
command replays the aggregate's events).

The example app marks its users' ``name``, ``email`` and ``city`` as personal
data, so Motet encrypts them (AES-GCM, a key per user). ``--personal-data
both`` runs the Motet part twice in one run, encrypted and then with the same
app built with ``personal_data=False`` (the fields stored in clear), and
reports both rows (``motet`` and ``motet-clear``) and what encryption costs
(``encryption_cost_phase_a`` / ``_b``: the share of commands/s lost);
``--personal-data off`` runs only the clear one.

The table goes to stdout followed by one JSON line (sorted keys) holding every
figure; ``--json-only`` prints just the JSON line. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata
import importlib.util
import json
import math
import platform
import random
import resource
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import trio

from motet.engine import CommandRejected, Engine, Overloaded, open_engine
from motet.engine.cli import serve as motet_serve
from motet.engine.example import CreateUser, PlaceOrder, UpdateUser, app
from motet.storage import Durability

__all__ = [
    "NewUser",
    "PlaceOrderSpec",
    "UpdateCitySpec",
    "Workload",
    "main",
    "make_workload",
    "print_table",
    "quantiles",
    "run_eventsourcing",
    "run_motet",
]

CITIES = ("Lisbon", "Oslo", "Kyoto", "Lima", "Accra", "Austin", "Perth", "Tallinn")
ORDER_SHARE = 0.8
MAX_AMOUNT = 500
QUANTILES = {"p50_ms": 0.50, "p99_ms": 0.99, "p999_ms": 0.999}
_DEFAULT_GC_THRESHOLDS = gc.get_threshold()
_STAT_FIELDS = ("commits", "commands_committed", "events_appended", "snapshots")


# The prebuilt workload stays alive through each run: untracked by the
# garbage collector (gc=False, no reference cycles possible), it does not
# make every collection of the engine under test walk 110,000 more objects.


class NewUser(msgspec.Struct, frozen=True, gc=False):
    user_id: str
    name: str
    email: str
    password: str
    city: str


class PlaceOrderSpec(msgspec.Struct, frozen=True, gc=False):
    user_id: str
    order_id: str
    amount: float


class UpdateCitySpec(msgspec.Struct, frozen=True, gc=False):
    user_id: str
    city: str


class Workload(NamedTuple):
    """Engine-neutral description of both phases, so every engine runs the same
    commands."""

    users: list[NewUser]
    commands: list[PlaceOrderSpec | UpdateCitySpec]


def make_workload(users: int, commands: int, seed: int) -> Workload:
    """Generate the seed workload deterministically from ``seed``.

    Commands are drawn one after another from one generator, so the workload for
    fewer commands is a prefix of the one for more (same users, same seed).
    """
    rng = random.Random(seed)
    new_users = [
        NewUser(
            user_id=f"u{i}",
            name=f"User {i}",
            email=f"user{i}@example.com",
            password=f"pw-{rng.getrandbits(64):016x}",
            city=rng.choice(CITIES),
        )
        for i in range(users)
    ]
    specs: list[PlaceOrderSpec | UpdateCitySpec] = []
    for i in range(commands):
        user_id = f"u{rng.randrange(users)}"
        if rng.random() < ORDER_SHARE:
            specs.append(PlaceOrderSpec(user_id, f"o{i}", float(rng.randint(1, MAX_AMOUNT))))
        else:
            specs.append(UpdateCitySpec(user_id, rng.choice(CITIES)))
    return Workload(new_users, specs)


def quantiles(samples: Sequence[float], qs: dict[str, float]) -> dict[str, float | None]:
    """Nearest-rank quantiles of ``samples``: ``{name: value}`` for each ``{name: q}``.

    Every value is ``None`` when there are no samples.
    """
    ordered = sorted(samples)
    result: dict[str, float | None] = {}
    for name, q in qs.items():
        if not ordered:
            result[name] = None
            continue
        rank = max(1, math.ceil(q * len(ordered)))
        result[name] = ordered[rank - 1]
    return result


def _phase_result(
    latencies: Sequence[float], seconds: float, errors: Counter[str], cpu_seconds: float
) -> dict[str, Any]:
    ms = [latency * 1000.0 for latency in latencies]
    count = len(latencies)
    return {
        "commands": count,
        "seconds": seconds,
        "commands_per_s": count / seconds if seconds > 0 else None,
        "cpu_seconds": cpu_seconds,
        "cpu_ms_per_command": cpu_seconds * 1000.0 / count if count else None,
        **quantiles(ms, QUANTILES),
        "errors": dict(errors),
    }


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS; this benchmark targets Linux).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _base_dir(data: Path | None) -> Iterator[Path]:
    """The directory holding the stores: ``data`` (kept) or a temporary one (removed)."""
    if data is not None:
        data.mkdir(parents=True, exist_ok=True)
        yield data
        return
    with tempfile.TemporaryDirectory(prefix="motet-seed-") as tmp:
        yield Path(tmp)


# ---------------------------------------------------------------------------- Motet


def _engine_statistics(engine: Engine) -> dict[str, int]:
    snapshot = engine.statistics()
    return {name: getattr(snapshot, name) for name in _STAT_FIELDS}


def _batch_figures(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    delta = {name: after[name] - before[name] for name in _STAT_FIELDS}
    figures: dict[str, Any] = dict(delta)
    commits = delta["commits"]
    if commits:
        figures["mean_batch_commands"] = delta["commands_committed"] / commits
        figures["mean_batch_events"] = delta["events_appended"] / commits
    return figures


LAG_SAMPLE_INTERVAL = 0.005
"""Seconds between two samples of the projections' lag during a phase."""


async def _sample_lag(engine: Engine, events: list[float], seconds: list[float]) -> None:
    """Record every projection's lag (events and seconds) until cancelled."""
    while True:
        await trio.sleep(LAG_SAMPLE_INTERVAL)
        for projection in engine.projections.values():
            behind, age = projection.lag()
            events.append(float(behind))
            seconds.append(age * 1000.0)


def _lag_figures(events: Sequence[float], ms: Sequence[float]) -> dict[str, Any]:
    lag_events = quantiles(events, {"p50": 0.50, "p99": 0.99})
    lag_ms = quantiles(ms, {"p50": 0.50, "p99": 0.99})
    return {
        "lag_samples": len(events),
        "lag_events_p50": lag_events["p50"],
        "lag_events_p99": lag_events["p99"],
        "lag_ms_p50": lag_ms["p50"],
        "lag_ms_p99": lag_ms["p99"],
    }


async def _drive(engine: Engine, commands: Sequence[Any], clients: int) -> dict[str, Any]:
    """Send ``commands`` from ``clients`` concurrent tasks while sampling the
    projections' lag; return the phase figures."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lag_events: list[float] = []
    lag_ms: list[float] = []

    async def client(share: Sequence[Any]) -> None:
        for command in share:
            started = time.perf_counter()
            try:
                await engine.send(command)
            except (CommandRejected, Overloaded) as exc:
                errors[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - started)

    cpu_started = time.process_time()
    started = time.perf_counter()
    async with trio.open_nursery() as sampling:
        sampling.start_soon(_sample_lag, engine, lag_events, lag_ms)
        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(client, commands[i::clients])
        sampling.cancel_scope.cancel()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    return {
        **_phase_result(latencies, seconds, errors, cpu_seconds),
        **_lag_figures(lag_events, lag_ms),
    }


async def _run_motet_async(
    workload: Workload,
    clients: int,
    durability: Durability,
    path: Path,
    metrics: bool,
    tune_gc: bool,
    personal_data: bool = True,
) -> dict[str, Any]:
    the_app = app if personal_data else dataclasses.replace(app, personal_data=False)
    creates = [
        CreateUser(user_id=u.user_id, name=u.name, email=u.email, password=u.password, city=u.city)
        for u in workload.users
    ]
    mixed: list[PlaceOrder | UpdateUser] = [
        PlaceOrder(user_id=c.user_id, order_id=c.order_id, amount=c.amount)
        if isinstance(c, PlaceOrderSpec)
        else UpdateUser(user_id=c.user_id, city=c.city)
        for c in workload.commands
    ]
    async with open_engine(path, the_app, durability=durability, metrics=metrics) as engine:
        if tune_gc:
            motet_serve.tune_gc()  # what motet serve does once it is up
        _log(f"motet: phase A, {len(creates):,} CreateUser from {clients:,} clients")
        phase_a = await _drive(engine, creates, clients)
        before = _engine_statistics(engine)
        _log(f"motet: phase B, {len(mixed):,} commands from {clients:,} clients")
        phase_b = await _drive(engine, mixed, clients)
        phase_b.update(_batch_figures(before, _engine_statistics(engine)))
    return {"phase_a": phase_a, "phase_b": phase_b}


def run_motet(
    users: int,
    commands: int,
    seed: int,
    *,
    clients: int = 1_000,
    durability: Durability = "sync",
    data_dir: Path | None = None,
    metrics: bool = True,
    tune_gc: bool = False,
    personal_data: bool = True,
) -> dict[str, Any]:
    """Run the seed workload through Motet and return its figures.

    The store is created in ``data_dir/motet`` (``data_dir/motet-clear`` with
    ``personal_data=False``, which stores the example's personal fields in
    clear), which must not hold a store already, or in a temporary directory
    that is removed afterwards.
    """
    workload = make_workload(users, commands, seed)
    with _base_dir(data_dir) as base:
        path = base / ("motet" if personal_data else "motet-clear")
        if path.exists() and any(path.iterdir()):
            msg = f"{path} already holds data; the seed workload needs an empty store"
            raise FileExistsError(msg)
        path.mkdir(parents=True, exist_ok=True)
        result = trio.run(
            _run_motet_async, workload, clients, durability, path, metrics, tune_gc, personal_data
        )
        if tune_gc:
            gc.unfreeze()
            gc.set_threshold(*_DEFAULT_GC_THRESHOLDS)
    result["peak_rss_mib"] = _peak_rss_mib()
    return result


# -------------------------------------------------------------------- eventsourcing


def _time_calls(calls: Iterator[Any]) -> dict[str, Any]:
    """Time each zero-argument call from ``calls`` (sequentially) as one command."""
    # eventsourcing is optional: imported only when the comparison runs.
    from eventsourcing.application import AggregateNotFoundError
    from eventsourcing.persistence import IntegrityError

    latencies: list[float] = []
    errors: Counter[str] = Counter()
    cpu_started = time.process_time()
    phase_started = time.perf_counter()
    for call in calls:
        started = time.perf_counter()
        try:
            call()
        except (ValueError, IntegrityError, AggregateNotFoundError) as exc:
            errors[type(exc).__name__] += 1
            continue
        latencies.append(time.perf_counter() - started)
    seconds = time.perf_counter() - phase_started
    return _phase_result(latencies, seconds, errors, time.process_time() - cpu_started)


def run_eventsourcing(
    users: int,
    commands: int,
    seed: int,
    *,
    data_dir: Path | None = None,
    cache: str = "fastforward",
) -> dict[str, Any]:
    """Run the seed workload through ``eventsourcing`` + SQLite; return its figures.

    Commands run one after another in the calling thread. The SQLite file is
    ``data_dir/eventsourcing/events.sqlite`` (which must not exist yet), or lives in
    a temporary directory that is removed afterwards.
    """
    # Imported here so that eventsourcing is needed only for --compare.
    from benchmarks.eventsourcing_baseline import open_users

    workload = make_workload(users, commands, seed)
    with _base_dir(data_dir) as base:
        db_path = base / "eventsourcing" / "events.sqlite"
        if db_path.exists():
            msg = f"{db_path} already exists; the seed workload needs an empty store"
            raise FileExistsError(msg)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        application = open_users(db_path, cache_maxsize=max(2 * users, 1_000), cache=cache)
        try:
            _log(f"eventsourcing: phase A, {users:,} create_user, sequential")
            phase_a = _time_calls(
                partial(application.create_user, u.user_id, u.name, u.email, u.password, u.city)
                for u in workload.users
            )
            _log(f"eventsourcing: phase B, {commands:,} commands, sequential")
            phase_b = _time_calls(
                partial(application.place_order, c.user_id, c.order_id, c.amount)
                if isinstance(c, PlaceOrderSpec)
                else partial(application.update_user, c.user_id, city=c.city)
                for c in workload.commands
            )
        finally:
            application.close()
    return {
        "phase_a": phase_a,
        "phase_b": phase_b,
        "commands": commands,
        "version": importlib.metadata.version("eventsourcing"),
        "sqlite_version": sqlite3.sqlite_version,
        "cache": cache,
    }


# -------------------------------------------------------------------------- output


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(report: dict[str, Any]) -> None:
    """Print the human-readable summary of ``report`` (the JSON line's content)."""
    w = report["workload"]
    print(
        f"Seed workload: {w['users']:,} users, then {w['commands']:,} commands "
        f"({ORDER_SHARE:.0%} PlaceOrder / {1 - ORDER_SHARE:.0%} UpdateUser), "
        f"{w['clients']:,} clients, durability {w['durability']}, seed {w['seed']}"
    )
    header = f"{'engine':<14}{'phase':<8}{'commands':>10}{'seconds':>9}{'cmd/s':>10}"
    header += f"{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'errors':>8}{'CPU s/1k':>10}"
    print(header)
    print("-" * len(header))
    for engine in ("motet", "motet-clear", "eventsourcing"):
        runs = report.get(engine)
        if not runs:
            continue
        for phase, label in (("phase_a", "A"), ("phase_b", "B")):
            p = runs[phase]
            print(
                f"{engine:<14}{label:<8}{p['commands']:>10,}{p['seconds']:>9.2f}"
                f"{_fmt(p['commands_per_s'], ',.0f'):>10}{_fmt(p['p50_ms'], '.2f'):>9}"
                f"{_fmt(p['p99_ms'], '.2f'):>9}{_fmt(p['p999_ms'], '.2f'):>10}"
                f"{sum(p['errors'].values()):>8,}"
                f"{_fmt(p.get('cpu_ms_per_command'), '.3f'):>10}"
            )
    motet = report.get("motet")
    if motet:
        b = motet["phase_b"]
        if "commits" in b:
            print(
                f"motet phase B: {b['commits']:,} commits, "
                f"mean batch {_fmt(b.get('mean_batch_commands'), '.1f')} commands "
                f"({_fmt(b.get('mean_batch_events'), '.1f')} events) per commit"
            )
        else:
            print("motet phase B: commit statistics not available from this engine")
        if b.get("lag_samples"):
            print(
                f"motet phase B projection lag: p50 {_fmt(b['lag_events_p50'], ',.0f')} events"
                f" / {_fmt(b['lag_ms_p50'], '.1f')} ms, p99 {_fmt(b['lag_events_p99'], ',.0f')}"
                f" events / {_fmt(b['lag_ms_p99'], '.1f')} ms ({b['lag_samples']:,} samples)"
            )
        print(f"motet peak RSS: {motet['peak_rss_mib']:.1f} MiB")
    for engine in ("motet", "eventsourcing"):
        errors = {
            f"{phase}:{name}": count
            for phase in ("phase_a", "phase_b")
            for name, count in (report.get(engine) or {}).get(phase, {}).get("errors", {}).items()
        }
        if errors:
            print(f"WARNING: {engine} commands failed: {errors}")
    if report.get("encryption_cost_phase_b") is not None:
        print(
            "encrypting personal data costs "
            f"{report['encryption_cost_phase_a']:.1%} of phase A and "
            f"{report['encryption_cost_phase_b']:.1%} of phase B commands/s "
            "(motet vs motet-clear)"
        )
    if report.get("ratio_phase_b") is not None:
        print(f"phase B commands/s, motet / eventsourcing: {report['ratio_phase_b']:.1f}x")
    if report.get("cpu_ratio_phase_b") is not None:
        print(
            "phase B CPU seconds per command, eventsourcing / motet: "
            f"{report['cpu_ratio_phase_b']:.1f}x"
        )


def _cpu_ratio(motet: dict[str, Any], baseline: dict[str, Any]) -> float | None:
    """Phase-B CPU time per command of ``baseline`` over Motet's: the ratio
    of the work each does per command, which other load on the machine
    disturbs far less than it does the wall-clock rates."""
    ours = motet["phase_b"].get("cpu_ms_per_command")
    theirs = baseline["phase_b"].get("cpu_ms_per_command")
    return theirs / ours if ours and theirs else None


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.seed_workload",
        description="Motet's seed workload: create users, then a mix of orders and updates.",
    )
    parser.add_argument("--users", type=int, default=10_000, help="users created in phase A")
    parser.add_argument("--commands", type=int, default=100_000, help="commands in phase B")
    parser.add_argument("--clients", type=int, default=1_000, help="concurrent client tasks")
    parser.add_argument("--durability", choices=("sync", "none"), default="sync")
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="keep the stores in DIR (DIR/motet, DIR/eventsourcing) instead of a temp dir",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the workload generator")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also run the workload through the eventsourcing library (SQLite)",
    )
    parser.add_argument(
        "--compare-commands",
        type=int,
        metavar="N",
        help="phase-B commands for the eventsourcing run (default: --commands)",
    )
    parser.add_argument(
        "--compare-cache",
        choices=("fastforward", "trusted", "none"),
        default="fastforward",
        help="how the eventsourcing run keeps aggregates between commands: a cache that "
        "checks the database for newer events on every get (fastforward), one that "
        "trusts itself (trusted), or none (default: %(default)s)",
    )
    parser.add_argument(
        "--personal-data",
        choices=("on", "off", "both"),
        default="on",
        help="encrypt the example's personal fields (on), store them in clear (off), "
        "or run both and report what encryption costs (default: %(default)s)",
    )
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    parser.add_argument(
        "--tune-gc",
        action="store_true",
        help="freeze startup objects and raise the GC thresholds, as motet serve does",
    )
    parser.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_false",
        help="run Motet with metric collection off (to measure what metrics cost)",
    )
    args = parser.parse_args(argv)
    for name in ("users", "commands", "clients", "compare_commands"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.compare and importlib.util.find_spec("eventsourcing") is None:
        parser.error("--compare needs the eventsourcing package (pip install eventsourcing)")
    if args.data is not None:
        stores = [args.data / "motet", args.data / "motet-clear"]
        if args.compare:
            stores.append(args.data / "eventsourcing" / "events.sqlite")
        for store in stores:
            if store.is_file() or (store.is_dir() and any(store.iterdir())):
                parser.error(f"{store} already holds data; give --data an empty directory")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark as the command line asks, print the table and JSON line."""
    args = _parse_args(argv)
    report: dict[str, Any] = {
        "workload": {
            "users": args.users,
            "commands": args.commands,
            "clients": args.clients,
            "durability": args.durability,
            "seed": args.seed,
            "metrics": args.metrics,
            "tune_gc": args.tune_gc,
            "python": platform.python_version(),
        },
        "motet": None,
        "motet-clear": None,
        "eventsourcing": None,
        "ratio_phase_b": None,
        "cpu_ratio_phase_b": None,
        "encryption_cost_phase_a": None,
        "encryption_cost_phase_b": None,
    }
    runs = {"on": (True,), "off": (False,), "both": (True, False)}[args.personal_data]
    for personal_data in runs:
        report["motet" if personal_data else "motet-clear"] = run_motet(
            args.users,
            args.commands,
            args.seed,
            clients=args.clients,
            durability=args.durability,
            data_dir=args.data,
            metrics=args.metrics,
            tune_gc=args.tune_gc,
            personal_data=personal_data,
        )
    if report["motet"] and report["motet-clear"]:
        for phase in ("phase_a", "phase_b"):
            encrypted = report["motet"][phase]["commands_per_s"]
            clear = report["motet-clear"][phase]["commands_per_s"]
            if encrypted and clear:
                report[f"encryption_cost_{phase}"] = 1 - encrypted / clear
    if args.compare:
        compare_commands = args.compare_commands or args.commands
        baseline = run_eventsourcing(
            args.users, compare_commands, args.seed, data_dir=args.data, cache=args.compare_cache
        )
        report["eventsourcing"] = baseline
        motet_rate = (report["motet"] or report["motet-clear"])["phase_b"]["commands_per_s"]
        baseline_rate = baseline["phase_b"]["commands_per_s"]
        if motet_rate and baseline_rate:
            report["ratio_phase_b"] = motet_rate / baseline_rate
        report["cpu_ratio_phase_b"] = _cpu_ratio(report["motet"] or report["motet-clear"], baseline)
    if not args.json_only:
        print_table(report)
    print(json.dumps(report, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
