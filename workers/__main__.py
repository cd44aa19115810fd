"""`python -m workers --kind KIND --worker-id ID --epoch N --manager-url URL ...`

Started by a manager's spawner. The one-time spawn token arrives in the environment variable
`TRADEFLEET_SPAWN_TOKEN` (never on the command line, where `ps` would show it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from protocol.control import WorkerKind
from tradefleet.config import ConfigError, load_config
from tradefleet.service import logs
from tradefleet.service.loop import run
from workers.kinds import service_for
from workers.runtime.runtime import WorkerRuntime
from workers.runtime.service import WorkerContext

SPAWN_TOKEN_ENV = "TRADEFLEET_SPAWN_TOKEN"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--kind", required=True, choices=[k.value for k in WorkerKind])
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--epoch", required=True, type=int)
    parser.add_argument("--manager-url", required=True)
    parser.add_argument("--location", default="local")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=Path(".tradefleet"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    token = os.environ.pop(SPAWN_TOKEN_ENV, "")
    if not token:
        print(f"error: {SPAWN_TOKEN_ENV} is not set; workers are started by a manager",
              file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kind = WorkerKind(args.kind)
    logs.configure(config.log_level, worker_id=args.worker_id, kind=kind.value,
                   location=args.location, epoch=args.epoch)
    ctx = WorkerContext(worker_id=args.worker_id, kind=kind, epoch=args.epoch,
                        location=args.location, manager_url=args.manager_url,
                        data_dir=args.data_dir, config=config)

    async def serve(stop: asyncio.Event) -> int:
        runtime = WorkerRuntime(ctx, service_for(ctx), token)
        return await runtime.run(stop)

    return run(serve)


if __name__ == "__main__":
    sys.exit(main())
