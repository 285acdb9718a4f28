"""Object keys, built only from validated ids (no '..', no '/', no absolute paths)."""

from __future__ import annotations

import re

from i2x.core.errors import InvalidArgument

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_id(value: str, field: str = "id") -> str:
    """Return `value` when it is a safe id: letters, digits, '_', '-', '.', at most 128, no '..'."""
    if not isinstance(value, str) or not _ID.match(value) or ".." in value:
        from i2x.limits import quote

        raise InvalidArgument(
            f"{quote(value)} is not a valid id: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, without '..' or '/'",
            field=field,
        )
    return value


def run_key(run_id: str, *parts: str) -> str:
    """Key of an artifact of a run: runs/<run_id>/<parts...>. Parts are our own constants or ids."""
    validate_id(run_id, "run_id")
    for part in parts:
        if part.startswith("/") or ".." in part.split("/"):
            raise InvalidArgument(f"unsafe key part {part!r}", field="key")
    return "/".join(("runs", run_id) + parts)


def step_name(step: int) -> str:
    """File stem for a checkpoint step, zero-padded so keys sort by step: step-000040."""
    return f"step-{int(step):06d}"
