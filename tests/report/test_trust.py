"""What the report says a reader can trust (issue 9): warnings banner, the true most confused
pair beside the analysed one, support behind statements, background prototypes, Table 1's
intervals and significance, placement, linked prototypes, the comparison's honesty, the crops."""

from __future__ import annotations

import re

import numpy as np
import pytest

from i2x.report import build_comparison, build_report
from i2x.report import gallery as G
from i2x.report.misclassified import assign_to_prototypes
from i2x.storage import LocalStore

from .synthetic import CLASSES, write_synthetic_run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = LocalStore(tmp_path_factory.mktemp("trust"))
    write_synthetic_run(store, "v1", seed=0)
    write_synthetic_run(store, "v1-seed1", seed=1, finetune=False)
    write_synthetic_run(store, "v1-epochs", seed=1, finetune=False,
                        train={"preset": "mnist", "seed": 1, "epochs": 3, "batch_size": 128})
    write_synthetic_run(store, "v2", seed=0, schema=2)
    return store


@pytest.fixture(scope="module")
def v1(store):
    return build_report(store, "v1", workers=1)


@pytest.fixture(scope="module")
def v2(store):
    return build_report(store, "v2", workers=1)


def name(c: int) -> str:
    return f"&lsquo;{CLASSES[c]}&rsquo;"


def section(html: str, ident: str) -> str:
    return html.split(f'id="{ident}"', 1)[1].split("</section>", 1)[0]


def presence_by_hand(store, run: str, c: int, m: int) -> float:
    maps = store.get_npz(f"runs/{run}/clustering/prototypes.npz")["assignments"]
    labels = store.get_npz(f"runs/{run}/data/explanation.npz")["labels"]
    return float((maps[labels == c] == m).any(axis=(1, 2)).mean())


def test_schema_2_report_opens_with_the_warnings_then_the_true_most_confused_pair(store, v2):
    doc = store.get_json("runs/v2/explanation/explanation.json")
    body = v2.split("<main>", 1)[1]
    assert body.index('class="banner"') < body.index('id="trust"') < body.index("<nav>") < body.index('id="overview"')
    banner = body.split('class="banner"', 1)[1].split("</div>", 1)[0]
    assert "2 warnings: read this explanation with care" in banner
    for warning in doc["warnings"]:
        assert f"<li><code>{warning['code']}</code>: {warning['message']}</li>" in banner
    C = store.get_npz("runs/v2/evaluation/final.npz")["confusion"]
    trust = section(v2, "trust")
    # 0 / 2 has the most confusions (both directions); 1 / 3 is analysed, and never called the most confused.
    assert (f"Most confused pair on the test split: {name(0)} / {name(2)}: {C[0, 2] + C[2, 0]} test confusions "
            f"({C[0, 2]} {name(0)}&rarr;{name(2)}, {C[2, 0]} {name(2)}&rarr;{name(0)})") in trust
    assert (f"Analysed pair: {name(1)} / {name(3)} with {C[1, 3] + C[3, 1]} test confusions ({C[1, 3]} "
            f"{name(1)}&rarr;{name(3)}, {C[3, 1]} {name(3)}&rarr;{name(1)}), not the most confused pair: the more "
            f"confused pairs have no uncertain prototype to analyse (passed over: {name(0)} / {name(2)} with "
            f"{C[0, 2] + C[2, 0]})") in trust
    assert f"{name(1)} / {name(3)}, the most confused pair" not in v2
    assert "The model confuses" not in v2
    pair = section(v2, "pair")
    assert f"Analysed pair: {name(1)} / {name(3)} with" in pair
    # the most confused pair's classes say so in their own sections
    assert "It belongs to the most confused pair (with " + name(2) + "), which has no uncertain prototype" in \
        section(v2, "class-00")
    assert "It belongs to the analysed pair (with " + name(3) + ")" in section(v2, "class-01")


