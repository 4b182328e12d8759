"""Encoding of a trace's values: arrays as blobs, metadata as JSON, and their checked decoding.

Arrays are little-endian float32 blobs with a JSON shape; there is no pickle anywhere. Decoding
trusts nothing in the file: a blob of the wrong length, a shape that is not a flat list of
sizes, metadata that is not JSON or nests deeper than ``MAX_META_DEPTH`` raise
:class:`TraceError` naming what was being read, never a raw numpy or JSON error. This module
needs numpy and the standard library only (no torch).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from geomtrace._errors import InvalidInputError, TraceError

#: the stored dtype of every array: little-endian float32
DTYPE = "<f4"


def to_blob(array: Any) -> tuple[str, bytes]:
    """``(JSON shape, float32 bytes)`` of an array or a (small) torch tensor."""
    if hasattr(array, "detach"):  # a torch tensor: only small K x K arrays come here
        array = array.detach().float().cpu().numpy()
    array = np.ascontiguousarray(array, dtype=DTYPE)
    return json.dumps(list(array.shape)), array.tobytes()


#: a stored shape: a flat JSON list of sizes (checked by pattern before parsing, so a hostile
#: value such as 100,000 nested '[' never reaches the recursive JSON decoder)
_SHAPE = re.compile(r"\[\s*(?:\d{1,18}\s*(?:,\s*\d{1,18}\s*){0,31})?\]")
#: the deepest nesting accepted in a JSON metadata value (configs are a few levels deep)
MAX_META_DEPTH = 100


def shown(value: Any, limit: int = 40) -> str:
    """``repr`` of a stored value for an error message, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), without recursion."""
    depth, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            depth = max(depth, level + 1)
            stack.extend((x, level + 1) for x in item)
    return depth


def from_blob(shape: Any, data: Any, what: str = "array") -> np.ndarray:
    """Decode one stored array, checking everything a damaged file can get wrong.

    ``what`` names the array in the error (e.g. "group 'encoder' at step 10").
    """
    dims = None
    if isinstance(shape, str) and _SHAPE.fullmatch(shape):
        dims = json.loads(shape)
    if not isinstance(dims, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims
    ):
        raise TraceError(f"{what}: shape {shown(shape)} is not a JSON list of sizes")
    if not isinstance(data, bytes):
        raise TraceError(f"{what}: data is {type(data).__name__}, not a blob of float32")
    expected = 4 * math.prod(dims)
    if len(data) != expected:
        raise TraceError(
            f"{what}: blob of {len(data)} bytes, expected {expected} for shape {dims} (float32)"
        )
    with np.errstate(invalid="ignore"):  # signalling NaNs (damaged bytes) stay NaN quietly
        return np.frombuffer(data, dtype=DTYPE).reshape(dims).astype(np.float64)


def encode_meta(key: str, value: Any) -> str:
    """The JSON text stored for metadata ``key``; a value JSON cannot hold is refused."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"meta {key!r} is not JSON-serialisable: {err}") from None


def decode_meta(key: str, value: Any, where: Any) -> Any:
    """The decoded JSON value of metadata ``key``; ``where`` (the file) names it in errors."""
    try:
        decoded = json.loads(value)
    except (TypeError, ValueError):
        raise TraceError(
            f"{where}: meta {key!r} is not valid JSON ({str(value)[:40]!r}); the file is damaged"
        ) from None
    except RecursionError:
        raise TraceError(
            f"{where}: meta {key!r} is not valid JSON ({str(value)[:40]!r}...: "
            "nested deeper than Python's JSON decoder can follow); the file is damaged"
        ) from None
    if json_depth(decoded) > MAX_META_DEPTH:
        # Parsable, but printing or copying it (inspect, analyze) would recurse as deep.
        raise TraceError(
            f"{where}: meta {key!r} is nested deeper than {MAX_META_DEPTH} levels "
            f"({str(value)[:40]!r}...); the file is damaged"
        )
    return decoded


def is_int(value: Any) -> bool:
    """An integer as SQLite returns it (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)
