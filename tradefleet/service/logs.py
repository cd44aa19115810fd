"""Structured logs: one JSON object per line, with the process identity bound to every line."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(level: str = "INFO", **bound: Any) -> structlog.stdlib.BoundLogger:
    """Configure structlog for this process and return a logger with `bound` context.

    Call once at process start. Bound keys (e.g. worker_id, location, kind) appear on every line.
    """
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(**bound)
    return structlog.get_logger()  # type: ignore[no-any-return]
