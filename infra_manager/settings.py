"""What one infrastructure manager process needs to know, resolved once at start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tradefleet.config import FleetConfig
from tradefleet.service.tokens import load_or_create_secrets


@dataclass(frozen=True)
class InfraSettings:
    infra_id: str
    join_token: str
    operator_token: str
    silence_timeout_s: float = 5.0
    heartbeat_interval_s: float = 1.0
    command_timeout_s: float = 10.0
    # The view is pushed to operators at most this often (coalescing bursts of snapshots).
    push_interval_s: float = 0.1

    def __repr__(self) -> str:  # never print the secrets
        return (f"InfraSettings(infra_id={self.infra_id!r}, "
                f"silence_timeout_s={self.silence_timeout_s})")

    @classmethod
    def from_config(cls, config: FleetConfig, data_dir: Path, infra_id: str) -> InfraSettings:
        """Tokens come from `config.security` when set, else from the data dir's secrets file."""
        security = config.security
        join = security.join_token.get_secret_value() if security.join_token else None
        operator = security.operator_token.get_secret_value() if security.operator_token else None
        if not (join and operator):
            stored = load_or_create_secrets(data_dir)
            join = join or stored["join_token"]
            operator = operator or stored["operator_token"]
        return cls(infra_id=infra_id, join_token=join, operator_token=operator,
                   silence_timeout_s=config.timeouts.silence_timeout_s,
                   heartbeat_interval_s=config.timeouts.heartbeat_interval_s)
