"""The position manager of an account's order owner: pre-trade risk limits, positions from
fills, signals turned into orders, and exits held on the server. Pure, no I/O: the Broker
worker's shell feeds it inputs and carries out the effects it returns (see `manager`).

    manager    PositionManager.receive(input, now) → effects; replay / resume / snapshot
    limits     RiskLimits, RiskEngine.check → Accept | Refuse(code, message)
    positions  PositionBook: quantity, average price, realized PnL, fees, daily loss
    signals    sizing a signal and the orders it becomes
    exits      stop-loss, take-profit, trailing stop, time exit; fire once, never oversize
    records    the decisions the manager journals, each replayable on its own
    working    the manager's view of the account's orders
    prices     latest bid / ask / last per instrument
    amounts    exact arithmetic and how amounts read in messages
"""
