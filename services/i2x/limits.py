"""Request limits as settings (I2X_MAX_*), and quoting an input in an error without echoing it whole.

The servicers check every request against these before any work: an id, a JSON text, a page,
the unfinished jobs of a process. Each limit is a setting in i2x.config (docs/CONFIGURATION.md).
"""

from __future__ import annotations

import json

from i2x import config
from i2x.core.errors import InvalidArgument

# An error quotes at most this many characters of any input.
QUOTE_CHARS = 40
MAX_JSON_DEPTH = 20


def quote(value, limit: int = QUOTE_CHARS) -> str:
    """repr() of `value`'s first `limit` characters, with the full length when it was cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def int_setting(env: str, low: int, high: int) -> int:
    text = config.get(env)
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidArgument(f"{env} is {quote(text)}; give a whole number in {low}..{high}", field=env)
    return value


def max_id_length() -> int:
    return int_setting("I2X_MAX_ID_LENGTH", 1, 128)


def max_json_bytes() -> int:
    return int_setting("I2X_MAX_JSON_KB", 1, 1 << 20) * 1024


def max_jobs() -> int:
    return int_setting("I2X_MAX_JOBS", 1, 1_000_000)


def max_page_size() -> int:
    return int_setting("I2X_MAX_PAGE_SIZE", 1, 100_000)


def check_id_length(value: str, field: str) -> str:
    limit = max_id_length()
    if len(value) > limit:
        raise InvalidArgument(f"is {len(value)} characters long; give at most {limit} (I2X_MAX_ID_LENGTH): "
                              f"{quote(value)}", field=field)
    return value


def _depth(text: str) -> int:
    """Deepest nesting of [ and { outside strings, found without parsing (no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def json_object(text: str, field: str) -> dict:
    """A JSON object from a request field, within I2X_MAX_JSON_KB and MAX_JSON_DEPTH."""
    size = len(text.encode())
    if size > max_json_bytes():
        raise InvalidArgument(f"is {size} bytes; give at most {max_json_bytes()} (I2X_MAX_JSON_KB)", field=field)
    if _depth(text) > MAX_JSON_DEPTH:
        raise InvalidArgument(f"nests deeper than {MAX_JSON_DEPTH} levels; give a flat object of options",
                              field=field)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"not valid JSON ({str(exc)[:80]})", field=field) from None
    if not isinstance(value, dict):
        raise InvalidArgument("must be a JSON object", field=field)
    return value
