"""The built-in paper exchange: a real matching engine with a synthetic or replayed market,
behind the same `Adapter` contract as every live venue."""
