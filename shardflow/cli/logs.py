"""Log output of the command line: text for people, JSON lines for log pipelines.

``--log-format json`` writes one JSON object per line with ``ts`` (UTC, ISO 8601),
``level``, ``logger``, ``message`` and, for lines logged while a workflow runs (or
passed as ``extra=``), ``workflow_id``, ``shard`` and ``attempt``; ``exception`` holds
a traceback. Both formats pass every line through :class:`RedactSecrets` first, so a
password of the cluster's DSNs never reaches the log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import TextIO

from shardflow.cli.output import scrub_secrets
from shardflow.engine.context import current_run

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("workflow_id", "shard", "attempt")


class WorkflowContext(logging.Filter):
    """Adds ``workflow_id``, ``shard`` and ``attempt`` of the run this thread executes
    (unless the call passed them itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        run = current_run()
        if run is not None:
            for name, value in (
                ("workflow_id", run.workflow_id),
                ("shard", run.shard),
                ("attempt", run.attempt),
            ):
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True


class RedactSecrets(logging.Filter):
    """Replaces the cluster's DSNs and their passwords in each line with ``***``.

    ``dsns`` is asked on every line: the config is loaded after logging starts.
    """

    def __init__(self, dsns: Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self._dsns = dsns

    def filter(self, record: logging.LogRecord) -> bool:
        # Even without a config (not loaded yet, or invalid), password-like parameters
        # in the text are masked.
        dsns = list(self._dsns())
        message = record.getMessage()
        scrubbed = scrub_secrets(message, dsns)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_secrets(record.exc_text, dsns)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False, default=str)


def make_handler(
    stream: TextIO, log_format: str, dsns: Callable[[], Iterable[str]]
) -> logging.Handler:
    """A stream handler in ``log_format`` (``text`` or ``json``) that redacts ``dsns``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handler.addFilter(WorkflowContext())
    handler.addFilter(RedactSecrets(dsns))
    return handler
