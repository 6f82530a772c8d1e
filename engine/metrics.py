"""Prometheus metrics of one engine (served over HTTP by :mod:`motet.engine.net.http`).

Every engine has its own ``CollectorRegistry`` (never prometheus-client's
global one), so two engines in one process do not collide. The names are
the contract of docs/design.md ("Metrics").

The per-command figures are counted in plain dictionaries and lists and
turned into metric families only when scraped: a labelled prometheus-client
``Counter`` costs a lock and a label lookup per increment, too much for the
command path. Gauges (head position, projection lag, live actors) are
computed at scrape time, so the lag is current even when nothing is written.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

from motet.storage.errors import OUTCOMES, outcome_of

if TYPE_CHECKING:
    from .core import Engine

__all__ = [
    "COMMAND_BUCKETS",
    "CONTENT_TYPE",
    "DEFAULT_METRICS_MAX_CONNECTIONS",
    "OUTCOMES",
    "EngineMetrics",
    "outcome_of",
]

log = logging.getLogger("motet.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format served at ``/metrics``."""

DEFAULT_METRICS_MAX_CONNECTIONS = 16
"""Connections the metrics port serves at once: Prometheus keeps one per
target, so a few servers scraping (and a curl) fit, and sockets opened to
exhaust the process find a small door. Beyond it a connection gets 429."""

COMMAND_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of ``motet_command_duration_seconds``."""

BATCH_BUCKETS = tuple(2**n for n in range(15))
"""Upper bounds (commands) of ``motet_commit_batch_size``: 1, 2, 4, ..., 16384
(past the default ``max_batch`` of 10,000). A commit holds at least one
command, so a batch of 1 lands in the lowest bucket, ``le="1"``; PromQL's
``histogram_quantile`` interpolates that bucket from 0, hence the dashboard
clamps its batch-size quantiles at 1."""

COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) of ``motet_commit_duration_seconds``."""

# The ``outcome`` label of ``motet_commands_total`` comes from the error table:
# OUTCOMES lists its values (ok, rejected, conflict, overloaded, invalid,
# unavailable, error) and outcome_of(error) picks one, as the wire picks a code.


