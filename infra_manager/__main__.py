"""`python -m infra_manager --host H --port N --data-dir DIR [--config FILE] [--infra-id ID]`.

With `--port 0` the OS picks the port; once listening, the URL is written atomically to
`DIR/run/infra.url` and announced on stdout as one JSON line `{"event": "listening", ...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path

import orjson
from aiohttp import web

from infra_manager.settings import InfraSettings
from infra_manager.web_app import create_app
from tradefleet.config import ConfigError, load_config
from tradefleet.service import logs
from tradefleet.service.files import write_atomic
from tradefleet.service.loop import run
from tradefleet.service.tokens import mask

EXIT_CONFIG = 2
EXIT_BIND = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infra_manager",
                                     description="Run one InfrastructureManager.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=0, help="Port; 0 lets the OS choose.")
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="Data directory (secrets, run/infra.url).")
    parser.add_argument("--config", type=Path, default=None, help="Fleet TOML configuration.")
    parser.add_argument("--infra-id", default=None,
                        help="Name of this infra manager (default: infra-HOST-PORT).")
    return parser.parse_args(argv)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def public_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"infra_manager: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"infra_manager: cannot listen on {args.host}:{args.port}: {exc.strerror}",
              file=sys.stderr)
        return EXIT_BIND
    port = sock.getsockname()[1]
    url = public_url(args.host, port)
    infra_id = args.infra_id or f"infra-{socket.gethostname()}-{port}"
    log = logs.configure(config.log_level, infra_id=infra_id, component="infra_manager")
    settings = InfraSettings.from_config(config, args.data_dir, infra_id)
    runner = web.AppRunner(create_app(settings), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    url_file = args.data_dir / "run" / "infra.url"
    try:
        await web.SockSite(runner, sock).start()
        write_atomic(url_file, url + "\n")
        print(orjson.dumps({"event": "listening", "url": url, "infra_id": infra_id}).decode(),
              flush=True)
        log.info("listening", url=url, join_token=mask(settings.join_token),
                 operator_token=mask(settings.operator_token),
                 silence_timeout_s=settings.silence_timeout_s)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
        _remove_if_ours(url_file, url)
    log.info("stopped")
    return 0


def _remove_if_ours(path: Path, url: str) -> None:
    try:
        if path.read_text().strip() == url:
            path.unlink()
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(lambda stop: serve(args, stop))


if __name__ == "__main__":
    sys.exit(main())
