"""Kraken spot trading-engine rate counter, mirrored locally (PROTOCOL_NOTES §6).

Kraken keeps one counter per client **per pair**, shared by REST, WebSocket and FIX.
Each transaction adds to it; it decays continuously by a per-tier rate; a transaction
that takes it past the tier's threshold is rejected with ``EOrder:Rate limit exceeded``.

Costs (order age = seconds since the order was created or last amended):

=============  =====  ====  =====  =====  =====  =====  ======
transaction    fixed  <5 s  <10 s  <15 s  <45 s  <90 s  <300 s
=============  =====  ====  =====  =====  =====  =====  ======
add            1      -     -      -      -      -      -
amend          1      3     2      1      -      -      -
edit           1      6     5      4      2      1      -
cancel         -      8     6      5      4      2      1
batch add      n/2
batch cancel   the cancel cost of each order
=============  =====  ====  =====  =====  =====  =====  ======

Tiers: Starter decays 1/s, threshold 60; Intermediate 2.34/s, 125; Pro 3.75/s, 180.

The local mirror exists so that risk-reducing transactions always get through: adds
(and amends/edits, which do not reduce risk) are refused *locally* when they would take
the counter above ``threshold - reserve``, keeping ``reserve`` units free for cancels.
Cancels are never refused locally -- an exchange rejection is cheaper than an order left
working. Clocks are passed in (monotonic seconds), so the module is pure.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Literal, TypeAlias

TransactionKind: TypeAlias = Literal["add", "amend", "edit", "cancel", "batch_add", "batch_cancel"]


@dataclass(frozen=True, slots=True)
class TierLimits:
    """Rate-counter parameters of one Kraken verification tier."""

    decay_per_second: float
    threshold: float
    max_open_orders_per_pair: int


class Tier(Enum):
    """Kraken client tiers and their documented limits."""

    STARTER = TierLimits(decay_per_second=1.0, threshold=60.0, max_open_orders_per_pair=60)
    INTERMEDIATE = TierLimits(decay_per_second=2.34, threshold=125.0, max_open_orders_per_pair=80)
    PRO = TierLimits(decay_per_second=3.75, threshold=180.0, max_open_orders_per_pair=225)


def _by_age(age: float, steps: tuple[tuple[float, float], ...]) -> float:
    for bound, cost in steps:
        if age < bound:
            return cost
    return 0.0


_AMEND_STEPS = ((5.0, 3.0), (10.0, 2.0), (15.0, 1.0))
_EDIT_STEPS = ((5.0, 6.0), (10.0, 5.0), (15.0, 4.0), (45.0, 2.0), (90.0, 1.0))
_CANCEL_STEPS = ((5.0, 8.0), (10.0, 6.0), (15.0, 5.0), (45.0, 4.0), (90.0, 2.0), (300.0, 1.0))

MAX_CANCEL_COST = 8.0
"""The most a single cancel can cost (order younger than 5 s)."""


def add_cost() -> float:
    """Counter increment of one add order."""
    return 1.0


def amend_cost(age: float) -> float:
    """Counter increment of amending an order ``age`` seconds after it was created/amended."""
    return 1.0 + _by_age(age, _AMEND_STEPS)


def edit_cost(age: float) -> float:
    """Counter increment of editing (cancel-replace) an order of the given age."""
    return 1.0 + _by_age(age, _EDIT_STEPS)


def cancel_cost(age: float) -> float:
    """Counter increment of cancelling an order of the given age."""
    return _by_age(age, _CANCEL_STEPS)


def batch_add_cost(count: int) -> float:
    """Counter increment of a batch of ``count`` adds."""
    return count / 2


def batch_cancel_cost(ages: Iterable[float]) -> float:
    """Counter increment of cancelling several orders at once."""
    return sum(cancel_cost(age) for age in ages)


@dataclass(frozen=True, slots=True)
class Admission:
    """Outcome of asking the local counter for permission to send a transaction.

    ``admitted`` false means: do not send; try again after ``retry_after`` seconds (or
    tell the algo). When admitted, the cost has been charged and ``counter`` is the new
    value. ``exceeds_venue_limit`` flags an admitted cancel that the venue will probably
    reject anyway (the counter was already over its threshold).
    """

    admitted: bool
    kind: TransactionKind
    cost: float
    counter: float
    limit: float
    retry_after: float = 0.0
    exceeds_venue_limit: bool = False


class PairRateCounter:
    """The decaying counter of one pair."""

    def __init__(
        self, limits: TierLimits, *, reserve: float, now: float, value: float = 0.0
    ) -> None:
        if not 0.0 <= reserve < limits.threshold:
            raise ValueError("reserve must be >= 0 and below the tier threshold")
        self.limits = limits
        self.reserve = reserve
        self._value = value
        self._at = now

    @property
    def add_limit(self) -> float:
        """Highest counter value an add (amend, edit) may bring the counter to."""
        return self.limits.threshold - self.reserve

    def value(self, now: float) -> float:
        """Counter value at ``now`` after decay (never below 0)."""
        elapsed = now - self._at
        if elapsed <= 0:
            return self._value
        return max(0.0, self._value - self.limits.decay_per_second * elapsed)

    def sync(self, value: float, now: float) -> None:
        """Adopt the venue's own reading (``ratecounter`` from the executions channel)."""
        self._value = value
        self._at = now

    def admit(self, kind: TransactionKind, cost: float, now: float) -> Admission:
        """Charge ``cost`` if the transaction may be sent now; see :class:`Admission`."""
        current = self.value(now)
        protective = kind in ("cancel", "batch_cancel")
        limit = self.limits.threshold if protective else self.add_limit
        after = current + cost
        if not protective and after > limit:
            retry_after = (after - limit) / self.limits.decay_per_second
            return Admission(False, kind, cost, current, limit, retry_after=retry_after)
        self._value = after
        self._at = max(now, self._at)
        return Admission(True, kind, cost, after, limit, exceeds_venue_limit=after > limit)