class _Durations:
    """A histogram's counts for one label value, kept as a plain list."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(COMMAND_BUCKETS) + 1)
        self.sum = 0.0


class EngineMetrics:
    """Collects one engine's metrics into its own ``registry``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.registry = CollectorRegistry(auto_describe=True)
        self._commands: dict[tuple[str, str], int] = {}
        self._durations: dict[str, _Durations] = {}
        self._events_appended = 0
        self._auth_failures = 0
        self._commit_batch = Histogram(
            "motet_commit_batch_size",
            "Commands per write transaction.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._commit_duration = Histogram(
            "motet_commit_duration_seconds",
            "Duration of one write transaction, fsync included.",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self)
        engine.writer.listeners.append(self._on_commit)

    def __repr__(self) -> str:
        return f"<EngineMetrics commands={sum(self._commands.values())}>"

    # -- recording (hot path: keep it to dictionary and list operations) ----

    def command_done(self, command_type: str, outcome: str, seconds: float | None) -> None:
        """Count one command of ``command_type`` with ``outcome``; ``seconds``
        from receipt to Ack is recorded for the ones that got that far."""
        key = (command_type, outcome)
        self._commands[key] = self._commands.get(key, 0) + 1
        if seconds is not None:
            durations = self._durations.get(command_type)
            if durations is None:
                durations = self._durations[command_type] = _Durations()
            durations.counts[bisect.bisect_left(COMMAND_BUCKETS, seconds)] += 1
            durations.sum += seconds

    def command_ok(self, command_type: str, seconds: float) -> None:
        """:meth:`command_done` for a command that got its Ack (the common case)."""
        key = (command_type, "ok")
        self._commands[key] = self._commands.get(key, 0) + 1
        durations = self._durations.get(command_type)
        if durations is None:
            durations = self._durations[command_type] = _Durations()
        durations.counts[bisect.bisect_left(COMMAND_BUCKETS, seconds)] += 1
        durations.sum += seconds

    def auth_failed(self) -> None:
        """Count one wrong token presented to a server of this engine."""
        self._auth_failures += 1

    def _on_commit(self, appends: int, events: int, seconds: float, head: int) -> None:
        self._events_appended += events
        self._commit_batch.observe(appends)
        self._commit_duration.observe(seconds)

    # -- collection ---------------------------------------------------------

    def describe(self) -> list[Metric]:
        """No up-front description: the families are built when collected."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Build the metric families from the engine's current state."""
        engine = self._engine
        head = engine.writer.head_position
        gauge = GaugeMetricFamily(
            "motet_log_head_position", "Position of the last committed event.", value=head
        )
        yield gauge
        position = GaugeMetricFamily(
            "motet_projection_position",
            "Last position the projection applied.",
            labels=["projection"],
        )
        lag_events = GaugeMetricFamily(
            "motet_projection_lag_events",
            "Log head minus the projection's position.",
            labels=["projection"],
        )
        lag_seconds = GaugeMetricFamily(
            "motet_projection_lag_seconds",
            "Age of the oldest committed event the projection has not applied; 0 when caught up.",
            labels=["projection"],
        )
        failed = GaugeMetricFamily(
            "motet_projection_failed",
            "1 while the projection is stopped on an event its handler could not apply.",
            labels=["projection"],
        )
        now = time.time()
        for name, projection in engine.projections.items():
            behind, age = projection.lag(now)
            position.add_metric([name], projection.position)
            lag_events.add_metric([name], behind)
            lag_seconds.add_metric([name], age)
            failed.add_metric([name], 1 if projection.error is not None else 0)
        yield from (position, lag_events, lag_seconds, failed)
        yield from self._process_manager_families()

        commands = CounterMetricFamily(
            "motet_commands", "Commands handled, by type and outcome.", labels=["type", "outcome"]
        )
        for (command_type, outcome), count in sorted(self._commands.items()):
            commands.add_metric([command_type, outcome], count)
        yield commands

        durations = HistogramMetricFamily(
            "motet_command_duration_seconds",
            "Time from receipt of a command to its Ack (or refusal).",
            labels=["type"],
        )
        for command_type, histogram in sorted(self._durations.items()):
            cumulative = 0
            buckets = []
            for bound, count in zip(
                [*(str(b) for b in COMMAND_BUCKETS), "+Inf"], histogram.counts, strict=True
            ):
                cumulative += count
                buckets.append((bound, cumulative))
            durations.add_metric([command_type], buckets, histogram.sum)
        yield durations

        yield CounterMetricFamily(
            "motet_events_appended", "Events committed.", value=self._events_appended
        )
        yield CounterMetricFamily(
            "motet_auth_failures",
            "Wrong tokens presented to the line protocol or the HTTP API.",
            value=self._auth_failures,
        )
        actors = GaugeMetricFamily(
            "motet_actors_active", "Live aggregate actors.", labels=["aggregate"]
        )
        live = engine.registry.live_by_aggregate()
        for aggregate in engine.app.aggregates:
            actors.add_metric([aggregate.name], live.get(aggregate.name, 0))
        yield actors
        snapshots = CounterMetricFamily(
            "motet_snapshots", "Aggregate snapshots written.", labels=["aggregate"]
        )
        written = engine.writer.snapshots_by_stream_prefix()
        for aggregate in engine.app.aggregates:
            snapshots.add_metric([aggregate.name], written.get(aggregate.name, 0))
        yield snapshots
        yield from self._group_metrics()
        node = engine.node
        if node is not None:
            yield GaugeMetricFamily(
                "motet_node_partitions",
                "Partitions of the shared store whose leases this node holds.",
                value=len(node.owned),
            )
            yield CounterMetricFamily(
                "motet_commands_forwarded",
                "Commands this node forwarded to the partition's owner and got an Ack for.",
                value=node.forwarded,
            )

    def _group_metrics(self) -> Iterator[Metric]:
        """One sample per consumer group (a few per engine, not per member)."""
        families = {
            "lag_events": GaugeMetricFamily(
                "motet_group_lag_events",
                "Log head minus the position up to which the group has settled every event.",
                labels=["group"],
            ),
            "lag_seconds": GaugeMetricFamily(
                "motet_group_lag_seconds",
                "Age of the oldest event the group has read and not settled; 0 when caught up.",
                labels=["group"],
            ),
            "parked": GaugeMetricFamily(
                "motet_group_parked",
                "Events the group parked after too many failed deliveries.",
                labels=["group"],
            ),
            "in_flight": GaugeMetricFamily(
                "motet_group_in_flight",
                "Events delivered to the group's members and not settled yet.",
                labels=["group"],
            ),
            "members": GaugeMetricFamily(
                "motet_group_members", "Live members of the group.", labels=["group"]
            ),
        }
        delivered = CounterMetricFamily(
            "motet_group_delivered", "Deliveries to the group's members.", labels=["group"]
        )
        redelivered = CounterMetricFamily(
            "motet_group_redeliveries",
            "Deliveries of events that had been delivered before (nacked or unacked).",
            labels=["group"],
        )
        acked = CounterMetricFamily(
            "motet_group_acked", "Deliveries the group's members acked.", labels=["group"]
        )
        for group in self._engine.groups:
            events, seconds = group.lag()
            name = [group.name]
            families["lag_events"].add_metric(name, events)
            families["lag_seconds"].add_metric(name, seconds)
            families["parked"].add_metric(name, len(group.parked_events))
            families["in_flight"].add_metric(name, group.in_flight)
            families["members"].add_metric(name, len(group.members))
            delivered.add_metric(name, group.delivered)
            redelivered.add_metric(name, group.redelivered)
            acked.add_metric(name, group.acked)
        yield from families.values()
        yield from (delivered, redelivered, acked)

    def _process_manager_families(self) -> Iterator[Metric]:
        """The process managers' gauges and counters, labelled ``process``."""
        labels = ["process"]
        position = GaugeMetricFamily(
            "motet_process_position", "Last position the process manager handled.", labels=labels
        )
        lag_events = GaugeMetricFamily(
            "motet_process_lag_events",
            "Log head minus the process manager's position.",
            labels=labels,
        )
        lag_seconds = GaugeMetricFamily(
            "motet_process_lag_seconds",
            "Age of the oldest committed event the process manager has not handled; "
            "0 when caught up.",
            labels=labels,
        )
        timers = GaugeMetricFamily(
            "motet_process_timers_pending",
            "Timers scheduled and not yet fired or cancelled.",
            labels=labels,
        )
        failed = GaugeMetricFamily(
            "motet_process_failed",
            "1 while the process manager is stopped on a trigger its handler could not take.",
            labels=labels,
        )
        fired = CounterMetricFamily(
            "motet_process_timers_fired", "Timers fired since the engine started.", labels=labels
        )
        commands = CounterMetricFamily(
            "motet_process_commands",
            "Commands the process manager sent, by outcome (ok or rejected).",
            labels=["process", "outcome"],
        )
        for name, manager in self._engine.process_managers.items():
            behind, age = manager.lag()
            position.add_metric([name], manager.position)
            lag_events.add_metric([name], behind)
            lag_seconds.add_metric([name], age)
            timers.add_metric([name], manager.pending_timers)
            failed.add_metric([name], 1 if manager.error is not None else 0)
            fired.add_metric([name], manager.timers_fired)
            commands.add_metric([name, "ok"], manager.commands_sent)
            commands.add_metric([name, "rejected"], manager.commands_rejected)
        yield from (position, lag_events, lag_seconds, timers, failed, fired, commands)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
