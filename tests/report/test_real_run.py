"""The report on a tiny real run: the engine's pipeline on 20 MNIST images per class, report included."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from i2x.storage import LocalStore

from .test_report import ResourceAudit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from i2x.data import DatasetSpec, load_dataset
    from i2x.engine.params import ClusterParams, FinetuneParams, PrototypeParams
    from i2x.engine.pipeline import run_pipeline

    splits = load_dataset(DatasetSpec(kind="mnist5k"))
    rng = np.random.default_rng(0)

    def take(data, per_class):
        idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(data.labels == c), per_class, replace=False)
                                      for c in range(10)]))
        return data.images[idx][..., 0], data.labels[idx]

    x_train, y_train = take(splits.train, 20)
    x_test, y_test = take(splits.test, 8)
    path = tmp_path_factory.mktemp("data") / "tiny-mnist.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    store = LocalStore(tmp_path_factory.mktemp("store"))
    result = run_pipeline(store, "tiny", model={"arch": "small_cnn", "in_channels": 1, "num_classes": 10,
                                                "input_size": 28},
                          dataset={"kind": "npz", "root": str(path)},
                          train={"preset": "tiny", "batch_size": 32, "checkpoint_every": 2},
                          prototypes=PrototypeParams(n_prototypes=8, n_components=8),
                          clusters=ClusterParams(min_cluster_size=5),
                          finetune=FinetuneParams(protocols=["full->full", "curated->full"], repeats=2),
                          explanation_fraction=0.3)
    return store, result


def test_pipeline_report_on_a_real_run(tiny_run, output_dir):
    store, result = tiny_run
    assert result.report_key == "runs/tiny/report.html"
    html = store.get_bytes(result.report_key).decode()
    audit = ResourceAudit()
    audit.feed(html)
    assert audit.external == [] and audit.images >= 20
    explanation = store.get_json("runs/tiny/explanation/explanation.json")
    for entry in explanation["per_class"]:
        assert f'id="class-{entry["class"]:02d}"' in html
    figures = store.list("runs/tiny/figures/")
    assert "runs/tiny/figures/confusion.png" in figures
    for key in figures:
        image = Image.open(io.BytesIO(store.get_bytes(key)))
        assert image.format == "PNG" and image.size[0] >= 300
    (output_dir / "report.html").write_text(html)
    for key in figures:
        if key.endswith(("confusion.png", "class-07-timeline.png", "gallery-01.png")) or "contributions" in key:
            (output_dir / key.rsplit("/", 1)[1]).write_bytes(store.get_bytes(key))


def test_misclassified_test_images_of_the_analysed_pair(tiny_run):
    from i2x.report.misclassified import _final_features, assign_to_prototypes
    from i2x.report.run_data import RunData

    store, _ = tiny_run
    html = store.get_bytes("runs/tiny/report.html").decode()
    explanation = store.get_json("runs/tiny/explanation/explanation.json")
    a, b = explanation["pair_analysis"]["a"], explanation["pair_analysis"]["b"]
    names = explanation["classes"]
    final = store.get_npz("runs/tiny/evaluation/final.npz")
    pair = html.split('id="pair"', 1)[1].split("</section>", 1)[0]
    assert "<h3>Its misclassified test images</h3>" in pair
    for true, predicted in ((a, b), (b, a)):
        n = int(((final["labels"] == true) & (final["predictions"] == predicted)).sum())
        if n:
            assert (f"{n} test image{'s' if n != 1 else ''} of &lsquo;{names[true]}&rsquo; predicted as "
                    f"&lsquo;{names[predicted]}&rsquo;") in pair
        else:
            assert (f"No test image of &lsquo;{names[true]}&rsquo; is predicted as "
                    f"&lsquo;{names[predicted]}&rsquo;.") in pair
    # The test images' maps are made the way the clustering stage made the stored ones: projecting
    # the explanation images again gives back (nearly all of) their stored assignment maps.
    run = RunData(store, "tiny")
    features, _, _ = _final_features(run, run.explanation_images)
    stored = store.get_npz("runs/tiny/clustering/prototypes.npz")
    maps = assign_to_prototypes(features, stored["pca_components"], stored["pca_mean"], stored["centroids"])
    assert (maps == stored["assignments"]).mean() > 0.99


def test_table_1_of_a_real_run_shows_its_intervals_and_tests(tiny_run, tmp_path):
    """The report reads the table the fine-tune stage wrote (not a schema of its own): every
    cell's 95% interval and the Welch sentences the CLI prints. The tiny run finds no uncertain
    prototype, so a copy of it is curated with a named one and fine-tuned."""
    import shutil
    from html import escape

    from i2x.engine import stages
    from i2x.engine.params import FinetuneParams
    from i2x.report import build_report

    store, _ = tiny_run
    shutil.copytree(store.root, tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    stages.curate_run(store, "tiny", prototype=0)
    stages.finetune_run(store, "tiny", FinetuneParams(protocols=["full->full", "curated->full"], repeats=2))
    html = build_report(store, "tiny", workers=1)
    table = store.get_json("runs/tiny/finetune/table.json")
    finetune = html.split('id="finetune"', 1)[1].split("</section>", 1)[0]
    assert table["tests"], "the real run's table has Welch tests"
    for test in table["tests"]:
        assert f"<p>{escape(test['text'])}</p>" in finetune
        assert finetune.count(escape(test["text"])) == 1  # under the table only, not again in the summary
    for row in table["rows"]:
        low, high = row["ci95"]["sum"]
        assert f"95% CI [{low:.2f}, {high:.2f}]" in finetune, row["protocol"]
    assert "No significance test was recorded" not in html
    from i2x.core.finetune import removed_text

    run = store.get_json("runs/tiny/run.json")
    assert f"<p>{escape(removed_text(table['removed_fraction_per_class'], run['classes']))}</p>" in finetune
