"""grpc.aio server bootstrap shared by the four services.

start_server() adds what every service needs: the grpc.health.v1 health service, server
reflection (grpcurl lists and calls everything), the error interceptor (domain errors ->
status codes, in this one place), bearer-token auth, message-size limits and TLS.
serve_forever() turns SIGTERM/SIGINT into a graceful stop.

Ports: port=None reads I2X_PORT, whose 0 means the service's default port
(config.SERVICE_PORTS); an explicit port=0 means any free port (tests), and the bound port is
returned.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import signal
import uuid
from pathlib import Path
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from i2x import config
from i2x.core.errors import I2XError, InvalidArgument, Unavailable
from i2x.grpc_handlers import rebuild_handler

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Probes and discovery stay open when a token is required.
OPEN_SERVICES = (HEALTH_SERVICE, reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection")


def _status(error: I2XError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.grpc_code, grpc.StatusCode.INTERNAL)


class Undecodable:
    """What a request deserializer gives for bytes that are not the request message: the handler
    answers INVALID_ARGUMENT (a deserializer that raises makes gRPC answer UNKNOWN)."""

    def __init__(self, error: BaseException):
        self.error = error


def _tolerant(deserializer: Callable | None) -> Callable | None:
    if deserializer is None:
        return None

    def decode(data: bytes):
        try:
            return deserializer(data)
        except Exception as error:  # noqa: BLE001  (protobuf's DecodeError, or anything a parser raises)
            return Undecodable(error)

    return decode


def _not_parsed(data: bytes) -> bytes:
    """The deserializer of a refused call: the body is never parsed before the caller is known."""
    return data


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """I2XError -> its status code, details "field: message"; anything else -> INTERNAL with a log id."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return rebuild_handler(handler, lambda behaviour, streams: self._wrap(method, behaviour, streams), _tolerant)

    @staticmethod
    async def _abort(method: str, error: BaseException, context: grpc.aio.ServicerContext) -> None:
        if isinstance(error, I2XError):
            # A routine lookup of something absent (job, run, key) is not news: DEBUG.
            (log.debug if error.grpc_code == "NOT_FOUND" else log.info)("%s -> %s: %s", method, error.grpc_code, error)
            await context.abort(_status(error), str(error))
        incident = uuid.uuid4().hex[:12]
        log.error("%s failed (id=%s)", method, incident, exc_info=error)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (see server log, id={incident})")

    def _wrap(self, method: str, behaviour: Callable, streams_out: bool) -> Callable:
        abort = self._abort
        if streams_out:
            async def stream(request_or_iterator, context):
                if isinstance(request_or_iterator, Undecodable):
                    await _refuse_undecodable(method, context)
                try:
                    produced = behaviour(request_or_iterator, context)
                    if inspect.isasyncgen(produced):
                        async for item in produced:
                            yield item
                    elif inspect.isawaitable(produced):  # a coroutine that uses context.write()
                        await produced
                    elif produced is not None:  # a plain (sync) iterator
                        for item in produced:
                            yield item
                except grpc.aio.AbortError:
                    raise  # the servicer chose its own status
                except Exception as error:
                    await abort(method, error, context)

            return stream

        async def unary(request_or_iterator, context):
            if isinstance(request_or_iterator, Undecodable):
                await _refuse_undecodable(method, context)
            try:
                result = behaviour(request_or_iterator, context)
                return await result if inspect.isawaitable(result) else result
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await abort(method, error, context)

        return unary