def test_schema_1_fallback_pair_is_not_called_the_most_confused(tmp_path):
    store = LocalStore(tmp_path)
    write_synthetic_run(store, "old", finetune=False)
    doc = store.get_json("runs/old/explanation/explanation.json")
    # the method now writes schema 2: turn it back into a schema-1 document (its fields only)
    for k in ("analysed_pair", "warnings", "background_prototypes", "test_accuracy", "chance_accuracy"):
        doc.pop(k, None)
    doc["schema_version"] = 1
    for entry in doc["per_class"]:
        for k in ("presence", "statement_details", "min_group_size"):
            entry.pop(k, None)
    confused = doc["most_confused_pair"]
    confused.pop("tie_break", None)
    # schema 1's fallback: the analysed pair is in most_confused_pair, the more confused one in skipped
    C = store.get_npz("runs/old/evaluation/final.npz")["confusion"]
    count = int(C[0, 2] + C[2, 0])
    confused.update(source="confusion-fallback", skipped=[{"a": 0, "b": 2, "count": count}])
    store.put_json("runs/old/explanation/explanation.json", doc)
    html = build_report(store, "old", workers=1)
    overview = section(html, "overview")
    # schema 1 keeps only the count of a skipped pair: the directions come from the confusion matrix
    assert (f"<th>Most confused pair</th><td>{name(0)} / {name(2)}: {count} test confusion{'s' if count != 1 else ''} "
            f"({C[0, 2]} {name(0)}&rarr;{name(2)}, {C[2, 0]} {name(2)}&rarr;{name(0)})") in overview
    assert "not the most confused pair: the more confused pairs have no uncertain prototype" in overview
    assert ("This explanation was written before the sanity checks existed (no <code>warnings</code> in "
            "explanation.json): nothing was checked; re-run the explanation stage.") in html


def test_support_is_read_from_the_explanation_or_computed_from_the_maps(store, v1, v2):
    doc1 = store.get_json("runs/v1/explanation/explanation.json")
    a, b, m = doc1["pair_analysis"]["a"], doc1["pair_analysis"]["b"], doc1["uncertain_prototype"]
    pa, pb = (presence_by_hand(store, "v1", c, m) for c in (a, b))
    assert f">P-{m}</a> (in {100 * pa:.0f}% of {name(a)}, {100 * pb:.0f}% of {name(b)})" in section(v1, "overview")
    # schema 2: per_class[c].presence is what the report shows (here changed to a value the maps do not give)
    doc2 = store.get_json("runs/v2/explanation/explanation.json")
    doc2["per_class"][a]["presence"][m] = 0.62
    store.put_json("runs/v2/explanation/explanation.json", doc2)
    html = build_report(store, "v2", workers=1)
    assert f">P-{m}</a> (in 62% of {name(a)}," in section(html, "overview")
    store.put_json("runs/v2/explanation/explanation.json", {**doc2, "per_class": doc1["per_class"]})
    # every shared prototype of a class carries its support in the class's first answer
    for entry in doc1["per_class"]:
        c = entry["class"]
        answer = section(v1, f"class-{c:02d}").split("<dd>", 1)[1].split("</dd>", 1)[0]
        for s in entry["shared"]:
            # the method now flags background prototypes (P-7 here); the report marks them after the support
            mark = "; background" if s in doc1.get("background_prototypes", []) else ""
            assert f">P-{s}</a> (in {100 * presence_by_hand(store, 'v1', c, s):.0f}% of {name(c)}{mark})" in answer


def test_background_prototypes_are_listed_apart_and_never_evidence(store, v2):
    background = store.get_json("runs/v2/explanation/explanation.json")["background_prototypes"]
    assert background == [7]
    overview = section(v2, "overview")
    assert ('<th>Background prototypes</th><td><a class="proto" href="#proto-7">P-7</a>: present in nearly every '
            "sample of nearly every class") in overview
    assert 'Background prototypes, listed apart: <a class="proto" href="#proto-7">P-7</a>' in section(v2, "trust")
    for c in range(len(CLASSES)):
        evidence = re.findall(r"Reliable evidence for it[^.]*\.", section(v2, f"class-{c:02d}"))
        assert all('href="#proto-7"' not in sentence for sentence in evidence)
    assert 'id="proto-7"' in v2 and "(background)</span>" in section(v2, "gallery")


