"""The Market worker: algo sessions, market-data fan-out, and order routing to Broker workers.

`core` and the modules it uses are pure (no sockets, no asyncio); `service` is the aiohttp
shell the worker runtime runs, and `broker_link` the WebSocket to each account's Broker.
"""
