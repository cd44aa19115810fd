"""Human tables for the fleet document."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _age(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}s"


def render_fleet(fleet: dict[str, Any]) -> str:
    parts: list[str] = []
    for loc in fleet.get("locations", []):
        counts = ", ".join(f"{n} {s}" for s, n in sorted(loc.get("counts", {}).items()) if n)
        parts.append(f"location {loc['name']}: {loc['state']}" + (f" ({counts})" if counts else ""))
        mrows = [[m["kind"], m["id"], m["state"], str(m["epoch"]), str(m["desired"]),
                  str(len(m.get("workers", []))), _age(m.get("last_seen_age_s")), m["url"]]
                 for m in loc.get("managers", [])]
        parts.append(table(["KIND", "MANAGER", "STATE", "EPOCH", "DESIRED", "WORKERS", "SEEN",
                            "URL"], mrows))
        wrows = []
        for m in loc.get("managers", []):
            for w in m.get("workers", []):
                load = w.get("load", {})
                wrows.append([w["kind"], w["id"], w["state"], str(w.get("pid") or "-"),
                              str(w["epoch"]), str(load.get("sessions", 0)),
                              _age(w.get("last_heartbeat_age_s")), w.get("url") or "-"])
        parts.append("")
        parts.append(table(["KIND", "WORKER", "STATE", "PID", "EPOCH", "SESSIONS", "HEARTBEAT",
                            "URL"], wrows))
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def _workers(fleet: dict[str, Any], kind: str, slot: str
             ) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(location, worker, its status info) of every `kind` worker whose info names a
    `slot` (an account, a trader)."""
    for loc in fleet.get("locations", []):
        for m in loc.get("managers", []):
            for w in m.get("workers", []):
                info = w.get("info", {})
                if w.get("kind") == kind and info.get(slot):
                    yield loc["name"], w, info


def render_accounts(fleet: dict[str, Any]) -> str:
    """Per account (from its order owner's status): orders, fills, positions."""
    rows = []
    for location, w, info in _workers(fleet, "broker", "account"):
        positions = info.get("positions") or {}
        pos = ", ".join(f"{k} {v}" for k, v in sorted(positions.items())) or "flat"
        pnl = info.get("position_pnl") or {}
        if pnl:
            pos = ", ".join(
                f"{k} {v['qty']} @ {v.get('avg_price') or '-'} "
                f"(realized {v['realized_pnl']}, unrealized "
                f"{v.get('unrealized_pnl') or '-'})" for k, v in sorted(pnl.items()))
        kill = info.get("kill_switch")
        rows.append([info["account"], location, w["id"], str(info.get("venue", "-")),
                     "yes" if info.get("connected") else "no",
                     str(info.get("orders", 0)), str(info.get("open_orders", 0)),
                     str(info.get("fills", 0)), "ON" if kill else "off", pos])
    fleet_lines = _fleet_kill_switch_lines(fleet)
    if not rows:
        return "".join(line + "\n" for line in fleet_lines)
    return "".join(line + "\n" for line in fleet_lines) + table(
        ["ACCOUNT", "LOCATION", "OWNER", "VENUE", "CONNECTED", "ORDERS", "OPEN", "FILLS",
         "KILL", "POSITIONS"], rows) + "\n"


def render_traders(fleet: dict[str, Any]) -> str:
    """Per hosted trader (from its Trader worker's status): status and its own PnL."""
    rows = []
    for location, w, info in _workers(fleet, "trader", "trader"):
        pnl = info.get("pnl") or {}
        lines = pnl.get("instruments") or {}
        positions = ", ".join(f"{k} {v['position']} @ {v.get('avg_cost') or '-'}"
                              for k, v in sorted(lines.items())) or "flat"
        totals = pnl.get("totals") or {}
        realized = ", ".join(f"{t.get('realized')} {c}"
                             for c, t in sorted(totals.items())) or "0"
        unrealized = ", ".join(f"{t.get('unrealized') or '-'} {c}"
                               for c, t in sorted(totals.items())) or "0"
        status = str(info.get("status", "-"))
        if info.get("last_error"):
            status += f" ({str(info['last_error'])[:60]})"
        rows.append([str(info["trader"]), location, w["id"], str(info.get("account", "-")),
                     status, str(pnl.get("fills", 0)), positions, realized, unrealized])
    if not rows:
        return ""
    return table(["TRADER", "LOCATION", "WORKER", "ACCOUNT", "STATUS", "FILLS", "POSITIONS",
                  "REALIZED", "UNREALIZED"], rows) + "\n"


def _fleet_kill_switch_lines(fleet: dict[str, Any]) -> list[str]:
    """One line per location whose BrokerManager holds the fleet-wide kill switch on."""
    lines = []
    for loc in fleet.get("locations", []):
        for m in loc.get("managers", []):
            switch = (m.get("info") or {}).get("fleet_kill_switch")
            if m.get("kind") == "broker" and isinstance(switch, dict) and switch.get("active"):
                why = f": {switch['reason']}" if switch.get("reason") else ""
                lines.append(f"FLEET-WIDE KILL SWITCH ON at {loc['name']} "
                             f"(by {switch.get('by') or 'operator'}{why}); accounts opened "
                             "later inherit it")
    return lines
