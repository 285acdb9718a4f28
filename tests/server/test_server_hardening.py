"""Auth before parsing, undecodable bodies, reflection v1: on real grpc.aio servers on loopback."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from i2x.server import start_server
from i2x.v1 import jobs_pb2

SERVICE = "i2x.test.Parsed"
WAIT = 20


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch):
    for name in ["I2X_API_TOKEN", "I2X_TLS_CERT", "I2X_TLS_KEY", "I2X_PORT", "I2X_HOST", "I2X_MAX_MESSAGE_MB",
                 "I2X_HEALTH_PORT"]:
        monkeypatch.delenv(name, raising=False)


def _register(parsed: list):
    def parse(data: bytes):
        parsed.append(data)
        return jobs_pb2.GetJobRequest.FromString(data)

    async def get(request, context):
        return jobs_pb2.Job(job_id=request.job_id)

    def register(server):
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
            "Get": grpc.unary_unary_rpc_method_handler(get, request_deserializer=parse,
                                                       response_serializer=jobs_pb2.Job.SerializeToString)})])
        return [SERVICE]

    return register


GARBAGE = b"\xff\xff\xff\xff\x0f garbage"


def test_undecodable_body_is_invalid_argument_and_a_good_one_works():
    async def main():
        parsed: list = []
        server, port, _ = await start_server("test", _register(parsed), host="127.0.0.1", port=0)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary(f"/{SERVICE}/Get")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(GARBAGE, timeout=WAIT)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert info.value.details().startswith("request: the body is not a Get request message")
                reply = await call(jobs_pb2.GetJobRequest(job_id="j1").SerializeToString(), timeout=WAIT)
                assert jobs_pb2.Job.FromString(reply).job_id == "j1"
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), WAIT))


def test_unauthenticated_calls_are_refused_before_the_body_is_parsed():
    async def main():
        parsed: list = []
        server, port, _ = await start_server("test", _register(parsed), host="127.0.0.1", port=0, token="s3cret")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary(f"/{SERVICE}/Get")
                for body in (GARBAGE, jobs_pb2.GetJobRequest(job_id="j1").SerializeToString()):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call(body, timeout=WAIT)
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert parsed == []
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(GARBAGE, metadata=(("authorization", "Bearer s3cret"),), timeout=WAIT)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and parsed == [GARBAGE]
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), WAIT))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_v1_and_v1alpha_list_the_services(version):
    async def main():
        server, port, _ = await start_server("test", _register([]), host="127.0.0.1", port=0, token="s3cret")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.stream_stream(
                    f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                    request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                    response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
                replies = [r async for r in call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                 timeout=WAIT)]
                return {s.name for s in replies[0].list_services_response.service}
        finally:
            await server.stop(None)

    assert SERVICE in asyncio.run(asyncio.wait_for(main(), WAIT))
