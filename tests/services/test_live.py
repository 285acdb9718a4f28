"""Live analysis: a user's own PyTorch loop with the callback, against the real four services, a
real local Ray and a real MLflow file store (the explanation service exports when MLFLOW_TRACKING_URI is set)."""

from __future__ import annotations

import io
import logging
import socket
import time

import grpc
import numpy as np
import pytest

from conftest import client_for, start_services

torch = pytest.importorskip("torch")

from i2x.integrations.live import LiveAnalysis, watch  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

STAGES = dict(prototypes={"n_prototypes": 4, "n_components": 4}, clusters={"min_cluster_size": 3},
              explain={"pair": [1, 2]})


@pytest.fixture(scope="module")
def stack(tmp_path_factory, ray_local):
    from i2x.client import open_reader
    from i2x.storage import LocalStore

    store = LocalStore(tmp_path_factory.mktemp("live") / "store")
    services = start_services(store)
    with client_for(services, open_reader(str(store.root))) as client:
        yield store, client
    services.stop()


def _model():
    from i2x.models import ModelSpec, build_model

    torch.manual_seed(0)
    return build_model(ModelSpec(arch="small_cnn", num_classes=3))


def users_loop(model, dataset_path, steps, on_step=None, live=None):
    """What a user already has: their data, their optimizer, their loop (plus the live lines)."""
    data = np.load(dataset_path)
    x = torch.from_numpy(data["x_train"]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(data["y_train"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if live is not None:
        live.attach(optimizer)
    losses = []
    for step in range(1, steps + 1):
        batch = slice((step - 1) * 8 % 48, (step - 1) * 8 % 48 + 8)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step)
    return losses


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_live_run_is_interpreted_while_training_and_explained_at_the_end(stack, tiny_dataset, tmp_path,
                                                                        monkeypatch):
    store, client = stack
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    model = _model()
    live = LiveAnalysis("live", model, every=3, model_spec={"arch": "small_cnn", "num_classes": 3},
                        dataset={"kind": "npz", "root": tiny_dataset}, client=client, **STAGES)
    seen_live: dict[str, bool] = {}

    def on_step(step):
        if step == 9:  # training goes on: step 3's checkpoint is interpreted meanwhile
            assert _wait_for(lambda: store.exists("runs/live/interpretation/step-000003.npz"))
            seen_live["live"] = client.get_run("live").live
            seen_live["index"] = store.exists("runs/live/interpretation/index.json")

    users_loop(model, tiny_dataset, 12, on_step, live)
    started = time.monotonic()
    result = live.finish(timeout=120)
    print(f"finish: {time.monotonic() - started:.1f} s")
    assert seen_live == {"live": True, "index": False}
    assert live.registered == [3, 6, 9, 12] and live.skipped == []
    assert result.run.steps == [3, 6, 9, 12] and not client.get_run("live").live
    assert live.follow_job.result()["followed"] is True
    assert client.load("runs/live/interpretation/index.json")["steps"] == [3, 6, 9, 12]
    assert result.pair_analysis.pair == (1, 2) and result.report_key == "runs/live/report.html"
    # the checkpoints are the weights the loop had at those steps: the last one is the model now
    from i2x.models import checkpoint_from_bytes

    state, _ = checkpoint_from_bytes(client.store.get_bytes("runs/live/checkpoints/step-000012.safetensors"))
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value.cpu()), name
    # the explanation service logged the run to MLflow after the explanation and again after the report
    memo = client.load("runs/live/mlflow.json")
    from mlflow.tracking import MlflowClient

    logged = MlflowClient(tracking_uri=memo["tracking_uri"]).get_run(memo["run_id"])
    assert logged.data.params["n_prototypes"] == "4" and logged.data.tags["i2x.most_confused_pair"] == "1 / 2"
    assert {a.path for a in MlflowClient(tracking_uri=memo["tracking_uri"]).list_artifacts(memo["run_id"], "i2x")} >= {
        "i2x/explanation.json", "i2x/report.html"}

    out = io.StringIO()
    assert watch(client, "live", interval=0.1, timeout=30, out=out) == 0
    assert out.getvalue().strip().endswith(
        "live: 4 checkpoints (last step 12), finished; 4/4 interpreted (succeeded); explanation ready")

    # a finished run takes no more live checkpoints; the error says what to do
    from i2x.client import JobFailed

    with pytest.raises(JobFailed, match="is finished .4 checkpoints, not live.: register live checkpoints into a new run"):
        client.register_checkpoints("live", {13: "runs/live/checkpoints/step-000012.safetensors"},
                                    live=True).result(timeout=30)


def test_stages_needing_the_final_checkpoint_refuse_a_live_run(stack, tiny_dataset):
    store, client = stack
    client.create_run("half", model={"arch": "small_cnn", "num_classes": 3},
                      dataset={"kind": "npz", "root": tiny_dataset})
    key = "uploads/half/step.safetensors"
    store.put_bytes(key, _bytes(_model()))
    client.register_checkpoints("half", {5: key}, live=True).result(timeout=60)
    assert client.get_run("half").live
    for call in (lambda: client.interpret("half"), lambda: client.prototypes("half")):
        with pytest.raises(grpc.RpcError) as failed:
            call()
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "run 'half' is live (checkpoints still being registered, 1 so far)" in failed.value.details()
    with pytest.raises(grpc.RpcError) as failed:  # a live run's checkpoints are not replaced as a whole
        client.register_checkpoints("half", {6: key})
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "run 'half' is live" in failed.value.details()
    from i2x.client import JobFailed

    with pytest.raises(JobFailed, match=r"after the run's last step 5, got \[4\]"):
        client.register_checkpoints("half", {4: key}, live=True).result(timeout=60)
    info = client.register_checkpoints("half", {}, finish=True).result(timeout=60)
    assert info["steps"] == [5] and info["live"] is False and 0.0 <= info["accuracy"] <= 1.0


def _bytes(model):
    from i2x.models import checkpoint_to_bytes

    return checkpoint_to_bytes(model.state_dict(), {})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_store_keeps_training_and_says_so_once(tiny_dataset, caplog):
    from i2x.client import Client
    from i2x.client.store import S3Reader

    port = _closed_port()
    nowhere = S3Reader("s3://bucket", endpoint=f"127.0.0.1:{port}", secure=False, access_key="a", secret_key="b",
                       region="us-east-1")
    client = Client(**{s: f"127.0.0.1:{port}" for s in ("training", "interpretation", "clustering", "explanation")},
                    store=nowhere, retries=0, timeout=5)
    model = _model()
    live = LiveAnalysis("nowhere", model, every=3, model_spec={"arch": "small_cnn", "num_classes": 3},
                        dataset={"kind": "npz", "root": tiny_dataset}, client=client)
    with caplog.at_level(logging.WARNING, logger="i2x.live"):
        started = time.monotonic()
        losses = users_loop(model, tiny_dataset, 12, live=live)
        assert time.monotonic() - started < 20  # the loop never waited for the store
        assert live.finish(timeout=60) is None
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert live.skipped == [3, 6, 9, 12] and live.registered == []
    misses = [r.getMessage() for r in caplog.records if "not analysed" in r.getMessage()]
    assert len(misses) == 1 and misses[0].startswith("i2x live: step 3 of run 'nowhere' not analysed (UNAVAILABLE")
    assert any("could not be finished (RuntimeError: no checkpoint reached the training service)" in r.getMessage()
               for r in caplog.records)


def test_lightning_callback_analyses_a_lightning_fit(stack, tiny_dataset):
    pl = pytest.importorskip("lightning.pytorch")
    from i2x.integrations.live import lightning_callback

    store, client = stack
    data = np.load(tiny_dataset)
    x = torch.from_numpy(data["x_train"]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(data["y_train"])

    class Module(pl.LightningModule):  # a user's LightningModule around a zoo model
        def __init__(self):
            super().__init__()
            self.model = _model()

        def training_step(self, batch, batch_idx):
            images, labels = batch
            return torch.nn.functional.cross_entropy(self.model(images), labels)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    callback = lightning_callback("lightning", every=2, model_spec={"arch": "small_cnn", "num_classes": 3},
                                  dataset={"kind": "npz", "root": tiny_dataset}, client=client, report=False, **STAGES)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.callbacks.append(callback)
    trainer.fit(Module(), loader)
    # 48 images / batch 8 = 6 global steps: checkpoints at 2, 4, 6
    assert callback.result is not None and callback.result.run.steps == [2, 4, 6]
    assert client.load("runs/lightning/interpretation/index.json")["steps"] == [2, 4, 6]
    assert callback.result.pair_analysis.pair == (1, 2)
