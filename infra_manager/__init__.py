"""InfrastructureManager: aggregates every location's managers into one fleet view.

Managers check in (`POST /v1/managers/checkin`, join token); the infra manager then opens and
keeps open a status pipe to each. Operators read the fleet (`GET /v1/fleet`, `GET /v1/stream`),
send commands that are forwarded to the owning manager, and use the dashboard at `/`.
Run it with `python -m infra_manager`.
"""

from infra_manager.fleet_state import FleetState, ManagerLink
from infra_manager.settings import InfraSettings
from infra_manager.web_app import create_app

__all__ = ["FleetState", "InfraSettings", "ManagerLink", "create_app"]
