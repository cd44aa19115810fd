"""Entry point of the `tradefleet` command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tradefleet.cli.api import CliError, OperatorApi, find_infra_url, find_token
from tradefleet.cli.tables import render_accounts, render_fleet, render_traders, table
from tradefleet.config import ConfigError, load_config

DEFAULT_DATA_DIR = Path(".tradefleet")
DEFAULT_PORT_BASE = 7700
KINDS = ("broker", "market", "trader")


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="The fleet's data dir (finds its URL and operator token there).")
    parser.add_argument("--infra-url", default=None, help="InfrastructureManager URL.")
    parser.add_argument("--token", default=None, help="Operator token (default: from data dir "
                                                      "or TRADEFLEET_OPERATOR_TOKEN).")
    parser.add_argument("--json", action="store_true", help="Print JSON for scripts.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tradefleet", description="Run and operate a "
                                     "tradefleet: supervised brokers, markets and traders.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="Start one location and keep it running until Ctrl-C.")
    up.add_argument("--config", type=Path, default=None, help="Fleet TOML (default: built-in).")
    up.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    up.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE,
                    help="InfrastructureManager on N, Broker/Market/TraderManager on N+1..N+3; "
                         "0 lets the OS choose every port. A component restarted after "
                         "a crash asks for the port it had.")

    status = sub.add_parser("status", help="Show the fleet: locations, managers, workers.")
    _client_args(status)

    spawn = sub.add_parser("spawn", help="Add workers of a kind at a location.")
    spawn.add_argument("kind", choices=KINDS)
    spawn.add_argument("-n", type=int, default=1, help="How many (default 1).")
    spawn.add_argument("--location", default=None, help="Location (default: the only one).")
    spawn.add_argument("--request-id", default=None, help="Idempotency key (default: random).")
    _client_args(spawn)

    for name, text in (("drain", "Drain a worker: no new work, finish, exit."),
                       ("stop", "Stop a worker now.")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("worker")
        _client_args(cmd)

    desired = sub.add_parser("scale", help="Set how many workers of a kind a location keeps.")
    desired.add_argument("kind", choices=KINDS)
    desired.add_argument("desired", type=int)
    desired.add_argument("--location", default=None)
    _client_args(desired)

    kill = sub.add_parser("kill-switch", help="Stop trading on an account (or everywhere): "
                          "cancel its open orders and refuse new ones until switched off.",
                          usage="tradefleet kill-switch (ACCOUNT | --all) on|off [--reason R]")
    kill.add_argument("target", nargs="+", metavar="ACCOUNT on|off",
                      help="The account and on or off (with --all: only on or off).")
    kill.add_argument("--all", action="store_true", help="The fleet-wide kill switch.")
    kill.add_argument("--reason", default="", help="Why (journaled, shown to the algos).")
    kill.add_argument("--location", default=None,
                      help="The account's location (default: the only one).")
    _client_args(kill)

    replay = sub.add_parser("replay", help="Verify a recorded venue feed (checksums, sequence).")
    replay.add_argument("args", nargs=argparse.REMAINDER,
                        help="FILE --venue kraken|kraken-futures [--depth D] [--json]")
    return parser


def _api(args: argparse.Namespace) -> OperatorApi:
    return OperatorApi(find_infra_url(args.infra_url, args.data_dir),
                       find_token(args.token, args.data_dir))


def _print(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2) if args.json else human)


def _only_location(api: OperatorApi, given: str | None) -> str:
    if given:
        return given
    names = [loc["name"] for loc in api.request("GET", "/v1/fleet").get("locations", [])]
    if len(names) != 1:
        raise CliError(f"several locations ({', '.join(names) or 'none'}); pass --location", 2)
    return str(names[0])


def _kill_switch(api: OperatorApi, args: argparse.Namespace) -> None:
    wanted = 1 if args.all else 2
    if len(args.target) != wanted or args.target[-1] not in ("on", "off"):
        raise CliError("usage: tradefleet kill-switch (ACCOUNT | --all) on|off [--reason R]", 2)
    body = {"active": args.target[-1] == "on", "reason": args.reason}
    if args.all:
        result = api.request("POST", "/v1/kill-switch", body)
        lines = [(f"fleet-wide kill switch {args.target[-1]} at "
                  f"{', '.join(sorted(result.get('locations', {}))) or 'no location'}")]
        for name, answer in sorted(result.get("locations", {}).items()):
            if not isinstance(answer, dict):
                continue
            pending = answer.get("pending") or []
            failed = answer.get("failed") or {}
            if pending:
                lines.append(f"  {name}: {', '.join(pending)} take it when an owner is "
                             "assigned")
            for account, why in sorted(failed.items()):
                lines.append(f"  {name}: {account} did not answer ({why}); its next owner "
                             "takes it")
        _print(args, result, "\n".join(lines))
        return
    account = args.target[0]
    location = _only_location(api, args.location)
    result = api.request("POST", f"/v1/locations/{location}/accounts/{account}/kill-switch",
                         body)
    _print(args, result, f"kill switch {args.target[-1]} for {account} at {location}")


def run(args: argparse.Namespace) -> int:
    if args.command == "up":
        from tradefleet.cli.up import Launcher
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise CliError(str(exc), 2) from None
        return Launcher(config, args.config, args.data_dir, args.port_base).run()
    if args.command == "replay":
        return subprocess.call([sys.executable, "-m", "workers.broker.replay", *args.args])
    api = _api(args)
    if args.command == "status":
        fleet = api.request("GET", "/v1/fleet")
        extra = [part for part in (render_accounts(fleet), render_traders(fleet)) if part]
        _print(args, fleet, render_fleet(fleet) + "".join("\n" + part for part in extra))
    elif args.command == "spawn":
        location = _only_location(api, args.location)
        body = {"count": args.n, "request_id": args.request_id or uuid.uuid4().hex}
        result = api.request("POST", f"/v1/locations/{location}/{args.kind}/spawn", body)
        ids = result.get("workers", [])
        _print(args, result, f"spawned {len(ids)} {args.kind} worker(s) at {location}: "
                             f"{', '.join(ids) or '(none new)'}")
    elif args.command == "scale":
        location = _only_location(api, args.location)
        result = api.request("PUT", f"/v1/locations/{location}/{args.kind}/desired",
                             {"desired": args.desired})
        _print(args, result, f"{args.kind} at {location}: desired {args.desired}")
    elif args.command == "kill-switch":
        _kill_switch(api, args)
    elif args.command in ("drain", "stop"):
        result = api.request("POST", f"/v1/workers/{args.worker}/{args.command}")
        verb = "draining" if args.command == "drain" else "stopping"
        _print(args, result, f"{verb} {args.worker}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except CliError as exc:
        print(f"tradefleet: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


__all__ = ["main", "table"]
