"""The service's log format: one JSON object per line (default) or BentoML's text lines.

BentoML configures logging in each server process before the service class is built; this
re-formats the handlers it installed (root and `bentoml`, which carries the access log) rather
than adding new ones, so every line, BentoML's own included, comes out in one format that
CloudWatch Logs Insights or Loki can query by field. `imgclf.*` loggers log at INFO (BentoML
leaves the root at WARNING, which would hide model swaps).
"""

from __future__ import annotations

import logging
from typing import Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

# Attributes BentoML's trace filter adds for its text format only.
_TEXT_ONLY_ATTRS = ("levelname_bracketed", "trace_msg", "color_message")


def json_formatter() -> JsonFormatter:
    """{"time", "level", "logger", "message", + extras such as request_id, component}."""
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S%z",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        reserved_attrs=[*RESERVED_ATTRS, *_TEXT_ONLY_ATTRS],
    )


def configure_logging(log_format: Literal["json", "text"]) -> None:
    """Apply `serve.log_format` to the handlers BentoML set up in this process."""
    logging.getLogger("imgclf").setLevel(logging.INFO)
    if log_format != "json":
        return
    formatter = json_formatter()
    for name in ("", "bentoml"):
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
