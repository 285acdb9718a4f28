"""Domain errors. Each names the field at fault and says what to change.

The gRPC interceptor maps them to status codes in one place (i2x.server): InvalidArgument ->
INVALID_ARGUMENT, NotFound -> NOT_FOUND, FailedPrecondition -> FAILED_PRECONDITION,
Unavailable -> UNAVAILABLE, Unauthenticated -> UNAUTHENTICATED. In-process callers see them
as ordinary exceptions (InvalidArgument is also a ValueError, NotFound a LookupError).
"""

from __future__ import annotations


class I2XError(Exception):
    """Base of every error the method and the services raise on purpose."""

    grpc_code = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class InvalidArgument(I2XError, ValueError):
    grpc_code = "INVALID_ARGUMENT"


class NotFound(I2XError, LookupError):
    grpc_code = "NOT_FOUND"


class FailedPrecondition(I2XError):
    grpc_code = "FAILED_PRECONDITION"


class Unavailable(I2XError):
    grpc_code = "UNAVAILABLE"


class Unauthenticated(I2XError):
    grpc_code = "UNAUTHENTICATED"


class Cancelled(I2XError):
    grpc_code = "CANCELLED"


def check_fields(cls, data: dict, field: str) -> dict:
    """`data` as keyword arguments of the dataclass `cls`: an unknown key is an InvalidArgument
    naming it and listing the valid ones, never silently dropped (a typo would change nothing)."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidArgument(f"unknown keys {unknown}; valid keys are {sorted(known)}", field=field)
    return dict(data)


class ResourceExhausted(I2XError):
    grpc_code = "RESOURCE_EXHAUSTED"


class AlreadyExists(I2XError):
    grpc_code = "ALREADY_EXISTS"
