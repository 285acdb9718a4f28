"""How the `i2x` command turns an exception into one or two lines for a person.

A user error (a bad flag value, a missing run, no service listening, a missing extra) prints its
message and exits with status 2; a job that failed exits 1; anything else is a bug: one line
and exit 1. `--debug` prints the traceback as well.
"""

from __future__ import annotations

DIST = "i2x-explain"
SERVER_EXTRA_HINT = f"pip install '{DIST}[server]'"
# Modules of the `server` extra (pyproject.toml): a missing one means the SDK-only install.
SERVER_MODULES = {"torch", "torchvision", "sklearn", "hdbscan", "ray", "safetensors", "matplotlib",
                  "grpc_health", "grpc_reflection", "mlxtend", "tqdm"}
USER_ERROR, FAILED = 2, 1


class UserError(Exception):
    """A mistake of the caller that the message explains; exit status 2."""


def describe(exc: BaseException) -> tuple[str, int]:
    """(message, exit status) for an exception that reached main()."""
    import grpc

    from i2x.client import JobFailed, ServiceUnavailable
    from i2x.core.errors import I2XError

    if isinstance(exc, UserError):
        return str(exc), USER_ERROR
    if isinstance(exc, ServiceUnavailable):
        return str(exc), USER_ERROR
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in SERVER_MODULES:
        return (f"this command needs the services' packages (no module {exc.name!r}): "
                f"{SERVER_EXTRA_HINT}"), USER_ERROR
    if isinstance(exc, I2XError):
        return str(exc), USER_ERROR
    if isinstance(exc, JobFailed):
        return str(exc), FAILED
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            return (f"a service is unavailable ({exc.details()}): start the services with `i2x up`, or point "
                    "I2X_ENDPOINT at them"), USER_ERROR
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return f"{exc.details()} (give the services' token: --token or I2X_API_TOKEN)", USER_ERROR
        user = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.PERMISSION_DENIED}
        return f"{code.name}: {exc.details()}", USER_ERROR if code in user else FAILED
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return str(exc), USER_ERROR
    if isinstance(exc, (ValueError, LookupError)):
        return str(exc), USER_ERROR
    return f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", FAILED