class OrderRateLimiter:
    """Per-pair counters plus the order ages the cost table needs.

    Order references are whatever the caller uses to name an order (``cl_ord_id``,
    ``order_id``). An order the limiter never saw (placed before a restart) is treated
    as brand new, i.e. charged the worst-case cost -- erring towards refusing adds early.
    """

    def __init__(self, tier: Tier = Tier.STARTER, *, reserve: float = MAX_CANCEL_COST) -> None:
        if not 0.0 <= reserve < tier.value.threshold:
            raise ValueError("reserve must be >= 0 and below the tier threshold")
        self.tier = tier
        self.reserve = reserve
        self._counters: dict[str, PairRateCounter] = {}
        self._order_times: dict[tuple[str, Hashable], float] = {}

    def _counter(self, pair: str, now: float) -> PairRateCounter:
        counter = self._counters.get(pair)
        if counter is None:
            counter = self._counters[pair] = PairRateCounter(
                self.tier.value, reserve=self.reserve, now=now
            )
        return counter

    def _age(self, pair: str, order: Hashable, now: float) -> float:
        placed = self._order_times.get((pair, order))
        return 0.0 if placed is None else max(0.0, now - placed)

    def counter(self, pair: str, now: float) -> float:
        """Current estimate of ``pair``'s counter."""
        return self._counter(pair, now).value(now)

    def sync(self, pair: str, ratecounter: float, now: float) -> None:
        """Adopt the venue's counter value for ``pair``."""
        self._counter(pair, now).sync(ratecounter, now)

    def add(self, pair: str, order: Hashable, now: float) -> Admission:
        """Ask to place ``order``; on admission its age starts now."""
        admission = self._counter(pair, now).admit("add", add_cost(), now)
        if admission.admitted:
            self._order_times[(pair, order)] = now
        return admission

    def amend(self, pair: str, order: Hashable, now: float) -> Admission:
        """Ask to amend ``order`` in place; on admission its age restarts."""
        cost = amend_cost(self._age(pair, order, now))
        admission = self._counter(pair, now).admit("amend", cost, now)
        if admission.admitted:
            self._order_times[(pair, order)] = now
        return admission

    def edit(self, pair: str, order: Hashable, new_order: Hashable, now: float) -> Admission:
        """Ask to edit (cancel-replace) ``order``; the replacement ``new_order`` starts now."""
        cost = edit_cost(self._age(pair, order, now))
        admission = self._counter(pair, now).admit("edit", cost, now)
        if admission.admitted:
            self._order_times.pop((pair, order), None)
            self._order_times[(pair, new_order)] = now
        return admission

    def cancel(self, pair: str, order: Hashable, now: float) -> Admission:
        """Cancel ``order``; always admitted (see module docstring)."""
        cost = cancel_cost(self._age(pair, order, now))
        admission = self._counter(pair, now).admit("cancel", cost, now)
        self._order_times.pop((pair, order), None)
        return admission

    def batch_add(self, pair: str, orders: Iterable[Hashable], now: float) -> Admission:
        """Ask to place several orders of one pair in one batch."""
        orders = list(orders)
        admission = self._counter(pair, now).admit("batch_add", batch_add_cost(len(orders)), now)
        if admission.admitted:
            for order in orders:
                self._order_times[(pair, order)] = now
        return admission

    def batch_cancel(self, pair: str, orders: Iterable[Hashable], now: float) -> Admission:
        """Cancel several orders of one pair; always admitted."""
        orders = list(orders)
        cost = batch_cancel_cost(self._age(pair, order, now) for order in orders)
        admission = self._counter(pair, now).admit("batch_cancel", cost, now)
        for order in orders:
            self._order_times.pop((pair, order), None)
        return admission

    def order_closed(self, pair: str, order: Hashable) -> None:
        """Forget an order that filled or expired (it can no longer be cancelled)."""
        self._order_times.pop((pair, order), None)