def test_table_1_shows_intervals_and_the_welch_verdict(store, v2, v1):
    """Against the table i2x.core.finetune writes (add_statistics: row["ci95"][metric], "tests")."""
    from html import escape

    table = store.get_json("runs/v2/finetune/table.json")
    for row in table["rows"]:
        for metric in ("a_to_b", "b_to_a", "sum"):
            low, high = row["ci95"][metric]
            assert f'<span class="note">95% CI [{low:.2f}, {high:.2f}]</span>' in section(v2, "finetune"), (row, metric)
        low, high = row["ci95"]["accuracy"]
        assert f'95% CI [{100 * low:.2f}, {100 * high:.2f}]' in section(v2, "finetune")
    confusions, accuracy = (next(t for t in table["tests"] if t["metric"] == m) for m in ("sum", "accuracy"))
    assert confusions["p"] is not None and not confusions["significant"]  # the synthetic runs overlap
    for test in (confusions, accuracy):  # the sentences the CLI prints, each under Table 1
        assert f"<p>{escape(test['text'])}</p>" in section(v2, "finetune")
    verdict = escape(confusions["text"]) + " The difference may be noise."
    assert verdict in section(v2, "trust")
    assert "No significance test was recorded: treat the difference as unproven." in section(v1, "finetune")
    assert "95% CI" not in v1 and "Welch" not in v1


def test_curation_states_removed_fractions_and_the_cap(store, v2):
    summary = store.get_json("runs/v2/explanation/explanation.json")["curation"]["scopes"]["all"]
    overview = section(v2, "overview")
    for c, (n, fraction) in enumerate(zip(summary["removed_per_class"], summary["removed_fraction_per_class"])):
        if n:
            assert f"{n} of {name(c)} ({100 * fraction:.0f}% of the class)" in overview
    assert "The removal was limited to the cap of 50% of any class." in overview


def test_placement_is_shown_only_when_recorded(v1, v2):
    # units 0..4 on node-a (cpu) took 0.5 + t s: 0.5 + 1.5 + 2.5 + 3.5 + 4.5 = 12.5 s; unit 5 on node-b: 5.5 s
    assert ("<th>Interpretation ran on</th><td>node <code>node-a</code> (cpu): 5 checkpoints, 12.5 s; "
            "node <code>node-b</code> (cuda:0): 1 checkpoint, 5.5 s</td>") in v2
    assert "Interpretation ran on" not in v1


def test_every_prototype_link_has_its_gallery_row(store, v1):
    M = store.get_json("runs/v1/explanation/explanation.json")["n_prototypes"]
    targets = set(re.findall(r'href="#(proto-\d+)"', v1))
    anchors = set(re.findall(r'id="(proto-\d+)"', v1))
    assert anchors == {f"proto-{m}" for m in range(M)}
    assert targets and targets <= anchors


def test_comparison_claims_a_data_order_variation_only_when_the_seed_alone_differs(store):
    html = build_comparison(store, "v1", store, "v1-seed1")
    assert ('<p id="variation">These are the same training with another data order (paper 3.4): run.json '
            "differs only in the training seed, 0 vs 1.</p>") in html
    other = build_comparison(store, "v1", store, "v1-epochs")
    assert ('<p id="variation">These are not a data-order variation: their settings differ in <code>train.epochs'
            "</code> (2 vs 3); <code>train.seed</code> (0 vs 1).</p>") in other
    assert "another data order" not in other
    # both galleries, each with its own anchors, and the links inside the comparison reach them
    for prefix in ("cmp-a-", "cmp-b-"):
        assert set(re.findall(rf'href="#({prefix}proto-\d+)"', html)) <= set(re.findall(rf'id="({prefix}proto-\d+)"', html))
        assert f'id="{prefix}proto-0"' in html


def test_assign_to_prototypes_projects_then_takes_the_nearest_centroid():
    # d = 2 -> one PCA component along x (mean (1, 0)): z = (3, 5) -> 2, z = (0, 9) -> -1.
    features = np.array([[[[3.0, 5.0], [0.0, 9.0]]]])            # (1, 1, 2, 2)
    components, mean = np.array([[1.0, 0.0]]), np.array([1.0, 0.0])
    centroids = np.array([[-2.0], [1.5], [10.0]])               # 2 is nearest 1.5, -1 nearest -2
    np.testing.assert_array_equal(assign_to_prototypes(features, components, mean, centroids), [[[1, 0]]])


