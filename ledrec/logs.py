"""Structured (JSON lines) logging for every ledrec process."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

from pythonjsonlogger.json import JsonFormatter


class _UTCJsonFormatter(JsonFormatter):
    """JSON lines whose time is ISO 8601 in UTC, to the millisecond
    (``2026-12-02T06:09:12.243+00:00``)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def setup_logging(level: str = "INFO", component: str = "ledrec") -> None:
    """Log one JSON object per line to stderr: time, level, component, message, extras."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _UTCJsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"component": component},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
