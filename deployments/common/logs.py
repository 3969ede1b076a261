"""Logging by Serve's conventions: our modules' records reach the replica logs, sessions are named.

Serve configures only the `ray.serve` logger (level and format from the app's `logging_config`),
so INFO from `deployments.*` would be dropped. `adopt_serve_logging()` hands the `deployments`
logger Serve's handlers and level, once per replica. `SessionLog` prefixes every line of a
session with its id, so one `grep <sessionid>` over the replica logs tells its story.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

OUR_LOGGER = "deployments"  # the package: every module logs to a child of it (getLogger(__name__))


def adopt_serve_logging() -> None:
    """Send `deployments.*` records through Serve's replica handlers, at Serve's level."""
    serve_logger = logging.getLogger("ray.serve")
    ours = logging.getLogger(OUR_LOGGER)
    ours.setLevel(serve_logger.getEffectiveLevel())
    if serve_logger.handlers:  # inside a replica; outside one, records propagate to the root as usual
        ours.handlers = list(serve_logger.handlers)
        ours.propagate = False


class SessionLog(logging.LoggerAdapter):
    """A logger whose lines start with `session <id>:`."""

    def __init__(self, logger: logging.Logger, session_id: str) -> None:
        super().__init__(logger, {"session_id": session_id})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        """Prefix the message with the session id."""
        return f"session {self.extra['session_id']}: {msg}", kwargs  # type: ignore[index]