async def _refuse_undecodable(method: str, context: grpc.aio.ServicerContext) -> None:
    log.info("%s -> INVALID_ARGUMENT: undecodable request body", method)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"request: the body is not a {method.rsplit('/', 1)[-1]} request message; send the "
                        "protobuf message of this method (see protos/i2x/v1)")


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires "authorization: Bearer <token>" on every call but health and reflection."""

    def __init__(self, token: str):
        if not token:
            raise InvalidArgument("an empty token would let everyone in; leave auth off instead",
                                  field="token")
        self._expected = f"Bearer {token}".encode()

    def _allowed(self, handler_call_details) -> bool:
        service = handler_call_details.method.lstrip("/").split("/", 1)[0]
        if service in OPEN_SERVICES:
            return True
        for key, value in handler_call_details.invocation_metadata or ():
            if key.lower() == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(given, self._expected)  # constant time
        return False

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or self._allowed(handler_call_details):
            return handler

        def deny(behaviour, streams_out):
            if streams_out:
                async def deny_stream(request_or_iterator, context):
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                        "missing or wrong token: send metadata 'authorization: Bearer <token>'")
                    yield  # makes this an async generator, like the handler it replaces

                return deny_stream

            async def deny_unary(request_or_iterator, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    "missing or wrong token: send metadata 'authorization: Bearer <token>'")

            return deny_unary

        return rebuild_handler(handler, deny, lambda original: _not_parsed)  # refused before the body is parsed


def _resolve_port(service: str, port: int | None) -> int:
    if port is None:
        text = config.get("I2X_PORT")
        try:
            port = int(text)
        except ValueError:
            raise InvalidArgument(f"I2X_PORT is {text!r}; give a port number", field="port") from None
        if port == 0:
            if service not in config.SERVICE_PORTS:
                raise InvalidArgument(f"service {service!r} has no default port; give a port", field="port")
            port = config.SERVICE_PORTS[service]
    if not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"port {port} is out of range 0-65535", field="port")
    return int(port)


def _read_pem(path: str, field: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise InvalidArgument(f"cannot read {path!r}: {error.strerror}", field=field) from None


async def start_server(
    service: str,
    register: Callable[[grpc.aio.Server], Iterable[str]],
    *,
    host: str | None = None,
    port: int | None = None,
    token: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    max_message_mb: float | None = None,
    health_port: int | None = None,
) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """Build, bind and start a server; returns (server, bound port, health servicer).

    health_port (I2X_HEALTH_PORT; 0 = off) adds a second, plaintext server that serves only
    grpc.health.v1 from the same health servicer: Kubernetes' native gRPC probes cannot speak
    TLS, so with TLS on they probe this port. serve_forever stops it with the main server.
    """
    host = config.get("I2X_HOST", host)
    port = _resolve_port(service, port)
    token = config.get("I2X_API_TOKEN", token)
    tls_cert = config.get("I2X_TLS_CERT", tls_cert)
    tls_key = config.get("I2X_TLS_KEY", tls_key)
    text = config.get("I2X_MAX_MESSAGE_MB", None if max_message_mb is None else str(max_message_mb))
    try:
        size_mb = float(text)
    except ValueError:
        raise InvalidArgument(f"I2X_MAX_MESSAGE_MB is {text!r}; give a number of MiB", field="max_message_mb") from None
    if not 0 < size_mb < 2048:  # gRPC lengths are signed 32-bit
        raise InvalidArgument(f"max message size {size_mb} MiB must be above 0 and below 2048",
                              field="max_message_mb")
    if bool(tls_cert) != bool(tls_key):
        raise InvalidArgument("TLS needs both a certificate and a key (I2X_TLS_CERT and I2X_TLS_KEY)",
                              field="tls_key" if tls_cert else "tls_cert")

    size = int(size_mb * 1024 * 1024)
    from i2x.observability import server_interceptors

    interceptors: list[grpc.aio.ServerInterceptor] = server_interceptors(service)  # trace span, metrics: outermost
    if token:
        interceptors.append(TokenAuthInterceptor(token))
    interceptors.append(ErrorInterceptor())
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size),
                 ("grpc.so_reuseport", 0)],
    )
    names = list(register(server))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(names + [HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    _enable_reflection_v1(names + [HEALTH_SERVICE, reflection.SERVICE_NAME], server)

    address = f"{host}:{port}"
    try:
        if tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(_read_pem(tls_key, "tls_key"), _read_pem(tls_cert, "tls_cert"))])
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as error:
        raise Unavailable(f"cannot listen on {address}: {error} (port taken? choose another with I2X_PORT)",
                          field="port") from None
    if not bound:
        raise Unavailable(f"cannot listen on {address} (port taken? choose another with I2X_PORT)", field="port")
    await server.start()
    health_port = int(config.get("I2X_HEALTH_PORT", None if health_port is None else str(health_port)))
    if health_port:
        _HEALTH_ONLY_SERVERS[id(server)] = await _start_health_only(host, health_port, health)
    for name in ["", *names]:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("%s listening on %s:%d%s%s", service, host, bound, " (TLS)" if tls_cert else "",
             " (token auth)" if token else "")
    return server, bound, health


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection_v1(names: list[str], server: grpc.aio.Server) -> None:
    """grpc.reflection.v1 beside v1alpha (grpcio-reflection ships only v1alpha): the two protocols'
    messages are the same on the wire, so v1alpha's servicer answers both."""
    from grpc_reflection.v1alpha import reflection_pb2
    from grpc_reflection.v1alpha._async import ReflectionServicer

    servicer = ReflectionServicer(names)
    handlers = {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, handlers),))


# Main server id -> its plaintext health-only server (see start_server's health_port).
_HEALTH_ONLY_SERVERS: dict[int, grpc.aio.Server] = {}


async def _start_health_only(host: str, port: int, health: HealthServicer) -> grpc.aio.Server:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as error:
        raise Unavailable(f"cannot listen on {host}:{port} for health: {error}; choose another I2X_HEALTH_PORT",
                          field="health_port") from None
    await server.start()
    log.info("health-only (plaintext) listening on %s:%d", host, bound)
    return server


async def stop_server(server: grpc.aio.Server, grace: float | None = None) -> None:
    """Stop a server started by start_server, with its health-only companion if any."""
    companion = _HEALTH_ONLY_SERVERS.pop(id(server), None)
    await server.stop(grace)
    if companion is not None:
        await companion.stop(grace)


async def serve_forever(server: grpc.aio.Server, health: HealthServicer, grace: float | None = None,
                        *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set), then stop gracefully and return.

    Health turns NOT_SERVING first (load balancers stop sending), then in-flight calls get
    `grace` seconds (I2X_GRACE_SECONDS) to finish.
    """
    grace = float(config.get("I2X_GRACE_SECONDS")) if grace is None else float(grace)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
            pass
    stopped = asyncio.ensure_future(stop.wait())
    terminated = asyncio.ensure_future(server.wait_for_termination())
    try:
        await asyncio.wait({stopped, terminated}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        stopped.cancel()
    await health.enter_graceful_shutdown()
    await stop_server(server, grace)
    if not terminated.done():
        await terminated

