"""ExplanationService.StartReport through real servers: the report is stored beside the run's
artifacts (both store backends), run_pipeline(report=True) builds it last, bad requests map to
INVALID_ARGUMENT / NOT_FOUND / FAILED_PRECONDITION naming the field."""

from __future__ import annotations

import re

import grpc
import pytest

from conftest import client_for, start_services
from test_bad_requests import expect
from tinydata import write_tiny_npz

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PIPELINE = dict(model={"arch": "small_cnn", "num_classes": 3}, train={"preset": "tiny"},
                prototypes={"n_prototypes": 4, "n_components": 4}, clusters={"min_cluster_size": 3},
                explain={"pair": [1, 2]})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def stack(backend, ray_local, tiny_dataset):
    store, reader = backend
    services = start_services(store)
    stages: list[str] = []
    with client_for(services, reader) as client:
        def progress(stage, event):
            if not stages or stages[-1] != stage:
                stages.append(stage)
        result = client.run_pipeline("rep", dataset={"kind": "npz", "root": tiny_dataset}, progress=progress,
                                     report=True, timeout=120, **PIPELINE)
        yield services, client, store, result, stages
    services.stop()


def test_pipeline_builds_the_report_last_and_stores_it_beside_the_run(stack):
    services, client, store, result, stages = stack
    assert result.report_key == "runs/rep/report.html"
    assert stages[-1] == "report" and "report" in result.jobs  # after explain (and fine-tuning when asked)
    assert stages.index("explain") < stages.index("report")
    html = client.load(result.report_key).decode("utf-8")
    assert "<code>rep</code>" in html and 'id="pair"' in html
    # self-contained: every image is embedded, nothing is fetched from elsewhere
    assert re.search(r'src="data:image/png;base64,', html)
    assert not re.search(r'(src|href)="(https?:)?//', html)

    job = client._call("explanation", "jobs", "GetJob",
                       __import__("i2x.v1.jobs_pb2", fromlist=["x"]).GetJobRequest(job_id=result.jobs["report"]))
    assert job.kind == "report" and job.progress_done == job.progress_total == 1
    from i2x.client import JobInfo

    figure_keys = JobInfo.from_proto(job).result["figure_keys"]
    # every class has its Fig. 3 evolution, the explained pair (1, 2) its Fig. 5-7 contributions
    expected = {f"runs/rep/figures/class-{c:02d}-evolution.png" for c in range(3)}
    expected.add("runs/rep/figures/pair-01-02-contributions.png")
    assert expected <= set(figure_keys)
    assert all(k.startswith("runs/rep/figures/") for k in figure_keys)
    for key in figure_keys:
        assert client.load(key).startswith(PNG_SIGNATURE), key
    assert figure_keys == sorted(k for k in store.list("runs/rep/figures/") if k.endswith(".png"))


def test_report_compares_with_another_run_of_the_same_store(stack, tiny_dataset):
    _, client, store, result, _ = stack
    # a second explained run from the same checkpoints (registered, not trained)
    checkpoints = {int(c["step"]): c["key"] for c in result.run.checkpoints}
    client.create_run("rep-b", model=PIPELINE["model"], dataset={"kind": "npz", "root": tiny_dataset},
                      explanation_fraction=0.5)
    client.run_pipeline("rep-b", checkpoints=checkpoints, timeout=120, report=False,
                        **{k: v for k, v in PIPELINE.items() if k not in ("model", "train")})
    # a figure of an earlier explanation (another pair) must not outlive it
    store.put_bytes("runs/rep/figures/pair-00-01-contributions.png", PNG_SIGNATURE, "image/png")
    outcome = client.report("rep", compare_with="rep-b").result(timeout=120)
    assert "runs/rep/figures/pair-00-01-contributions.png" not in outcome["figure_keys"]
    assert not store.exists("runs/rep/figures/pair-00-01-contributions.png")
    assert "runs/rep/figures/pair-01-02-contributions.png" in outcome["figure_keys"]
    assert outcome["key"] == "runs/rep/report.html" and outcome["compare_run_id"] == "rep-b"
    html = client.load(outcome["key"]).decode("utf-8")
    assert 'id="comparison"' in html and "<code>rep-b</code>" in html
    assert not store.exists("runs/rep-b/report.html")  # the compared run's own report is not touched


def test_report_bad_requests(stack, tmp_path):
    _, client, _, _, _ = stack
    expect(grpc.StatusCode.NOT_FOUND, "run_id", client.report, "nope")
    expect(grpc.StatusCode.INVALID_ARGUMENT, "run_id", client.report, "../rep")
    expect(grpc.StatusCode.INVALID_ARGUMENT, "run_id", client.report, "")
    expect(grpc.StatusCode.INVALID_ARGUMENT, "compare_run_id", client.report, "rep", compare_with="a/b")
    expect(grpc.StatusCode.INVALID_ARGUMENT, "compare_run_id", client.report, "rep", compare_with="rep")
    expect(grpc.StatusCode.NOT_FOUND, "compare_run_id", client.report, "rep", compare_with="nope")
    # a run without an explanation (created, never trained): nothing to report yet
    tiny = write_tiny_npz(tmp_path / "tiny3.npz")
    client.create_run("rep-bare", model=PIPELINE["model"], dataset={"kind": "npz", "root": tiny},
                      explanation_fraction=0.5)
    details = expect(grpc.StatusCode.FAILED_PRECONDITION, "run_id", client.report, "rep-bare")
    assert "explanation" in details
    expect(grpc.StatusCode.FAILED_PRECONDITION, "compare_run_id", client.report, "rep", compare_with="rep-bare")
    # other classes (a two-class dataset): not comparable
    two = write_tiny_npz(tmp_path / "tiny2.npz", n_classes=2)
    client.create_run("rep-two", model={"arch": "small_cnn", "num_classes": 2}, dataset={"kind": "npz", "root": two},
                      explanation_fraction=0.5)
    details = expect(grpc.StatusCode.INVALID_ARGUMENT, "compare_run_id", client.report, "rep", compare_with="rep-two")
    assert "different classes" in details
    assert client.explanation("rep").run_id == "rep"  # the service is still up


def test_analyze_builds_the_report_unless_told_not_to():
    from i2x.cli import _report_location, build_parser

    parser = build_parser()
    assert parser.parse_args(["analyze", "r1"]).report is True
    assert parser.parse_args(["analyze", "r1", "--no-report"]).report is False
    key = "runs/r1/report.html"
    assert _report_location(key, "s3://bucket/pre/") == "s3://bucket/pre/runs/r1/report.html"
    assert _report_location(key, "file:///data/i2x") == "/data/i2x/runs/r1/report.html"
    assert _report_location(key, None).startswith(key)


def test_analyze_prints_where_the_report_is(stack, capsys):
    services, _, store, _, _ = stack
    if not hasattr(store, "root"):
        pytest.skip("the CLI reads a local store here (the S3 half is the same SDK call)")
    from i2x.cli import main

    addresses = [f"--{name}={services.address(name)}" for name in services.ports]
    # the run exists and is trained: analyze re-runs the cheap stages and builds the report last
    assert main(["analyze", "rep", *addresses, f"--store={store.root}", "--timeout=120"]) == 0
    printed = capsys.readouterr().out
    path = store.root / "runs" / "rep" / "report.html"
    assert f"report: {path.resolve()}" in printed.splitlines()
    assert path.is_file()
