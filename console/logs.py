"""The console's access log without personal data: uvicorn's log config with a filter that drops
the client address and the query string and hides the id in `/users/<id>` (the user lookup and the
streamers' appeal links name users there)."""

from __future__ import annotations

import copy
import logging
import re

_USER_PATH = re.compile(r"^/users/[^/?]+")


def redact_path(path: str) -> str:
    path = path.split("?", 1)[0]
    return _USER_PATH.sub("/users/-", path)


class RedactAccess(logging.Filter):
    """uvicorn.access records carry (client address, method, path, http version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            _, method, path, version, status = record.args
            record.args = ("-", method, redact_path(str(path)), version, status)
        return True


def log_config() -> dict:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": RedactAccess}
    config["handlers"]["access"]["filters"] = ["redact"]
    return config
