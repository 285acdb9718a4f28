"""Figures of runs with many checkpoints (issue 9, item 8): past thinning.MAX_FIGURE_COLUMNS each
per-checkpoint figure draws at most that many columns, keeps the first, last and named key
checkpoints (Fig. 3-4) or every spike (Fig. 5-7, bins), and says so in its caption. The limit is
monkeypatched to 10 on a 25-checkpoint synthetic run to keep this fast."""

from __future__ import annotations

import re
from html import unescape

import numpy as np
import pytest

from i2x.core import training
from i2x.report import build as B
from i2x.report import build_report, thinning
from i2x.report import figures as F
from i2x.report.run_data import RunData
from i2x.storage import LocalStore

from .synthetic import write_synthetic_run

STEPS = tuple(range(0, 40 * 25, 40))  # 25 checkpoints
LIMIT = 10


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = LocalStore(tmp_path_factory.mktemp("thinning"))
    write_synthetic_run(store, "many", steps=STEPS)
    write_synthetic_run(store, "few")  # 6 checkpoints
    write_synthetic_run(store, "crowded", steps=tuple(range(0, 40 * 60, 40)))  # 60: ~40 key checkpoints each
    return store


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(thinning, "MAX_FIGURE_COLUMNS", LIMIT)
    return LIMIT


def draw(rendered: B.Rendered):
    function, args, kwargs = rendered.spec
    return getattr(F, function)(*args, **kwargs)


