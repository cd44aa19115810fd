"""tradefleet: the user-facing face of the platform — CLI, configuration, client SDK and the small
service kit (HTTP errors, logs, metrics, tokens) shared by every process."""

__version__ = "0.1.0"
