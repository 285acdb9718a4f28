"""What a remote caller may do, checked at the request: access, limits, idempotent starts,
atomic CreateRun, RegisterCheckpoints overwrite, paging. Real services on loopback, raw stubs."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from conftest import start_services

pytestmark = pytest.mark.slow
WAIT = 60


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_dataset):
    from i2x.storage import LocalStore

    store = LocalStore(tmp_path_factory.mktemp("store"))
    services = start_services(store)
    channels = {name: grpc.insecure_channel(services.address(name)) for name in services.ports}
    yield services, store, channels, tiny_dataset
    for channel in channels.values():
        channel.close()
    services.stop()


def stubs(channels):
    from i2x.v1 import (clustering_pb2_grpc, explanation_pb2_grpc, interpretation_pb2_grpc, jobs_pb2_grpc,
                        training_pb2_grpc)

    return (training_pb2_grpc.TrainingServiceStub(channels["training"]),
            interpretation_pb2_grpc.InterpretationServiceStub(channels["interpretation"]),
            clustering_pb2_grpc.ClusteringServiceStub(channels["clustering"]),
            explanation_pb2_grpc.ExplanationServiceStub(channels["explanation"]),
            jobs_pb2_grpc.JobsServiceStub(channels["training"]))


def refused(call, request, code=grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=WAIT)
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def create(training, run_id, tiny_dataset, **kwargs):
    from i2x.v1 import common_pb2, training_pb2

    return training.CreateRun(training_pb2.CreateRunRequest(
        run_id=run_id, model=common_pb2.ModelSpec(arch="small_cnn", num_classes=3),
        dataset=common_pb2.DatasetSpec(kind="npz", root=tiny_dataset), explanation_fraction=0.5, **kwargs),
        timeout=WAIT)


def upload_checkpoint(store, key, num_classes=3):
    from i2x.models import ModelSpec, build_model, checkpoint_to_bytes

    model = build_model(ModelSpec(num_classes=num_classes))
    store.put_bytes(key, checkpoint_to_bytes(model.state_dict(), {"step": 0}))


def wait_job(jobs, job_id):
    from i2x.v1 import jobs_pb2

    for event in jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), timeout=WAIT):
        pass
    return jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=WAIT)


def test_factories_and_dataset_roots_are_refused_without_revealing_the_server(stack):
    from i2x.v1 import common_pb2, training_pb2

    _, _, channels, tiny_dataset = stack
    training = stubs(channels)[0]
    had_this = "this" in sys.modules
    details = refused(training.CreateRun, training_pb2.CreateRunRequest(
        run_id="zen", model=common_pb2.ModelSpec(arch="custom", factory="this:s", num_classes=3),
        dataset=common_pb2.DatasetSpec(kind="npz", root=tiny_dataset)))
    assert details.startswith("model.factory: ") and "I2X_MODEL_FACTORIES" in details
    assert ("this" in sys.modules) == had_this  # nothing was imported
    answers = []
    for root in ("/etc", "/no/such/folder", "/etc/passwd", "../../etc"):
        answers.append(refused(training.CreateRun, training_pb2.CreateRunRequest(
            run_id="etc", model=common_pb2.ModelSpec(num_classes=3),
            dataset=common_pb2.DatasetSpec(kind="imagefolder", root=root))).replace(repr(root), "ROOT"))
    assert answers[0].startswith("dataset.root: ") and "I2X_DATA_ROOTS" in answers[0]
    assert len(set(answers)) == 1  # the same words whether the path exists or not
    assert "ssl" not in answers[0] and "passwd" not in answers[0]


def test_values_checked_at_the_request(stack):
    from i2x.v1 import common_pb2, explanation_pb2, interpretation_pb2, training_pb2

    _, _, channels, tiny_dataset = stack
    training, interpretation, _, explanation, _ = stubs(channels)
    create(training, "checked", tiny_dataset)
    bad_model = training_pb2.CreateRunRequest(run_id="tiny-input", model=common_pb2.ModelSpec(num_classes=3,
                                                                                              input_size=1),
                                              dataset=common_pb2.DatasetSpec(kind="npz", root=tiny_dataset))
    assert refused(training.CreateRun, bad_model).startswith("model.input_size: small_cnn needs input of at least 4x4")
    bad_fraction = training_pb2.CreateRunRequest(run_id="frac", model=common_pb2.ModelSpec(num_classes=3),
                                                 dataset=common_pb2.DatasetSpec(kind="mnist5k", test_fraction=1.0))
    assert refused(training.CreateRun, bad_fraction).startswith("dataset.test_fraction: ")
    assert refused(interpretation.StartInterpretation, interpretation_pb2.StartInterpretationRequest(
        run_id="checked", params=common_pb2.InterpretParams(target_layer="x" * 500))).startswith(
        "params.target_layer: give a layer name of 1-200 characters")
    for extra, words in (("[" * 1000, "nests deeper than 20"), ('{"bogus_option": 1}', "unknown keys"),
                         ('{"a": "' + "x" * 70_000 + '"}', "I2X_MAX_JSON_KB"), ("[" * 100_000, "I2X_MAX_JSON_KB"),
                         ('{"n_groups": "many"}', "n_groups: must be int like its default 3"),
                         ('{"weight_fraction": NaN}', "weight_fraction: must be float")):
        details = refused(explanation.StartExplanation, explanation_pb2.StartExplanationRequest(
            run_id="checked", params=common_pb2.ExplainParams(extra_json=extra)))
        assert details.startswith("params.extra_json") and words in details and len(details) < 400
    details = refused(explanation.StartExplanation, explanation_pb2.StartExplanationRequest(
        run_id="checked", params=common_pb2.ExplainParams(pair=[0, 99])))
    assert details == "params.pair: class indices must be in 0..2 (the run has 3 classes), got [0, 99]"
    assert refused(explanation.Curate, explanation_pb2.CurateRequest(run_id="checked", pair=[0, 99])).startswith(
        "pair: class indices must be in 0..2")
    long_id = "r" * 10_000
    details = refused(training.GetRun, training_pb2.GetRunRequest(run_id=long_id))
    assert details.startswith("run_id: is 10000 characters long; give at most 128") and len(details) < 200
    key_details = refused(training.RegisterCheckpoints, training_pb2.RegisterCheckpointsRequest(
        run_id="checked", checkpoints=[training_pb2.CheckpointRef(step=0, key="k" * 10_000)]))
    assert "too long" in key_details and len(key_details) < 300


def test_target_layer_is_checked_against_the_model_at_the_request(stack):
    from i2x.v1 import common_pb2, interpretation_pb2, training_pb2

    _, store, channels, tiny_dataset = stack
    training, interpretation, _, _, jobs = stubs(channels)
    create(training, "layer", tiny_dataset)
    upload_checkpoint(store, "uploads/layer/a.safetensors")
    upload_checkpoint(store, "uploads/layer/b.safetensors")
    job = training.RegisterCheckpoints(training_pb2.RegisterCheckpointsRequest(run_id="layer", checkpoints=[
        training_pb2.CheckpointRef(step=0, key="uploads/layer/a.safetensors"),
        training_pb2.CheckpointRef(step=1, key="uploads/layer/b.safetensors")]), timeout=WAIT)
    assert wait_job(jobs, job.job_id).error == ""
    details = refused(interpretation.StartInterpretation, interpretation_pb2.StartInterpretationRequest(
        run_id="layer", params=common_pb2.InterpretParams(target_layer="bogus")))
    assert details.startswith("params.target_layer: no layer named 'bogus' in SmallCNN")
    assert store.list("runs/layer/interpretation/") == []


def test_retried_starts_make_one_job_and_register_needs_overwrite(stack):
    from i2x.v1 import jobs_pb2, training_pb2

    _, store, channels, tiny_dataset = stack
    training, _, _, _, jobs = stubs(channels)
    create(training, "idem", tiny_dataset)
    upload_checkpoint(store, "uploads/idem/a.safetensors")
    request = training_pb2.RegisterCheckpointsRequest(
        run_id="idem", request_id="client-attempt-1",
        checkpoints=[training_pb2.CheckpointRef(step=0, key="uploads/idem/a.safetensors")])
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: training.RegisterCheckpoints(request, timeout=WAIT), range(8)))
    assert len({r.job_id for r in replies}) == 1
    listed = jobs.ListJobs(jobs_pb2.ListJobsRequest(run_id="idem"), timeout=WAIT).jobs
    assert [j.job_id for j in listed] == [replies[0].job_id]
    assert wait_job(jobs, replies[0].job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert training.RegisterCheckpoints(request, timeout=WAIT).job_id == replies[0].job_id  # after it ended too

    store.put_json("runs/idem/interpretation/index.json", {"steps": [0]})  # a derived result
    again = training_pb2.RegisterCheckpointsRequest(
        run_id="idem", checkpoints=[training_pb2.CheckpointRef(step=5, key="uploads/idem/a.safetensors")])
    assert refused(training.RegisterCheckpoints, again, grpc.StatusCode.FAILED_PRECONDITION).startswith(
        "overwrite: run 'idem' already has checkpoints or results derived from them")
    again.overwrite = True
    job = training.RegisterCheckpoints(again, timeout=WAIT)
    assert wait_job(jobs, job.job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert store.list("runs/idem/interpretation/") == []
    assert [c.step for c in training.GetRun(training_pb2.GetRunRequest(run_id="idem"), timeout=WAIT).checkpoints] == [5]


def test_concurrent_create_run_has_one_winner(stack):
    from i2x.v1 import training_pb2

    _, _, channels, tiny_dataset = stack
    training = stubs(channels)[0]
    barrier = threading.Barrier(6)

    def attempt(seed):
        barrier.wait()
        try:
            return ("OK", create(training, "race", tiny_dataset, explanation_seed=seed))
        except grpc.RpcError as error:
            return (error.code().name, None)

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(attempt, [1, 2, 1, 2, 1, 2]))
    stored = training.GetRun(training_pb2.GetRunRequest(run_id="race"), timeout=WAIT)
    import json

    winner_seed = json.loads(stored.metadata_json)["explanation"]["seed"]
    for seed, (code, _) in zip([1, 2, 1, 2, 1, 2], outcomes):
        assert code == ("OK" if seed == winner_seed else "ALREADY_EXISTS")


def test_list_rpcs_page(stack):
    from i2x.v1 import jobs_pb2, training_pb2

    _, _, channels, tiny_dataset = stack
    training, _, _, _, jobs = stubs(channels)
    for name in ("page-a", "page-b", "page-c"):
        create(training, name, tiny_dataset)
    every = list(training.ListRuns(training_pb2.ListRunsRequest(), timeout=WAIT).run_ids)
    seen, token = [], ""
    while True:
        reply = training.ListRuns(training_pb2.ListRunsRequest(page_size=2, page_token=token), timeout=WAIT)
        assert len(reply.run_ids) <= 2
        seen += reply.run_ids
        token = reply.next_page_token
        if not token:
            break
    assert seen == every and {"page-a", "page-b", "page-c"} <= set(seen)
    assert refused(jobs.ListJobs, jobs_pb2.ListJobsRequest(page_token="not-a-token")).startswith("page_token: ")


def test_jobs_per_service_are_limited(stack, monkeypatch):
    from i2x.v1 import common_pb2, jobs_pb2, training_pb2

    _, _, channels, tiny_dataset = stack
    training, _, _, _, jobs = stubs(channels)
    for run_id in ("busy-a", "busy-b"):
        training.CreateRun(training_pb2.CreateRunRequest(
            run_id=run_id, model=common_pb2.ModelSpec(num_classes=3),
            dataset=common_pb2.DatasetSpec(kind="npz", root=tiny_dataset), explanation_fraction=0.5,
            train=common_pb2.TrainConfig(preset="tiny", epochs=200)), timeout=WAIT)
    monkeypatch.setenv("I2X_MAX_JOBS", "1")
    start = training_pb2.StartTrainingRequest(run_id="busy-a", request_id="busy-1")
    first = training.StartTraining(start, timeout=WAIT)
    try:
        assert training.StartTraining(start, timeout=WAIT).job_id == first.job_id  # a retry, even at the limit
        details = refused(training.StartTraining, training_pb2.StartTrainingRequest(run_id="busy-b"),
                          grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert details.startswith("job: this service already holds 1 unfinished jobs (I2X_MAX_JOBS)")
    finally:
        jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=first.job_id), timeout=WAIT)
    assert wait_job(jobs, first.job_id).state == jobs_pb2.JOB_STATE_CANCELLED