def captions(html: str) -> list[str]:
    return [unescape(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", html)]


def test_the_figure_limit_is_the_many_checkpoints_warning_limit():
    assert thinning.MAX_FIGURE_COLUMNS == training.MANY_CHECKPOINTS == 200
    tiny = training.TrainConfig.from_preset("tiny")  # 4000 images: 250 checkpoints
    message = training.check_checkpoint_count(4000, tiny, 2000)[0]["message"]
    assert f"the report's figures show at most {thinning.MAX_FIGURE_COLUMNS} of them" in message


def test_select_keeps_first_last_and_named_columns_with_the_smallest_stride_that_fits():
    keep = [7, 8, 13]
    thin = thinning.select(25, keep, limit=LIMIT)
    chosen = set(thin.indices.tolist())
    assert len(chosen) <= LIMIT and {0, 24, *keep} <= chosen
    k = thin.stride
    assert set(range(0, 25, k)) <= chosen  # every k-th one...
    assert chosen - set(range(0, 25, k)) <= {0, 24, *keep}  # ...and nothing else but the kept ones
    assert len(set(range(0, 25, k - 1)) | {0, 24, *keep}) > LIMIT or k == 2  # no smaller stride fits
    assert thin.sentence == (f"Showing {len(chosen)} of 25 checkpoints: every {thinning.ordinal(k)}, plus the "
                             "first, last and key checkpoints.")
    assert not thinning.select(LIMIT, keep, limit=LIMIT).thinned
    assert [thinning.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 102, 111)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "102nd", "111th"]


def test_bins_cover_every_column_and_keep_a_lone_spike_that_a_stride_steps_over():
    values = np.zeros((25, 2))
    values[5, 0], values[17, 1] = -4.0, 3.0  # one spike each, at steps no stride of 3 draws
    thin = thinning.bins(25, limit=LIMIT, unit="steps")
    flat = np.concatenate(thin.groups)
    assert np.array_equal(flat, np.arange(25)) and thin.columns <= LIMIT
    assert len(thin.groups[0]) == 1 and len(thin.groups[-1]) == 1
    drawn = thin.take(values)
    assert drawn.shape == (thin.columns, 2) and drawn[:, 0].min() == -4.0 and drawn[:, 1].max() == 3.0
    assert np.abs(values[::3]).max() == 0  # a stride would have drawn neither spike
    np.testing.assert_array_equal(thin.steps(np.arange(25) * 40), [40 * g[0] for g in thin.groups])
    assert not thinning.bins(LIMIT, limit=LIMIT).thinned


def test_class_figure_past_the_limit_draws_at_most_the_limit_and_keeps_what_the_page_names(store, small_limit):
    run = RunData(store, "many")
    steps = list(STEPS)
    for c, info in sorted(run.explanation.classes.items()):
        assert len(info.key_checkpoints) > thinning.key_limit()  # the synthetic run has many: the cap applies
        keys = B.listed_keys(run, info)
        assert len(keys) == thinning.key_limit() == LIMIT // 4
        # the listed ones are those with the largest confidence changes, in step order
        strongest = sorted(abs(k.confidence_change) for k in info.key_checkpoints)[-len(keys):]
        assert sorted(abs(k.confidence_change) for k in keys) == strongest
        assert [k.step for k in keys] == sorted(k.step for k in keys)
        rendered = B.class_figures(run, info)[0]
        fig = draw(rendered)
        ax, twin = fig.axes
        for line in ax.get_lines() + twin.get_lines():
            x = line.get_xdata().tolist()
            assert len(x) <= LIMIT
            assert x[0] == steps[0] and x[-1] == steps[-1]
            for key in keys:  # both ends of every key checkpoint the page names
                assert key.step in x and steps[steps.index(key.step) + 1] in x
        shown = ax.get_lines()[0].get_xdata()
        assert (f"Showing {len(shown)} of {len(steps)} checkpoints: every " in rendered.caption
                and ", plus the first, last and key checkpoints." in rendered.caption)
        stride = int(re.search(r"every (\d+)", rendered.caption).group(1))
        assert set(range(0, len(steps) * 40, 40 * stride)) <= set(shown.tolist())
        assert B.keys_note(run, info) and B.keys_note(run, info) in rendered.caption
        numbers = [int(t.get_text()) for t in twin.texts]
        assert numbers[0] == 1 and numbers[-1] == len(keys)
        missing = len(keys) - len(numbers)
        assert (f" {missing} of the {len(keys)} carry no number" in rendered.caption) == (missing > 0)


def test_pair_figure_past_the_limit_bins_its_steps_and_keeps_the_spike(store, small_limit):
    run = RunData(store, "many")
    pair = run.explanation.pair
    steps, D = run.pair_contributions(pair.a, pair.b)
    rendered = B.pair_figures(run)[0]
    fig = draw(rendered)
    ax = fig.axes[0]
    uncertain = pair.uncertain[0] if pair.uncertain else pair.uncertain_prototype
    lines = [line for line in ax.get_lines() if line.get_label().startswith(f"P-{uncertain} ")]
    assert len(lines) == 1
    y = lines[0].get_ydata()
    assert len(y) <= LIMIT < len(steps)
    strongest = D[np.abs(D[:, uncertain]).argmax(), uncertain]
    assert strongest in y.tolist()  # its largest push is drawn, whichever bin it fell in
    x = lines[0].get_xdata().tolist()
    assert x[0] == steps[0] and x[-1] == steps[-1]
    assert (f"Showing {len(y)} points for {len(steps)} steps: each is the value of largest magnitude among up to"
            in rendered.caption)


def test_the_report_prints_the_thinning_sentences_and_lists_only_the_named_key_checkpoints(store, small_limit):
    html = build_report(store, "many", workers=1)
    run = RunData(store, "many")
    texts = captions(html)
    for c, info in sorted(run.explanation.classes.items()):
        caption = next(t for t in texts if t.startswith(f"Fig. 3-4 for '{run.name(c)}'"))
        assert "Showing " in caption and B.keys_note(run, info) in caption
        section = html.split(f'id="class-{c:02d}"', 1)[1].split("</section>", 1)[0]
        listing = section.split('<ol class="keys">', 1)[1].split("</ol>", 1)[0]
        assert listing.count("<li>") == thinning.key_limit()
        for key in B.listed_keys(run, info):
            assert f"<li>step {key.step}&rarr;" in listing
        assert unescape(B.keys_note(run, info)) in unescape(section.split("</dl>", 1)[0])
    assert any(t.startswith("Fig. 5-7") and "Showing " in t for t in texts)


def test_runs_at_or_under_the_limit_are_drawn_as_before(store):
    for run_id, n in (("many", len(STEPS)), ("few", 6)):  # 25 and 6 checkpoints, limit 200
        run = RunData(store, run_id)
        steps, intensity = run.intensity
        assert len(steps) == n
        for c, info in sorted(run.explanation.classes.items()):
            rendered = B.class_figures(run, info)[0]
            args, kwargs = rendered.spec[1], rendered.spec[2]
            np.testing.assert_array_equal(args[0], steps)
            assert len(args[1]) == len(args[3]) == n
            assert kwargs["key_steps"] == [k.step for k in info.key_checkpoints]
            assert "Showing" not in rendered.caption and not B.keys_note(run, info)
        rendered = B.pair_figures(run)[0]
        pair = run.explanation.pair
        D_steps, D = run.pair_contributions(pair.a, pair.b)
        np.testing.assert_array_equal(rendered.spec[1][0], D_steps)
        np.testing.assert_array_equal(rendered.spec[1][1], D)
        assert "Showing" not in rendered.caption


def test_a_real_figure_caption_counts_the_key_checkpoints_left_unnumbered(store):
    run = RunData(store, "crowded")  # limit 200: not thinned, but its key checkpoints are 1/59 of the axis apart
    counted = 0
    for c, info in sorted(run.explanation.classes.items()):
        rendered = B.class_figures(run, info)[0]
        numbers = [int(t.get_text()) for t in draw(rendered).axes[1].texts]
        missing = len(info.key_checkpoints) - len(numbers)
        assert (f" {missing} of the {len(info.key_checkpoints)} carry no number in the figure, too close to a "
                "numbered one; the list numbers every one." in rendered.caption) == (missing > 0)
        counted += missing
    assert counted > 0  # the check above met both cases


def test_key_numbers_stay_apart_and_the_last_is_always_numbered():
    centres = [0, 1, 2, 3, 50, 51, 99, 100]
    chosen = F.numbered_keys(centres, 100.0)  # gap 100 / 25 = 4
    assert chosen[0] == 0 and chosen[-1] == len(centres) - 1
    xs = [centres[n] for n in chosen]
    assert all(b - a >= 100 / F.MAX_KEY_NUMBERS for a, b in zip(xs, xs[1:]))
    assert chosen == [0, 4, 7]  # 1-3 too close to 0, 51 to 50, 99 replaced by the last
    assert F.numbered_keys([10, 20, 30], 100.0) == [0, 1, 2]


def test_docs_quote_the_captions_as_the_code_writes_them():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "REPORT.md").read_text()
    assert thinning.bins(999, unit="steps").sentence in doc  # 999 steps of a 1,000-checkpoint run
    assert thinning.Thinning(1000, np.arange(187), 10).sentence in doc
    assert f"names at most {thinning.key_limit()} of its key checkpoints" in doc
    assert ("as its limit, `i2x.report.thinning.MAX_FIGURE_COLUMNS` (= `i2x.core.checkpoint_count.MANY_CHECKPOINTS`)"
            in doc)
