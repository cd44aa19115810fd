"""Which service each worker kind runs. The one place that maps a kind to its code."""

from __future__ import annotations

import importlib

from protocol.control import WorkerKind
from workers.runtime.service import WorkerContext, WorkerService

SERVICES: dict[WorkerKind, str] = {
    WorkerKind.BROKER: "workers.broker.worker:BrokerService",
    WorkerKind.MARKET: "workers.market.service:MarketService",
    WorkerKind.TRADER: "workers.trader.service:TraderService",
}


def service_for(ctx: WorkerContext) -> WorkerService:
    """Build the kind's service (imported lazily: a worker loads only its own kind's code)."""
    module_name, _, class_name = SERVICES[ctx.kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    service = cls(ctx)
    assert isinstance(service, WorkerService)
    return service
