"""Worker processes: Broker, Market and Trader workers and the runtime they share."""
