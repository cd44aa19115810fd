"""Prometheus metrics of the infrastructure manager."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from protocol.control import WorkerState
from protocol.fleet import FleetView, ManagerState


class FleetCollector(Collector):
    """Managers and workers by state, read from the fleet view at scrape time (never stale)."""

    def __init__(self, view: Callable[[], FleetView]) -> None:
        self._view = view

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fleet = self._view()
        managers = GaugeMetricFamily("tradefleet_infra_managers",
                                     "Checked-in managers by state.", labels=["state"])
        workers = GaugeMetricFamily("tradefleet_infra_workers",
                                    "Workers across the fleet by state.", labels=["state"])
        manager_counts = {state.value: 0 for state in ManagerState}
        worker_counts = {state.value: 0 for state in WorkerState}
        for location in fleet.locations:
            for manager in location.managers:
                manager_counts[manager.state.value] += 1
            for state, count in location.counts.items():
                worker_counts[state] = worker_counts.get(state, 0) + count
        for state, count in manager_counts.items():
            managers.add_metric([state], count)
        for state, count in worker_counts.items():
            workers.add_metric([state], count)
        yield managers
        yield workers


class InfraMetrics:
    def __init__(self, registry: CollectorRegistry, view: Callable[[], FleetView]) -> None:
        self.registry = registry
        registry.register(FleetCollector(view))
        self.status_frames = Counter(
            "tradefleet_infra_status_frames", "Status-pipe frames received, by outcome.",
            ["outcome"], registry=registry)
        self.pipe_connects = Counter(
            "tradefleet_infra_pipe_connects", "Status pipes opened to managers.",
            registry=registry)
        self.checkins = Counter(
            "tradefleet_infra_checkins", "Manager check-ins accepted, by outcome.",
            ["outcome"], registry=registry)
        self.operator_commands = Counter(
            "tradefleet_infra_operator_commands", "Operator commands forwarded, by action and "
            "HTTP status relayed.", ["action", "status"], registry=registry)
        self.operator_streams = Counter(
            "tradefleet_infra_operator_streams", "Operator WebSocket streams opened.",
            registry=registry)
