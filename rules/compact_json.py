"""Compact JSON text for records and state, built once and reused (pure Python, no pyflink).

`json.JSONEncoder.encode` builds a new C encoder object (and a dict for its circular-reference
check) on every call. The job encodes ~5 values per alert (output records, the ledger, map
entries), so that set-up cost ~1.2 us per call, ~6 us per alert. `encoder()` builds the C
encoder once; its text is the same as `json.dumps(value, separators=(",", ":"),
sort_keys=...)` (tests/test_compact_json.py). Without the circular check a self-containing value
raises RecursionError instead of ValueError: the core never builds one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _json_encoder
from typing import Any


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encoder(sort_keys: bool = False) -> Callable[[Any], str]:
    """value -> compact JSON text (ASCII, NaN allowed, as json.dumps)."""
    make = _json_encoder.c_make_encoder
    if make is None:  # an interpreter without the C accelerator: the standard path
        return json.JSONEncoder(separators=(",", ":"), sort_keys=sort_keys).encode
    iterencode = make(None, _not_serializable, _json_encoder.encode_basestring_ascii, None, ":", ",",
                      sort_keys, False, True)

    def encode(value: Any) -> str:
        return "".join(iterencode(value, 0))

    return encode
