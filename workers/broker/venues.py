"""Which adapter holds an account's venue session: the one place that maps a venue to its code.

The venue comes from the configuration (`accounts.<name>.venue`). Adapters are imported only
when chosen, so a Broker worker loads only its own venue's code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from pydantic import ValidationError

from tradefleet.config import FleetConfig
from workers.broker.adapters.base import Adapter, FatalAdapterError


def adapter_factory(config: FleetConfig, data_dir: Path, service_token: str
                    ) -> Callable[[str], Adapter]:
    """A function building the adapter for an account. It raises `FatalAdapterError` (with a
    sentence for the operator) when the account's venue cannot be used from here."""

    def build(account: str) -> Adapter:
        section = config.accounts.get(account)
        if section is None:
            raise FatalAdapterError(f"account {account!r} is not in the configuration")
        if section.venue == "paper":
            return _paper(account, data_dir, service_token)
        if section.credentials_env is None:
            raise FatalAdapterError(
                f"account {account!r} trades on {section.venue!r} but has no credentials_env; "
                "set accounts.<name>.credentials_env to the prefix of its key variables")
        if section.venue == "kraken":
            return _kraken_spot(account, section.credentials_env, section.endpoints)
        if section.venue == "kraken-futures":
            return _kraken_futures(account, section.credentials_env, section.endpoints)
        raise FatalAdapterError(f"venue {section.venue!r} of account {account!r} is unknown")

    return build


def _paper(account: str, data_dir: Path, service_token: str) -> Adapter:
    from workers.broker.adapters.paper.remote import RemotePaperAdapter, read_paper_url

    url = read_paper_url(data_dir)
    if url is None:
        raise FatalAdapterError(
            f"the paper exchange has not announced its URL in {data_dir / 'run' / 'paper.url'}; "
            f"start it (tradefleet up does) before assigning account {account!r}")
    if not service_token:
        raise FatalAdapterError("TRADEFLEET_SERVICE_TOKEN is not set; the paper exchange "
                                "needs the deployment's service token")
    return RemotePaperAdapter(url, service_token, account,
                              locate=partial(read_paper_url, data_dir))


def _kraken_spot(account: str, prefix: str, endpoints: dict[str, str]) -> Adapter:
    from workers.broker.adapters.kraken.adapter import KrakenSpotAdapter
    from workers.broker.adapters.kraken.config import KrakenSpotConfig

    try:
        return KrakenSpotAdapter(KrakenSpotConfig.from_env(account, prefix, **endpoints))
    except KeyError as exc:
        raise FatalAdapterError(f"account {account!r}: {exc.args[0]}") from None
    except ValidationError as exc:  # never echo the secret: name the fields only
        raise FatalAdapterError(f"account {account!r}: invalid Kraken settings "
                                f"({_fields(exc)})") from None


def _fields(exc: ValidationError) -> str:
    return ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())


def _kraken_futures(account: str, prefix: str, endpoints: dict[str, str]) -> Adapter:
    from workers.broker.adapters.kraken_futures.adapter import KrakenFuturesAdapter
    from workers.broker.adapters.kraken_futures.config import KrakenFuturesConfig

    names = (f"{prefix}_API_KEY", f"{prefix}_API_SECRET")
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        raise FatalAdapterError(f"account {account!r}: environment variable {missing[0]} "
                                "is not set")
    try:
        config = KrakenFuturesConfig.model_validate({
            "account": account, "api_key": os.environ[names[0]],
            "api_secret": os.environ[names[1]], **endpoints})
    except ValidationError as exc:  # never echo the secret: name the fields only
        raise FatalAdapterError(f"account {account!r}: invalid Kraken Futures settings "
                                f"({_fields(exc)})") from None
    return KrakenFuturesAdapter(config)
