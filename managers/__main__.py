"""`python -m managers --kind KIND --port N --data-dir DIR [--config FILE] [--infra-url URL ...]`

Runs one manager (BrokerManager, MarketManager or TraderManager by `--kind`). Port 0 lets the
OS choose; the bound URL is written to DIR/run/<kind>-manager.url for launchers and the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from managers.app import build_app
from managers.manager import Manager
from protocol.control import LIVE_STATES, WorkerKind
from tradefleet.config import ConfigError, load_config
from tradefleet.service import logs
from tradefleet.service import metrics as metrics_http
from tradefleet.service.files import write_atomic
from tradefleet.service.loop import run
from tradefleet.service.tokens import load_or_create_secrets
from tradefleet.service.web import listen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m managers", description=__doc__)
    parser.add_argument("--kind", required=True, choices=[k.value for k in WorkerKind])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=Path(".tradefleet"))
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--infra-url", action="append", default=[],
                        help="InfrastructureManager to check in with (repeatable).")
    parser.add_argument("--leave-workers", action="store_true",
                        help="On SIGINT/SIGTERM exit without stopping workers (re-adopted later).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kind = WorkerKind(args.kind)
    log = logs.configure(config.log_level, location=config.location, component=f"{kind}-manager")
    secrets_ = load_or_create_secrets(args.data_dir)
    if config.security.join_token is not None:
        secrets_["join_token"] = config.security.join_token.get_secret_value()
    if config.security.operator_token is not None:
        secrets_["operator_token"] = config.security.operator_token.get_secret_value()
    infra_urls = list(dict.fromkeys([*args.infra_url, *config.infra_urls]))

    async def serve(stop: asyncio.Event) -> int:
        manager = Manager(kind, config, args.config.resolve() if args.config else None,
                          args.data_dir.resolve(), secrets_, infra_urls)
        app = build_app(manager)
        registry = CollectorRegistry()
        workers_gauge = Gauge("tradefleet_manager_workers", "Workers by state", ["state"],
                              registry=registry)
        desired_gauge = Gauge("tradefleet_manager_desired", "Desired workers", registry=registry)

        async def refresh_metrics(app: web.Application) -> None:
            counts = {s.value: 0 for s in LIVE_STATES}
            for rec in manager.sup.records.values():
                if rec.live:
                    counts[rec.state.value] += 1
            for state, n in counts.items():
                workers_gauge.labels(state).set(n)
            desired_gauge.set(manager.sup.desired)

        metrics_http.install(app, registry)
        app.on_response_prepare.append(lambda req, resp: refresh_metrics(req.app))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        port = await listen(runner, args.host, args.port)
        url = f"http://{args.host}:{port}"
        await manager.start(url)
        write_atomic(args.data_dir / "run" / f"{kind.value}-manager.url", url)
        print(orjson.dumps({"event": "listening", "url": url, "kind": kind.value}).decode(),
              flush=True)
        structlog.contextvars.bind_contextvars(url=url)
        await stop.wait()
        log.info("shutting down", stop_workers=not args.leave_workers)
        await manager.shutdown(stop_workers=not args.leave_workers)
        await runner.cleanup()
        return 0

    return run(serve)


if __name__ == "__main__":
    sys.exit(main())
