"""The explanation report: the paper's figures (PNG) and one self-contained HTML page per run.

    write_figures(store, run_id) -> keys of runs/<run_id>/figures/*.png
    build_report(store, run_id, compare_with=None) -> HTML (also stored as runs/<run_id>/report.html)
    build_comparison(store_a, run_a, store_b, run_b) -> HTML comparing two runs side by side

docs/REPORT.md describes every figure and how to read it.
"""

from __future__ import annotations

from i2x.storage import Store

__all__ = ["write_figures", "build_report", "build_comparison"]


def _write(store: Store, run, report) -> list[str]:
    keys = []
    for rendered in report.figures():
        key = run.key("figures", rendered.name)
        store.put_bytes(key, rendered.png, "image/png")
        keys.append(key)
    return keys


def write_figures(store: Store, run_id: str) -> list[str]:
    """Render every figure the run's artifacts allow and store them under runs/<run_id>/figures/."""
    from i2x.report.build import render_all
    from i2x.report.run_data import RunData

    run = RunData(store, run_id)
    return _write(store, run, render_all(run, misclassified=False))


def _comparison(run_a, run_b) -> str:
    from i2x.core.errors import InvalidArgument
    from i2x.report import figures as F
    from i2x.report.build import draw, full_gallery, pair_figures
    from i2x.report.html import comparison_body

    if run_a.class_names != run_b.class_names:
        raise InvalidArgument(f"runs {run_a.run_id!r} and {run_b.run_id!r} have different classes "
                              f"({run_a.class_names} vs {run_b.class_names}); compare runs on the same data",
                              field="compare")
    confusion_png = None
    if run_a.has("evaluation", "final.npz") and run_b.has("evaluation", "final.npz"):
        pair = None
        if run_a.explanation and run_a.explanation.pair:
            pair = (run_a.explanation.pair.a, run_a.explanation.pair.b)
        fig = F.confusion_matrices([(run_a.run_id, run_a.confusion), (run_b.run_id, run_b.confusion)],
                                   run_a.class_names, pair=pair)
        confusion_png = F.to_png(fig)
    figs = tuple(pair_figures(r) if r.explanation else [] for r in (run_a, run_b))
    draw(figs[0] + figs[1], workers=1)
    for run, rendered in zip((run_a, run_b), figs):  # tell the two pair figures apart
        for r in rendered:
            r.caption = f"{run.run_id}: {r.caption}"
    galleries = tuple(full_gallery(r) if r.has("clustering", "prototypes.npz") and r.interpretation_steps else None
                      for r in (run_a, run_b))
    return comparison_body(run_a, run_b, confusion_png, figs, galleries)


def build_report(store: Store, run_id: str, *, compare_with: tuple[Store, str] | None = None,
                 workers: int | None = None) -> str:
    """The run's HTML report (figures embedded); writes its figures and runs/<run_id>/report.html.
    compare_with=(store_b, run_b) appends a comparison with that run. workers: processes that
    draw the matplotlib figures (None: one per CPU when there are enough figures; 1: in this process)."""
    from i2x.report.build import render_all
    from i2x.report.html import run_report
    from i2x.report.run_data import RunData

    run = RunData(store, run_id)
    groups = render_all(run, workers=workers)
    _write(store, run, groups)
    extra = ""
    if compare_with is not None:
        other_store, other_id = compare_with
        extra = _comparison(run, RunData(other_store, other_id))
    html = run_report(run, groups, extra)
    store.put_text(run.key("report.html"), html, "text/html; charset=utf-8")
    return html


def build_comparison(store_a: Store, run_a: str, store_b: Store, run_b: str) -> str:
    """A page with two runs' structured explanations and confusion matrices side by side."""
    from i2x.report.html import comparison_page
    from i2x.report.run_data import RunData

    a, b = RunData(store_a, run_a), RunData(store_b, run_b)
    return comparison_page(a, b, _comparison(a, b))
