"""Settings for the whole suite."""

from hypothesis import settings

# Property tests check behaviour, never speed (that is measured in bench/): on a busy or
# throttled machine an example can take longer than hypothesis' default 200 ms deadline,
# which then fails a correct test. Every test is bounded by pytest-timeout instead.
settings.register_profile("tradefleet", deadline=None)
settings.load_profile("tradefleet")