def test_gallery_crop_shows_the_image_itself_beside_its_saliency():
    image = (np.arange(28 * 28).reshape(28, 28) % 251).astype(np.uint8)
    heat = np.zeros((28, 28))
    heat[8:20, 8:20] = 1.0
    # cell (3, 3) of 7x7 on 28x28, margin 1: input rows and columns 8..20 (12 px), scale 64 // 12 = 5
    tile = G.crop_pair(image, heat, (3, 3), (7, 7))
    assert tile.shape == (60, 2 * 60 + G.GAP, 3)
    assert tuple(tile[0, 0]) == (image[8, 8],) * 3                # plain grey input, nothing over it
    assert tuple(tile[59, 59]) == (image[19, 19],) * 3
    assert tuple(tile[7, 13]) == (image[8 + 7 // 5, 8 + 13 // 5],) * 3
    assert tuple(tile[20, 25]) == G.OUTLINE                       # the cell (input 12..16 -> tile 20..40)
    hot = np.round(np.asarray(G._JET(1.0))[:3] * 255)
    np.testing.assert_allclose(tile[0, 60 + G.GAP], hot, atol=1)  # the saliency tile, red where heat = 1


def test_figures_drawn_in_worker_processes_match_those_drawn_here(store):
    import io

    from PIL import Image

    from i2x.report.build import Drawing, class_figures, overview_figures
    from i2x.report.run_data import RunData

    run = RunData(store, "v1")

    def rendered():
        return overview_figures(run) + [r for c, info in sorted(run.explanation.classes.items())
                                        for r in class_figures(run, info)]

    here, there = rendered(), rendered()
    Drawing(here, workers=1).start().finish()
    drawing = Drawing(there, workers=2).start()
    assert len(drawing.jobs) == 2  # the parallel path really ran: two worker processes
    drawing.finish()
    assert drawing.drawn_by_workers == len(there)
    for a, b in zip(here, there):
        assert a.spec is None and b.spec is None
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(a.png))), np.asarray(Image.open(io.BytesIO(b.png))))


def test_key_checkpoints_are_listed_under_the_figure_with_support(store, v1):
    doc = store.get_json("runs/v1/explanation/explanation.json")
    steps = doc["pair_steps"] + [200]  # the synthetic run's checkpoints: 0, 40, ..., 200
    for entry in doc["per_class"]:
        c = entry["class"]
        listing = section(v1, f"class-{c:02d}").split('<ol class="keys">', 1)[1].split("</ol>", 1)[0]
        items = listing.split("</li>")[:-1]
        assert len(items) == len(entry["key_checkpoints"])
        for item, key in zip(items, entry["key_checkpoints"]):
            nxt = steps[steps.index(key["step"]) + 1]
            assert f"<li>step {key['step']}&rarr;{nxt}: " in item
            # drivers with opponents first, the strongest first: the first one shown
            first = sorted(key["prototypes"], key=lambda d: (not d["separates_from"], -abs(d["weight"])))[0]
            pct = f"{100 * presence_by_hand(store, 'v1', c, first['prototype']):.0f}%"
            if first["separates_from"]:
                against = ", ".join(name(o["class"]) for o in first["separates_from"])
                assert f">P-{first['prototype']}</a> separates {name(c)} from {against} (in {pct} of {name(c)})" in item
            else:
                assert f">P-{first['prototype']}</a> moves {name(c)} alone (in {pct} of {name(c)})" in item


def test_gallery_rows_say_how_many_images_hold_each_prototype(store, v1):
    maps = store.get_npz("runs/v1/clustering/prototypes.npz")["assignments"]
    gallery = section(v1, "gallery")
    for m in range(int(maps.max()) + 1):
        n = int((maps == m).any(axis=(1, 2)).sum())
        assert re.search(rf'<tr id="proto-{m}"><th>.*?in {n} of {len(maps)} images</span>', gallery)
    assert "left, the input around one feature-map position assigned to the prototype" in gallery


def test_a_class_wiped_out_by_curation_is_flagged_and_no_warning_is_said_plainly(tmp_path):
    store = LocalStore(tmp_path)
    doc = write_synthetic_run(store, "w", schema=2, finetune=False)
    doc["warnings"] = []
    summary = doc["curation"]["scopes"][doc["curation"]["scope"]]
    counts = doc["samples_per_class"]
    summary["removed_per_class"][2] = counts[2]  # every '2' sample removed
    store.put_json("runs/w/explanation/explanation.json", doc)
    html = build_report(store, "w", workers=1)
    wiped = [c for c, n in enumerate(summary["removed_per_class"]) if n and n >= counts[c]]
    assert ('<span class="warn">Every sample of ' + ", ".join(name(c) for c in wiped)
            + " was removed: fine-tuning on the curated set never sees that class.</span>") in html
    assert ("No sanity warning: accuracy, checkpoints, test confusions of the pair, HDBSCAN noise and samples per "
            "class passed the checks of docs/EXPLANATION.md.") in html
    assert 'class="banner"' not in html
