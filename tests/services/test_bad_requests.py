"""Bad requests get INVALID_ARGUMENT / NOT_FOUND / FAILED_PRECONDITION naming the field; servers stay up."""

from __future__ import annotations

import grpc
import pytest

from conftest import client_for, start_services

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_services(tmp_path_factory):
    from i2x.storage import LocalStore

    store = LocalStore(tmp_path_factory.mktemp("store"))
    services = start_services(store)
    yield services
    services.stop()


@pytest.fixture(scope="module")
def client(local_services):
    with client_for(local_services) as client:
        yield client


@pytest.fixture(scope="module")
def run_id(client, tiny_dataset):
    """A run without checkpoints (no training needed)."""
    client.create_run("bare", model={"arch": "small_cnn", "num_classes": 3},
                      dataset={"kind": "npz", "root": tiny_dataset}, explanation_fraction=0.5)
    return "bare"


def expect(code: grpc.StatusCode, field: str, call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    assert info.value.code() == code, info.value.details()
    assert field in info.value.details(), f"{field!r} not named in {info.value.details()!r}"
    return info.value.details()


def test_unknown_run_is_not_found_on_every_service(client):
    expect(grpc.StatusCode.NOT_FOUND, "run_id", client.get_run, "nope")
    expect(grpc.StatusCode.NOT_FOUND, "run_id", client.interpret, "nope")
    expect(grpc.StatusCode.NOT_FOUND, "run_id", client.prototypes, "nope")
    expect(grpc.StatusCode.NOT_FOUND, "run_id", client.explain, "nope")
    expect(grpc.StatusCode.NOT_FOUND, "run_id", client.explanation, "nope")


@pytest.mark.parametrize("bad", ["../etc", "a/b", "..", "", "x" * 200])
def test_unsafe_run_ids_are_invalid(client, bad):
    expect(grpc.StatusCode.INVALID_ARGUMENT, "run_id", client.get_run, bad)
    expect(grpc.StatusCode.INVALID_ARGUMENT, "run_id", client.train, bad)


def test_unknown_and_unsafe_job_ids(client):
    from i2x.v1 import jobs_pb2

    for service in ("training", "interpretation", "clustering", "explanation"):
        expect(grpc.StatusCode.NOT_FOUND, "job_id", client._call, service, "jobs", "GetJob",
               jobs_pb2.GetJobRequest(job_id="no-such-job"))
        expect(grpc.StatusCode.INVALID_ARGUMENT, "job_id", client._call, service, "jobs", "CancelJob",
               jobs_pb2.CancelJobRequest(job_id="../x"))
        assert client._call(service, "jobs", "ListJobs", jobs_pb2.ListJobsRequest(run_id="nobody")).jobs == []


def test_invalid_enum_values_name_the_field(client, run_id):
    from i2x.v1 import common_pb2, explanation_pb2, interpretation_pb2

    # run "bare" has no checkpoints, but the enum is checked first
    request = interpretation_pb2.StartInterpretationRequest(run_id=run_id, params=common_pb2.InterpretParams(
        target_mode=99))
    expect(grpc.StatusCode.INVALID_ARGUMENT, "params.target_mode", client._call, "interpretation", None,
           "StartInterpretation", request)
    request = explanation_pb2.CurateRequest(run_id=run_id, scope=7)
    expect(grpc.StatusCode.INVALID_ARGUMENT, "scope", client._call, "explanation", None, "Curate", request)
    expect(grpc.StatusCode.INVALID_ARGUMENT, "params.protocols", client._call, "training", None, "StartFinetune",
           __import__("i2x.v1.training_pb2", fromlist=["x"]).StartFinetuneRequest(
               run_id=run_id, params=common_pb2.FinetuneParams(protocols=[0])))


def test_negative_and_huge_parameters(client, run_id, tiny_dataset):
    expect(grpc.StatusCode.INVALID_ARGUMENT, "params.n_prototypes", client.prototypes, run_id, n_prototypes=-3)
    expect(grpc.StatusCode.INVALID_ARGUMENT, "params.min_cluster_size", client.cluster_confidences, run_id,
           min_cluster_size=10**9)
    expect(grpc.StatusCode.INVALID_ARGUMENT, "params.batch_size", client.interpret, run_id, batch_size=-1)
    expect(grpc.StatusCode.INVALID_ARGUMENT, "params.tau", client.explain, run_id, tau=-0.5)
    # lambda = 0 makes Eq. 8 singular: refused at the request, not later inside the job
    expect(grpc.StatusCode.INVALID_ARGUMENT, "params.lam", client.explain, run_id, lam=0.0)
    expect(grpc.StatusCode.INVALID_ARGUMENT, "params.pair", client.explain, run_id, pair=[1, 1])
    expect(grpc.StatusCode.INVALID_ARGUMENT, "params.repeats", client.finetune, run_id, repeats=0)
    expect(grpc.StatusCode.INVALID_ARGUMENT, "train.epochs", client.create_run, "other",
           model={"num_classes": 3}, dataset={"kind": "npz", "root": tiny_dataset}, train={"epochs": 10**8})
    expect(grpc.StatusCode.INVALID_ARGUMENT, "explanation_fraction", client.create_run, "other",
           model={"num_classes": 3}, dataset={"kind": "npz", "root": tiny_dataset}, explanation_fraction=1.5)
    # 48 images / batch 8 = 6 iterations; a checkpoint every 100 gives 1: refused at the request
    expect(grpc.StatusCode.INVALID_ARGUMENT, "train.checkpoint_every", client.create_run, "other",
           model={"num_classes": 3}, dataset={"kind": "npz", "root": tiny_dataset},
           train={"preset": "tiny", "checkpoint_every": 100})


def test_missing_checkpoint_key_and_bad_keys(client, run_id):
    expect(grpc.StatusCode.NOT_FOUND, "checkpoints[0].key", client.register_checkpoints, run_id,
           {10: "uploads/none.safetensors"})
    expect(grpc.StatusCode.INVALID_ARGUMENT, "checkpoints[0].key", client.register_checkpoints, run_id,
           {10: "../../etc/passwd"})
    expect(grpc.StatusCode.INVALID_ARGUMENT, "checkpoints", client.register_checkpoints, run_id, {})


def test_stage_not_ready_is_failed_precondition(client, run_id):
    expect(grpc.StatusCode.FAILED_PRECONDITION, "run_id", client.interpret, run_id)
    expect(grpc.StatusCode.FAILED_PRECONDITION, "run_id", client.cluster_confidences, run_id)
    expect(grpc.StatusCode.FAILED_PRECONDITION, "run_id", client.explain, run_id)
    expect(grpc.StatusCode.FAILED_PRECONDITION, "run_id", client.explanation, run_id)
    expect(grpc.StatusCode.FAILED_PRECONDITION, "run_id", client.evaluation, run_id)
    expect(grpc.StatusCode.FAILED_PRECONDITION, "run_id", client.finetune_table, run_id)
    expect(grpc.StatusCode.FAILED_PRECONDITION, "run_id", client.train, run_id)  # created without a train config


def test_servers_stay_up_and_serve_health_and_reflection(local_services, client, run_id):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    assert run_id in client.list_runs()
    for name, port in local_services.ports.items():
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = {s.name for s in next(responses).list_services_response.service}
            assert {f"i2x.v1.{name.capitalize()}Service", "i2x.v1.JobsService"} <= names, names


def test_token_auth_is_required_when_configured(tmp_path):
    from i2x.storage import LocalStore

    services = start_services(LocalStore(tmp_path), token="s3cret")
    try:
        with client_for(services) as anonymous:
            expect(grpc.StatusCode.UNAUTHENTICATED, "token", anonymous.list_runs)
        with client_for(services, token="s3cret") as authorised:
            assert authorised.list_runs() == []
    finally:
        services.stop()


def test_client_ports_match_the_server_registry():
    from i2x import config
    from i2x.client import DEFAULT_PORTS

    assert DEFAULT_PORTS == config.SERVICE_PORTS
