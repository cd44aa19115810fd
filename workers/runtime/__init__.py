"""The runtime every worker shares: check-in, control pipe, health, metrics, orphan handling."""
