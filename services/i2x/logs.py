"""Log lines of the services: text (default) or one JSON object per line (I2X_LOG_FORMAT=json).

Every line carries `service`, `job_id` and `run_id` when they are known: from the record's
own attributes (a call with `extra={"job_id": ..., "run_id": ...}`), else from the job context
(log_context(), which the job wrapper in i2x.observability sets around a job's work), else the
service this process serves. A JSON line:

    {"time": "2026-12-03T14:05:09.123Z", "level": "INFO", "service": "training",
     "job_id": "4f2c...", "run_id": "r1", "logger": "i2x.jobs.manager", "message": "..."}

plus "exception" (the traceback) when the record has one.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from typing import Iterator

from i2x import config
from i2x.core.errors import InvalidArgument

IDS = ("service", "job_id", "run_id")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

_context: contextvars.ContextVar[dict] = contextvars.ContextVar("i2x_log_context", default={})


@contextlib.contextmanager
def log_context(**ids: str) -> Iterator[None]:
    """Lines logged inside (in this thread or task) carry these ids unless they name their own."""
    token = _context.set({**_context.get(), **{k: v for k, v in ids.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts service, job_id and run_id on every record (empty string when unknown)."""

    def __init__(self, service: str = ""):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        for name in IDS:
            if not getattr(record, name, None):
                setattr(record, name, context.get(name) or (self.service if name == "service" else ""))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601, ms), level, service, job_id, run_id, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {"time": f"{seconds}.{int(record.msecs):03d}Z", "level": record.levelname}
        for name in IDS:
            entry[name] = str(getattr(record, name, "") or "")
        entry["logger"] = record.name
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, with " [job=... run=...]" after the message when the record has them."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        ids = [f"{label}={getattr(record, name)}" for name, label in (("job_id", "job"), ("run_id", "run"))
               if getattr(record, name, "")]
        return f"{line} [{' '.join(ids)}]" if ids else line


def log_format(setting: str | None = None) -> str:
    """I2X_LOG_FORMAT: text or json."""
    value = config.get("I2X_LOG_FORMAT", setting).strip().lower()
    if value not in FORMATS:
        raise InvalidArgument(f"I2X_LOG_FORMAT is {value!r}; use one of {list(FORMATS)}", field="I2X_LOG_FORMAT")
    return value


def make_handler(service: str = "", fmt: str | None = None, stream=None) -> logging.Handler:
    """A stream handler (stderr by default) in the chosen format, with the ids filled in."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format(fmt) == "json" else TextFormatter())
    handler.addFilter(ContextFilter(service))
    return handler


def configure(service: str = "", *, level: str | None = None, fmt: str | None = None) -> logging.Handler:
    """The root logger of a service process: one handler (I2X_LOG_FORMAT) at I2X_LOG_LEVEL."""
    handler = make_handler(service, fmt)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.get("I2X_LOG_LEVEL", level).upper())
    return handler
