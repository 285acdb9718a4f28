"""i2x.server on real grpc.aio servers on loopback (port 0): health, reflection, errors, auth, TLS, stop."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import signal
import subprocess
import sys
import textwrap

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from i2x.core.errors import InvalidArgument, NotFound, Unavailable
from i2x.server import _resolve_port, serve_forever, start_server

SERVICE = "i2x.test.Echo"
WAIT = 20


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch):
    for name in ["I2X_API_TOKEN", "I2X_TLS_CERT", "I2X_TLS_KEY", "I2X_PORT", "I2X_HOST", "I2X_MAX_MESSAGE_MB",
                 "I2X_HEALTH_PORT"]:
        monkeypatch.delenv(name, raising=False)


async def _echo(request: bytes, entered: asyncio.Event) -> bytes:
    if request == b"invalid":
        raise InvalidArgument("must be positive, got -3", field="epochs")
    if request == b"missing":
        raise NotFound("no run 'r9'", field="run_id")
    if request == b"crash":
        raise RuntimeError("secret internal detail")
    if request.startswith(b"slow"):
        entered.set()
        await asyncio.sleep(0.3)
    return request


async def _stream(request: bytes, context):
    yield b"one"
    yield b"two"
    if request == b"invalid":
        raise InvalidArgument("bad stage", field="stage")
    if request == b"crash":
        raise RuntimeError("secret stream detail")


def _register(entered: asyncio.Event | None = None):
    async def echo(request, context):
        return await _echo(request, entered or asyncio.Event())

    def register(server):
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),  # raw bytes both ways
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        })])
        return [SERVICE]

    return register


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, WAIT))


async def _call(channel, request: bytes, metadata=None) -> bytes:
    return await channel.unary_unary(f"/{SERVICE}/Echo")(request, metadata=metadata, timeout=WAIT)


async def _stream_all(channel, request: bytes, metadata=None) -> list[bytes]:
    return [item async for item in channel.unary_stream(f"/{SERVICE}/Stream")(request, metadata=metadata,
                                                                               timeout=WAIT)]


async def _health(channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)).status


def test_health_reflection_and_calls():
    async def main():
        server, port, _ = await start_server("test", _register(), host="127.0.0.1", port=0)
        assert port > 0
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
                assert await _health(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
                assert await _call(channel, b"hello") == b"hello"
                assert await _stream_all(channel, b"ok") == [b"one", b"two"]

            def reflect():  # the sync reflection client, in a thread so the server loop keeps running
                with grpc.insecure_channel(f"127.0.0.1:{port}") as sync_channel:
                    db = ProtoReflectionDescriptorDatabase(sync_channel)
                    services = set(db.get_services())
                    health_file = db.FindFileContainingSymbol("grpc.health.v1.Health")
                    return services, health_file.name

            services, health_file = await asyncio.to_thread(reflect)
            assert services == {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
            assert health_file.endswith("health.proto")
        finally:
            await server.stop(None)

    run(main())


@pytest.mark.parametrize("request_bytes,code,text", [
    (b"invalid", grpc.StatusCode.INVALID_ARGUMENT, "epochs: must be positive, got -3"),
    (b"missing", grpc.StatusCode.NOT_FOUND, "run_id: no run 'r9'"),
])
def test_domain_errors_map_to_status_with_field(request_bytes, code, text):
    async def main():
        server, port, _ = await start_server("test", _register(), host="127.0.0.1", port=0)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _call(channel, request_bytes)
                assert info.value.code() == code and info.value.details() == text
                assert await _call(channel, b"still up") == b"still up"
        finally:
            await server.stop(None)

    run(main())


def test_unexpected_errors_are_internal_without_traceback(caplog):
    async def main():
        server, port, _ = await start_server("test", _register(), host="127.0.0.1", port=0)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as unary:
                    await _call(channel, b"crash")
                streamed = []
                with pytest.raises(grpc.aio.AioRpcError) as stream:
                    async for item in channel.unary_stream(f"/{SERVICE}/Stream")(b"crash", timeout=WAIT):
                        streamed.append(item)
                with pytest.raises(grpc.aio.AioRpcError) as stream_domain:
                    await _stream_all(channel, b"invalid")
                return unary.value, stream.value, streamed, stream_domain.value
        finally:
            await server.stop(None)

    with caplog.at_level("ERROR", logger="i2x.server"):
        unary, stream, streamed, stream_domain = run(main())
    for error in (unary, stream):
        assert error.code() == grpc.StatusCode.INTERNAL
        assert error.details().startswith("internal error (see server log, id=")
        assert "secret" not in error.details() and "Traceback" not in error.details()
    assert streamed == [b"one", b"two"]  # items sent before the failure still arrive
    assert stream_domain.code() == grpc.StatusCode.INVALID_ARGUMENT and stream_domain.details() == "stage: bad stage"
    # The details point at the log line that has the traceback.
    incident = unary.details().split("id=")[1].rstrip(")")
    assert any(incident in record.getMessage() and record.exc_info for record in caplog.records)


def test_token_auth_guards_services_but_not_health_or_reflection():
    async def main():
        server, port, _ = await start_server("test", _register(), host="127.0.0.1", port=0, token="s3cret")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                for metadata in [None, (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)]:
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await _call(channel, b"x", metadata)
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert "authorization: Bearer" in info.value.details()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _stream_all(channel, b"x")
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                good = (("authorization", "Bearer s3cret"),)
                assert await _call(channel, b"x", good) == b"x"
                assert await _stream_all(channel, b"x", good) == [b"one", b"two"]
                assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING  # no token

            def reflect():
                with grpc.insecure_channel(f"127.0.0.1:{port}") as sync_channel:
                    return set(ProtoReflectionDescriptorDatabase(sync_channel).get_services())

            assert SERVICE in await asyncio.to_thread(reflect)
        finally:
            await server.stop(None)

    run(main())


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"), cert_pem


def test_tls_with_self_signed_certificate(tmp_path, monkeypatch):
    cert, key, cert_pem = _self_signed(tmp_path)
    monkeypatch.setenv("I2X_TLS_CERT", cert)  # from the settings, as a deployment would
    monkeypatch.setenv("I2X_TLS_KEY", key)

    async def main():
        server, port, _ = await start_server("test", _register(), host="127.0.0.1", port=0)
        try:
            credentials = grpc.ssl_channel_credentials(root_certificates=cert_pem)
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials,
                                               options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
                assert await _call(channel, b"secret payload") == b"secret payload"
                assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:  # plaintext is refused
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await plain.unary_unary(f"/{SERVICE}/Echo")(b"x", timeout=2)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await server.stop(None)

    run(main())


def test_plaintext_health_port_beside_tls(tmp_path):
    """Kubernetes' gRPC probes speak plaintext: I2X_HEALTH_PORT serves health only, without TLS."""
    import socket

    cert, key, _ = _self_signed(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        health_port = probe.getsockname()[1]

    async def main():
        server, port, health = await start_server("test", _register(), host="127.0.0.1", port=0, tls_cert=cert,
                                                  tls_key=key, health_port=health_port)
        stop = asyncio.Event()
        serving = asyncio.ensure_future(serve_forever(server, health, grace=0, stop=stop))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as plain:
            assert await _health(plain) == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:  # the API itself is not on this port
                await plain.unary_unary(f"/{SERVICE}/Echo")(b"x", timeout=2)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        stop.set()
        await serving
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as plain:  # stopped with the server
            with pytest.raises(grpc.aio.AioRpcError):
                await _health(plain)

    run(main())


def test_bad_settings_refused(tmp_path):
    async def main(**kwargs):
        await start_server("test", _register(), host="127.0.0.1", port=0, **kwargs)

    with pytest.raises(InvalidArgument) as info:
        asyncio.run(main(tls_cert=str(tmp_path / "only-cert.pem")))
    assert info.value.field == "tls_key"
    with pytest.raises(InvalidArgument) as info:
        asyncio.run(main(tls_cert=str(tmp_path / "no.pem"), tls_key=str(tmp_path / "no.key")))
    assert info.value.field == "tls_key" and "no.key" in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        asyncio.run(main(max_message_mb=-1))
    assert info.value.field == "max_message_mb"


def test_port_resolution(monkeypatch):
    assert _resolve_port("clustering", None) == 50053  # I2X_PORT unset (0): the service's default
    assert _resolve_port("clustering", 0) == 0  # explicit 0: any free port
    monkeypatch.setenv("I2X_PORT", "6000")
    assert _resolve_port("clustering", None) == 6000
    with pytest.raises(InvalidArgument) as info:
        _resolve_port("clustering", 70000)
    assert info.value.field == "port"


def test_taken_port_is_unavailable():
    async def main():
        server, port, _ = await start_server("test", _register(), host="127.0.0.1", port=0)
        try:
            with pytest.raises(Unavailable) as info:
                await start_server("test", _register(), host="127.0.0.1", port=port)
            assert str(port) in str(info.value)
        finally:
            await server.stop(None)

    run(main())


def test_message_size_limit():
    async def main():
        server, port, _ = await start_server("test", _register(), host="127.0.0.1", port=0, max_message_mb=1)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert len(await _call(channel, b"x" * 1000_000)) == 1000_000  # under 1 MiB = 1,048,576
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _call(channel, b"x" * 1100_000)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            await server.stop(None)

    run(main())


def test_graceful_stop_finishes_in_flight_calls_and_reports_not_serving():
    async def main():
        entered = asyncio.Event()
        server, port, health = await start_server("test", _register(entered), host="127.0.0.1", port=0)
        stop = asyncio.Event()
        serving = asyncio.create_task(serve_forever(server, health, grace=1.0, stop=stop))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
            statuses = [(await watch.read()).status]
            in_flight = asyncio.create_task(_call(channel, b"slow call"))
            await entered.wait()
            stop.set()  # what SIGTERM does
            statuses.append((await watch.read()).status)
            assert await in_flight == b"slow call"  # finished within the grace period
            await serving
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary(f"/{SERVICE}/Echo")(b"x", timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        return statuses

    assert run(main()) == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]


def test_sigterm_stops_a_server_process_cleanly():
    script = textwrap.dedent("""
        import asyncio, grpc
        from i2x.server import serve_forever, start_server

        async def main():
            def register(server):
                server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
                    "i2x.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda r, c: r)})])
                return ["i2x.test.Echo"]
            server, port, health = await start_server("test", register, host="127.0.0.1", port=0)
            print(port, flush=True)
            await serve_forever(server, health, grace=2)
            print("stopped", flush=True)

        asyncio.run(main())
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("I2X_")}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = int(process.stdout.readline())

        async def check():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await _health(channel)

        assert run(check()) == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT) == 0
        assert process.stdout.read().strip() == "stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
