"""Structured server logs: one JSON object per line on stderr (or plain text), for uvicorn's own
messages and pressa's (startup, shutdown, one line per request with its id, status and duration)."""

from __future__ import annotations

import json
import logging
import logging.config
import time

ACCESS = logging.getLogger("pressa.access")
SERVER = logging.getLogger("pressa.server")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        return f"{self.formatTime(record)} {record.levelname.lower():7s} {record.getMessage()} {fields}".rstrip()


def log_config(fmt: str = "json", level: str = "info") -> dict:
    """A logging.config dict (also given to uvicorn, so its messages come out the same way)."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"main": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
            "handlers": {"stderr": handler},
            "loggers": {name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
                        for name in ("uvicorn", "uvicorn.error", "pressa.access", "pressa.server")}
            | {"uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False}}}


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields) -> None:
    logger.log(level, msg, extra={"fields": fields})
