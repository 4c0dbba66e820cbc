"""The published JSON Schemas of the job's output records (connectors/schemas/*-v1.json), compiled
for validation: by tests, and by consumers that want to check what they read."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema

BASE_URL = "https://schemas.stream-penalty.dev/"
# Output kind (rules.records.KINDS) -> schema file.
SCHEMA_FILES = {
    "enforcement": "enforcement-v1.json",
    "notification": "notification-v1.json",
    "review": "review-v1.json",
    "audit": "audit-v1.json",
    "dlq": "dlq-v1.json",
    "ledger_snapshot": "ledger-snapshot-v1.json",
}


def load(file_name: str) -> dict[str, Any]:
    return json.loads(resources.files("connectors").joinpath(f"schemas/{file_name}").read_text("utf-8"))


def _local(url: str) -> dict[str, Any]:
    # $ref between our schemas resolves to the files shipped here, never to the network.
    if not url.startswith(BASE_URL):
        raise ValueError(f"schema reference outside this project: {url}")
    return load(url[len(BASE_URL):])


@cache
def validator(kind: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(load(SCHEMA_FILES[kind]), handlers={"https": _local})


def validate(kind: str, record: Any) -> None:
    """Raise fastjsonschema.JsonSchemaValueException when `record` breaks the schema of `kind`."""
    validator(kind)(record)
