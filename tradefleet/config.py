"""The fleet configuration: one TOML file, validated by frozen pydantic models.

Unknown keys are rejected and every error names the offending key, e.g.
`fleet.toml: managers.broker.desird: unknown key`. `FleetConfig()` with no file is the built-in
default that `make up` runs: one location on the paper exchange with a few workers of each kind.
"""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from protocol.market import parse_decimal
from protocol.risk import RiskLimits

NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


def _config_decimal(value: object) -> Decimal:
    # TOML writes 0.01 as a float. Its shortest repr is what the operator typed, so it converts
    # exactly; the wire types refuse floats, configuration files may use them.
    if isinstance(value, float):
        value = repr(value)
    return parse_decimal(value)


ConfigDecimal = Annotated[Decimal, BeforeValidator(_config_decimal)]
"""An exact decimal in a configuration file: a string, an int, or a TOML float as typed."""


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and key to fix."""


class Timeouts(Section):
    heartbeat_interval_s: float = Field(1.0, gt=0, description="Heartbeat period on every pipe.")
    checkin_deadline_s: float = Field(
        30.0, gt=0, description="A worker gives up (exits) if its check-in is not accepted by then.")
    spawn_ready_timeout_s: float = Field(
        30.0, gt=0, description="A spawned worker that has not checked in by then is failed.")
    pipe_grace_s: float = Field(
        10.0, gt=0, description="A suspect worker whose pipe stays down this long is failed.")
    orphan_pause_s: float = Field(
        15.0, gt=0, description="A worker with no control pipe this long stops taking new work.")
    orphan_exit_s: float = Field(
        120.0, gt=0, description="A worker with no control pipe this long exits (unless re-adopted).")
    silence_timeout_s: float = Field(
        5.0, gt=0, description="The infra manager marks a manager silent after this long unheard.")
    stop_grace_s: float = Field(
        5.0, gt=0, description="Wait between SIGINT, SIGTERM and SIGKILL when stopping a process.")
    drain_timeout_s: float = Field(
        30.0, gt=0, description="A draining worker exits after this long even with work left.")
    restart_backoff_initial_s: float = Field(
        1.0, ge=0, description="Delay before replacing a worker that failed twice in a row (the "
                               "first failure is replaced at once); doubles with each further one.")
    restart_backoff_max_s: float = Field(
        60.0, gt=0, description="Cap of the crash-loop backoff between replacements.")


class ManagerSection(Section):
    desired: int = Field(ge=0, le=256, description="Workers of this kind the manager keeps running.")


class Managers(Section):
    broker: ManagerSection = Field(ManagerSection(desired=1),
                                   description="BrokerManager: Broker workers (exchange sessions).")
    market: ManagerSection = Field(ManagerSection(desired=2),
                                   description="MarketManager: Market workers (algo sessions).")
    trader: ManagerSection = Field(ManagerSection(desired=1),
                                   description="TraderManager: Trader workers (hosted algos).")


class Security(Section):
    join_token: SecretStr | None = Field(
        None, description="Deployment join token (managers → infra). Generated into the data "
                          "dir when unset; set it explicitly when locations span hosts.")
    operator_token: SecretStr | None = Field(
        None, description="Operator token for dashboard, CLI and every mutating call. Generated "
                          "into the data dir when unset.")


class AccountSection(Section):
    venue: Literal["paper", "kraken", "kraken-futures"] = Field(
        "paper", description="Which venue adapter holds this account's session.")
    credentials_env: str | None = Field(
        None, pattern=r"^[A-Z][A-Z0-9_]*$",
        description="Prefix of the environment variables holding the API key and secret "
                    "({PREFIX}_API_KEY, {PREFIX}_API_SECRET). Secrets never go in this file.")
    endpoints: dict[str, str] = Field(
        default_factory=dict,
        description="Venue URL overrides (a sandbox, a local fake): kraken takes rest_url, "
                    "ws_public_url, ws_private_url; kraken-futures takes rest_url, ws_url.")
    risk: RiskLimits = Field(
        default_factory=RiskLimits,
        description="Pre-trade risk limits of the account's position manager. Every limit is "
                    "optional and absent by default (the venue's own rules and rate limits "
                    "still apply). Limits changed over REST are journaled and win over these "
                    "after a restart.")
    retain_finished_orders: int = Field(
        10_000, ge=100,
        description="Finished orders the account's Broker keeps in memory whole. An older one "
                    "keeps only its client_order_id, which stays taken: a new_order reusing it "
                    "is answered with the order's last state, read from the journal, which "
                    "keeps every order. Bounds the Broker's memory (about 4 KB per order kept) "
                    "however long the account trades.")
    snapshot_after_entries: int = Field(
        20_000, ge=100,
        description="Journal entries (about five per order placed and cancelled) after which "
                    "the account's state is stored again as a snapshot, by a side process "
                    "while the Broker runs: a Broker that takes the account over replays at "
                    "most about this many entries (about 20 us each), however long the "
                    "journal is.")


class CustomerSection(Section):
    accounts: list[str] = Field(min_length=1, description="Accounts this customer may trade.")
    api_tokens: list[SecretStr] = Field(
        default_factory=list,
        description="API tokens of this customer's algos. When empty, one is generated into "
                    "DATA_DIR/secrets.json as `api_token.<customer>`.")


class TraderSection(Section):
    name: str = Field(pattern=NAME_PATTERN, description=(
        "Unique name of this hosted algo; also its trader tag, so the account's "
        "`risk.trader_tags.<name>` limits apply to its orders and signals."))
    strategy: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
                          description="Import path `package.module:Class` of the strategy.")
    customer: str = Field(description="Customer whose API token the algo uses.")
    account: str = Field(description="Account the algo trades.")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="Keyword parameters passed to the strategy.")
    on_restart: Literal["cancel", "adopt"] = Field(default="cancel", description=(
        "What becomes of the working orders a previous run of this algo left (its process "
        "killed, its strategy crashed) before the new run starts: `cancel` them (the new "
        "run starts with none), or `adopt` them (the strategy finds them in "
        "`client.orders` in `on_start`). One that reaches the Broker only after the new run "
        "started (it was still on its way) is cancelled either way."))


class MarketSettings(Section):
    """Tunables of every Market worker (`[market]` in the config)."""

    max_frame_bytes: int = Field(
        default=64 * 1024, ge=1024,
        description="Largest client frame accepted; a bigger one closes the connection (1009).")
    flood_rate_per_s: float = Field(
        default=200.0, gt=0, description="Client messages per second allowed on average.")
    flood_burst: float = Field(
        default=400.0, ge=1,
        description="Client messages allowed in a burst above the average rate.")
    default_book_depth: int = Field(
        default=10, ge=1, le=1000,
        description="Book depth of a book subscription that names none.")
    detached_grace_s: float = Field(
        default=30.0, ge=0,
        description="How long a disconnected session keeps its subscriptions, so that a resume "
                    "on this Market gets them back.")
    max_outbox_events: int = Field(
        default=50_000, ge=100,
        description="Events queued for one slow client before it is closed (1013) to reconnect "
                    "and resume.")
    max_events_per_frame: int = Field(
        default=1_000, ge=1, description="Events coalesced into one `batch` frame at most.")
    max_held_requests: int = Field(
        default=1_000, ge=0,
        description="Order requests held per account while its Broker link is down; more are "
                    "refused with `unavailable`.")
    unanswered_ttl_s: float = Field(
        default=60.0, gt=0,
        description="How long a routed new_order without any answer is re-sent when the Broker "
                    "link comes back.")
    link_ready_wait_s: float = Field(
        default=5.0, ge=0,
        description="How long a new session waits for its account's Broker link before being "
                    "welcomed anyway.")
    link_backoff_initial_s: float = Field(
        default=0.05, gt=0, description="First delay before re-opening a dropped Broker link.")
    link_backoff_max_s: float = Field(
        default=2.0, gt=0, description="Cap of the delay between Broker link attempts.")
    lookup_timeout_s: float = Field(
        default=5.0, gt=0,
        description="Timeout of one BrokerManager look-up or link handshake.")


class FleetConfig(Section):
    location: str = Field("local", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                          description="Name of this location (one failure domain).")
    infra_urls: list[str] = Field(
        default_factory=list,
        description="Extra InfrastructureManager URLs the managers check in with, besides the "
                    "one `tradefleet up` starts locally.")
    run_infra: bool = Field(True, description="Whether `tradefleet up` starts an "
                                              "InfrastructureManager at this location.")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$",
                           description="Log level of every process.")
    managers: Managers = Field(default_factory=Managers, description="Per-kind manager settings.")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Control-plane timings.")
    security: Security = Field(default_factory=Security, description="Deployment secrets.")
    accounts: dict[str, AccountSection] = Field(
        default_factory=lambda: {"paper-1": AccountSection()},
        description="Broker accounts by name; each gets one Broker worker as its order owner.")
    customers: dict[str, CustomerSection] = Field(
        default_factory=lambda: {"demo": CustomerSection(accounts=["paper-1"])},
        description="Customers by name: which accounts their API tokens may trade.")
    traders: list[TraderSection] = Field(
        default_factory=lambda: [TraderSection(
            name="ma-cross", strategy="examples.ma_cross:MovingAverageCross", customer="demo",
            account="paper-1", params={"instrument": "BTC/USD", "fast": 5, "slow": 20,
                                       "qty": "0.01"})],
        description="Hosted algos run by Trader workers.")
    market: MarketSettings = Field(default_factory=MarketSettings,
                                   description="Tunables of the Market workers (algo sessions).")
    paper: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of the built-in paper exchange (instruments, seed, volatility, "
                    "fees…), validated by the paper exchange at start.")

    @model_validator(mode="after")
    def _references_exist(self) -> FleetConfig:
        for name in self.accounts:
            if not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(f"accounts.{name}: names use letters, digits and ._-")
        for cname, customer in self.customers.items():
            for account in customer.accounts:
                if account not in self.accounts:
                    raise ValueError(f"customers.{cname}.accounts: unknown account '{account}'")
        names = set()
        for trader in self.traders:
            if trader.name in names:
                raise ValueError(f"traders: duplicate name '{trader.name}'")
            names.add(trader.name)
            if trader.customer not in self.customers:
                raise ValueError(f"traders.{trader.name}.customer: unknown '{trader.customer}'")
            if trader.account not in self.customers[trader.customer].accounts:
                raise ValueError(f"traders.{trader.name}.account: customer '{trader.customer}' "
                                 f"may not trade '{trader.account}'")
        return self


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        reason = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{source}: {key}: {reason}")
    return "\n".join(lines)


def load_config(path: Path | None) -> FleetConfig:
    """Load and validate `path`, or return the built-in default when `path` is None.

    Raises `ConfigError` naming the file and key for anything invalid.
    """
    if path is None:
        return FleetConfig()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc
