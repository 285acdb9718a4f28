"""The report on a small synthetic run (tests/report/synthetic.py): figures, HTML, comparison, CLI."""

from __future__ import annotations

import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from i2x.core.errors import FailedPrecondition, InvalidArgument, NotFound
from i2x.report import build_comparison, build_report, write_figures
from i2x.report import figures as F
from i2x.report.cli import main as cli_main
from i2x.report.run_data import RunData
from i2x.storage import LocalStore

from .synthetic import CLASSES, write_synthetic_run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = LocalStore(tmp_path_factory.mktemp("store"))
    write_synthetic_run(store, "run-a", seed=0)
    write_synthetic_run(store, "run-b", seed=1, finetune=False)
    return store


@pytest.fixture(scope="module")
def report(store):
    return build_report(store, "run-a")


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    image.verify()  # a truncated or corrupt PNG raises here
    assert image.format == "PNG"
    return image.size


# -- the arithmetic behind the gallery and the pair figure ----------------------------------------
def test_receptive_box_scales_the_cell_and_adds_the_margin():
    # 7x7 features on 28x28 input: one cell = 4 pixels. Cell (3, 5), margin 1 cell:
    # rows (3-1)*4=8 .. (3+1+1)*4=20, columns (5-1)*4=16 .. (5+1+1)*4=28.
    assert F.receptive_box(3, 5, (7, 7), (28, 28), margin=1) == (8, 20, 16, 28)
    # Corner cell: -4 clipped to 0, (0+1+1)*4 = 8.
    assert F.receptive_box(0, 0, (7, 7), (28, 28), margin=1) == (0, 8, 0, 8)
    # 32 / 7 = 4.571 px per cell, cell 6, margin 0.5: floor(5.5*4.571)=floor(25.14)=25, ceil(34.29)=35 -> 32.
    assert F.receptive_box(6, 6, (7, 7), (32, 32), margin=0.5) == (25, 32, 25, 32)
    with pytest.raises(InvalidArgument, match="outside the 7x7"):
        F.receptive_box(7, 0, (7, 7), (28, 28))


def test_upsample_bilinear_aligns_cell_centres():
    # 2x2 -> 4x4: source coordinate (y + 0.5) * 2/4 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clipped 0, .25, .75, 1.
    # Top row over x: 0, 0.25, 0.75, 1. Second row (y=.25): 0.75 * top + 0.25 * [2, 2.25, 2.75, 3].
    out = F.upsample_bilinear(np.array([[0.0, 1.0], [2.0, 3.0]]), (4, 4))
    np.testing.assert_allclose(out[0], [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(out[1], [0.5, 0.75, 1.25, 1.5])
    np.testing.assert_allclose(out[3], [2, 2.25, 2.75, 3])


def test_select_patches_takes_each_samples_most_salient_position_then_ranks_samples():
    assignments = np.array([[[1, 1], [0, 0]], [[0, 1], [1, 1]], [[0, 0], [0, 0]]])
    saliency = np.array([[[0.2, 0.9], [5.0, 5.0]], [[9.0, 0.1], [0.3, 0.4]], [[1, 1], [1, 1]]])
    # Prototype 1: sample 0 best at (0,1) 0.9, sample 1 best at (1,1) 0.4, sample 2 has none -> 0 then 1.
    assert F.select_patches(assignments, saliency, 1, 5) == [(0, 0, 1), (1, 1, 1)]
    assert F.select_patches(assignments, saliency, 1, 1) == [(0, 0, 1)]
    assert F.select_patches(assignments, saliency, 7, 3) == []


def test_pair_contributions_are_the_difference_of_the_mapping_columns(store):
    run = RunData(store, "run-a")
    W = run.mapping
    steps, D = run.pair_contributions(1, 3)
    # D_t[m] = W_t[m, a] - W_t[m, b], e.g. at the first step for prototype 2.
    assert D[0, 2] == pytest.approx(W[0, 2, 1] - W[0, 2, 3])
    assert D.shape == (len(steps), W.shape[1])
    np.testing.assert_array_equal(steps, [0, 40, 80, 120, 160])


def test_format_mean_std():
    # accuracy 0.9712 +- 0.0031 shows as percent: 97.12 +- 0.31.
    assert F.format_mean_std({"mean": 0.9712, "std": 0.0031}, percent=True) == "97.12 \u00b1 0.31"
    assert F.format_mean_std({"mean": 9.6, "std": 2.87}) == "9.60 \u00b1 2.87"
    assert F.format_mean_std(None) == "\u2013"


def test_mean_confidence_is_over_the_class_own_samples(store):
    from i2x.report.build import mean_confidence

    run = RunData(store, "run-a")
    steps, confidences = run.confidences
    labels = run.explanation_labels
    _, mean = mean_confidence(run, 2)
    by_hand = [sum(confidences[t, n, 2] for n in range(len(labels)) if labels[n] == 2) / (labels == 2).sum()
               for t in range(len(steps))]
    np.testing.assert_allclose(mean, by_hand)


# -- figures -------------------------------------------------------------------------------------
def test_write_figures_writes_valid_pngs_of_sensible_size(store, output_dir):
    keys = write_figures(store, "run-a")
    names = {key.rsplit("/", 1)[1] for key in keys}
    expected = {"confusion.png", "gallery-01.png", "pair-01-03-contributions.png", "pair-01-03-gallery.png"}
    expected |= {f"class-{c:02d}-{kind}.png" for c in range(len(CLASSES)) for kind in ("evolution", "gallery")}
    assert expected <= names
    for key in keys:
        assert key.startswith("runs/run-a/figures/") and key.endswith(".png")
        data = store.get_bytes(key)
        width, height = png_size(data)
        assert 300 <= width <= 4000 and 150 <= height <= 6000, (key, width, height)
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float)
        assert pixels.std() > 5, f"{key} looks blank"
        (output_dir / key.rsplit("/", 1)[1]).write_bytes(data)


def test_figure_functions_reject_mismatched_input():
    with pytest.raises(InvalidArgument, match="one column per prototype"):
        F.class_evolution([0, 1], np.zeros((2, 3)), [1, 2], [0.1, 0.2], class_name="x")
    with pytest.raises(InvalidArgument, match=r"expected \(3, 3\)"):
        F.confusion_matrices([("a", np.zeros((2, 2)))], ["x", "y", "z"])
    with pytest.raises(InvalidArgument, match="contributions must be"):
        F.pair_contributions([0, 1], np.zeros((3, 4)), name_a="x", name_b="y")


# -- HTML ----------------------------------------------------------------------------------------
class ResourceAudit(HTMLParser):
    """Collects every reference to something outside the page."""

    def __init__(self):
        super().__init__()
        self.external: list[str] = []
        self.images = 0
        self.style_text = ""
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images += 1
        if tag == "script" and attrs.get("src"):
            self.external.append(f"script src={attrs['src']}")
        if tag == "link":
            self.external.append(f"link {attrs}")
        for name in ("src", "href", "srcset", "poster", "data", "action"):
            value = (attrs.get(name) or "").strip().lower()
            if value.startswith(("http:", "https:", "//", "ftp:", "file:")):
                self.external.append(f"{tag} {name}={value[:60]}")
            if name == "src" and tag == "img" and not value.startswith("data:image/png;base64,"):
                self.external.append(f"img src={value[:60]}")
        if tag == "style":
            self._in_style = True

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.style_text += data


def test_report_is_self_contained(store, report):
    audit = ResourceAudit()
    audit.feed(report)
    assert audit.external == []
    assert "@import" not in audit.style_text and "url(" not in audit.style_text
    assert "<script" not in report
    assert audit.images >= 12
    assert store.get_bytes("runs/run-a/report.html").decode() == report


def test_report_answers_the_four_questions_per_class_in_words(store, report):
    explanation = store.get_json("runs/run-a/explanation/explanation.json")
    for entry in explanation["per_class"]:
        section = report.split(f'id="class-{entry["class"]:02d}"')[1].split("</section>")[0]
        assert f"&lsquo;{entry['name']}&rsquo;" in section
        for question in ("Which prototypes does the model rely on?", "When did it learn them?",
                         "Against which classes?", "Which prototype confuses it?"):
            assert question in section
        for m in entry["shared"]:
            assert f">P-{m}<" in section
        steps = explanation["pair_steps"] + [200]  # the synthetic run's checkpoints: 0, 40, ..., 200
        for key in entry["key_checkpoints"]:
            # a key checkpoint is the change from its step to the next checkpoint (40 later here)
            assert f"step {key['step']}&rarr;{steps[steps.index(key['step']) + 1]} (" in section
    uncertain = explanation["uncertain_prototype"]
    pair = explanation["most_confused_pair"]
    overview = report.split('id="overview"')[1].split("</section>")[0]
    assert f">P-{uncertain}<" in overview
    a, b = (f"&lsquo;{n}&rsquo;" for n in pair["names"])
    # schema 1, source "confusion": the analysed pair is the most confused one, and says so
    assert (f"<th>Most confused pair</th><td>{a} / {b}: {pair['count']} test confusions ({pair['a_to_b']} "
            f"{a}&rarr;{b}, {pair['b_to_a']} {b}&rarr;{a})") in overview
    assert f"<th>Analysed pair</th><td>{a} / {b}, the most confused pair</td>" in overview
    summary = explanation["curation"]["scopes"]["all"]
    assert f"{summary['size_before']} &rarr; {summary['size_after']} samples" in overview
    # Table 1 in HTML: the curated->full row with accuracy 0.97 +- 0.002 as percent.
    assert re.search(r"<td>curated-&gt;full</td><td class=num>97.00 \u00b1 0.20</td>", report)
    assert "<td>final model (no fine-tuning)</td><td class=num>90.34</td>" in report


def test_report_of_a_run_without_explanation_says_what_is_missing(tmp_path):
    store = LocalStore(tmp_path)
    write_synthetic_run(store, "partial", finetune=False)
    for name in ("explanation.json", "intensity.npz", "mapping.npz"):
        store.delete(f"runs/partial/explanation/{name}")
    html = build_report(store, "partial")
    assert "no explanation yet" in html
    assert "no fine-tuning table" in html
    with pytest.raises(NotFound, match="no run.json"):
        build_report(store, "absent")
    store.delete("runs/partial/clustering/prototypes.npz")
    store.delete("runs/partial/evaluation/final.npz")
    with pytest.raises(FailedPrecondition, match="clustering"):
        RunData(store, "partial").assignments


def test_comparison_shows_both_runs_side_by_side(store):
    html = build_comparison(store, "run-a", store, "run-b")
    audit = ResourceAudit()
    audit.feed(html)
    assert audit.external == [] and audit.images >= 3
    for run_id in ("run-a", "run-b"):
        assert f"<code>{run_id}</code>" in html
    for name in CLASSES:
        assert f"<th>&lsquo;{name}&rsquo;</th>" in html
    with_comparison = build_report(store, "run-a", compare_with=(store, "run-b"))
    assert 'id="comparison"' in with_comparison


def test_comparison_refuses_runs_with_different_classes(tmp_path, store):
    other = LocalStore(tmp_path)
    write_synthetic_run(other, "other", finetune=False)
    meta = other.get_json("runs/other/run.json")
    meta["classes"] = ["a", "b", "c", "d"]
    other.put_json("runs/other/run.json", meta)
    with pytest.raises(InvalidArgument, match="different classes"):
        build_comparison(store, "run-a", other, "other")


def test_cli_writes_the_report_and_the_comparison(store, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert cli_main(["report", str(store.root), "--run", "run-b", "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert str(out) in capsys.readouterr().out
    both = tmp_path / "c.html"
    assert cli_main(["report", f"file://{store.root}", "--compare", "run-a", "run-b", "--out", str(both)]) == 0
    assert "I2X comparison" in both.read_text()
    assert cli_main(["report", str(store.root)]) == 2
    assert "--run RUN_ID" in capsys.readouterr().err


def test_explanation_json_parses_into_views(store):
    run = RunData(store, "run-a")
    doc = json.loads(store.get_bytes("runs/run-a/explanation/explanation.json"))
    view = run.explanation
    assert sorted(view.classes) == list(range(len(CLASSES)))
    assert view.pair.a == doc["pair_analysis"]["a"] and view.pair.b == doc["pair_analysis"]["b"]
    assert view.uncertain_prototype == doc["uncertain_prototype"]
    with pytest.raises(InvalidArgument, match="per_class"):
        type(view).parse({"classes": []})
