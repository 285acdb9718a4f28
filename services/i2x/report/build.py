"""Render every figure of a run (names -> PNG bytes) from its artifacts in the store."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from i2x.report import figures as F
from i2x.report import gallery as G
from i2x.report import thinning
from i2x.report.run_data import ClassExplanation, KeyCheckpoint, RunData

if TYPE_CHECKING:
    from i2x.report.misclassified import PairMisclassified

MAX_LINES = 8           # prototypes drawn in one evolution figure
GALLERY_PAGE = 16       # prototype rows per stored gallery file
GALLERY_ROWS_PER_CLASS = 12
MAX_WORKERS = 4         # processes drawing figures in parallel (at most one per 2 CPUs)
FIGURES_PER_WORKER = 4  # fewer pending figures than this per worker: not worth a process
CLASS_PATCHES = 4       # crops per row in a class's own gallery (the full gallery has 6)
EVENTS_PER_KEY = 3      # driving prototypes annotated per key checkpoint in the timeline


@dataclass
class Rendered:
    name: str           # file name under figures/
    png: bytes
    caption: str
    # (figures.<function>, args, kwargs) still to draw; draw() fills `png` from it
    spec: tuple | None = None


def _draw_spec(spec: tuple) -> bytes:
    function, args, kwargs = spec
    return F.to_png(getattr(F, function)(*args, **kwargs))


class Drawing:
    """Draw pending matplotlib figures. Drawing is most of a report's time, so with several
    figures and CPUs it runs in worker processes (`python -m i2x.report._draw_worker`, fresh
    interpreters: safe beside gRPC threads and in scripts without a __main__ guard), each figure
    rebuilt there from its plain arrays, while the caller goes on (galleries, HTML); serially when
    workers=1 or a worker fails. start() then finish()."""

    def __init__(self, rendered: list[Rendered], workers: int | None = None):
        self.pending = [r for r in rendered if r.spec is not None]
        if workers is None:
            # Half the CPUs: a worker costs an interpreter and matplotlib's import (about 0.8 s of CPU),
            # which on 2 shared cores was measured to lose more than it gains (bench/README.md).
            workers = min((os.cpu_count() or 1) // 2, MAX_WORKERS, len(self.pending) // FIGURES_PER_WORKER)
        self.workers = min(workers, len(self.pending))
        self.jobs: list[tuple[list[Rendered], object, object]] = []  # (figures, process, writer thread)
        self.drawn_by_workers = 0

    def start(self) -> "Drawing":
        if self.workers <= 1 or not sys.executable:
            return self
        import pickle
        import subprocess
        import threading

        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        for k in range(self.workers):
            chunk = self.pending[k::self.workers]
            try:
                process = subprocess.Popen([sys.executable, "-m", "i2x.report._draw_worker"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            except OSError:  # cannot start a process here: finish() draws what is left
                break
            payload = pickle.dumps([r.spec for r in chunk], protocol=pickle.HIGHEST_PROTOCOL)

            def feed(process=process, payload=payload):
                try:
                    process.stdin.write(payload)
                    process.stdin.close()
                except OSError:
                    pass

            writer = threading.Thread(target=feed, daemon=True)
            writer.start()
            self.jobs.append((chunk, process, writer))
        return self

    def finish(self) -> None:
        import pickle

        for chunk, process, writer in self.jobs:
            try:
                output = process.stdout.read()
                writer.join()
                if process.wait() == 0:
                    for r, png in zip(chunk, pickle.loads(output)):
                        r.png, r.spec = png, None
                        self.drawn_by_workers += 1
            except Exception:  # noqa: BLE001 - a worker failed: its figures are drawn here below
                process.kill()
        self.jobs = []
        for r in self.pending:
            if r.spec is not None:
                r.png, r.spec = _draw_spec(r.spec), None


def draw(rendered: list[Rendered], workers: int | None = None) -> None:
    Drawing(rendered, workers).start().finish()


def class_slug(c: int) -> str:
    return f"class-{c:02d}"


def class_members(run: RunData, c: int) -> np.ndarray:
    return np.flatnonzero(run.explanation_labels == c)


def mean_confidence(run: RunData, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps (T,), mean confidence of class c over its own samples (T,))."""
    steps, confidences = run.confidences
    return steps, confidences[:, class_members(run, c), c].mean(axis=1)


def evolution_prototypes(run: RunData, info: ClassExplanation) -> list[int]:
    """The shared prototypes to draw, the most intense at the final checkpoint first, at most MAX_LINES."""
    if not info.shared:
        return []
    _, intensity = run.intensity
    final = intensity[-1][class_members(run, info.index)].mean(axis=0)
    return sorted(info.shared, key=lambda m: (-final[m], m))[:MAX_LINES]


def timeline_events(run: RunData, info: ClassExplanation) -> list[tuple[int, int | None, list[tuple[int, list[str]]]]]:
    """(step, next step, [(prototype, opponent names)]) per key checkpoint: drivers with opponents
    first, the strongest first, at most EVENTS_PER_KEY each."""
    events = []
    for key in info.key_checkpoints:
        drivers = sorted(key.drivers, key=lambda d: (not d[2], -abs(d[1])))[:EVENTS_PER_KEY]
        events.append((key.step, key.next_step, [(m, [run.name(o) for o in opponents]) for m, _, opponents in drivers]))
    return events


def listed_keys(run: RunData, info: ClassExplanation) -> list[KeyCheckpoint]:
    """The key checkpoints the page names for a class, in step order: all of them, except past
    thinning.MAX_FIGURE_COLUMNS checkpoints, where at most thinning.key_limit() are (the largest
    confidence changes, ties: earlier step) so that Fig. 3-4 can keep every one it names and the
    page stays bounded in size."""
    keys = info.key_checkpoints
    if len(keys) <= thinning.key_limit() or len(run.intensity[0]) <= thinning.MAX_FIGURE_COLUMNS:
        return list(keys)
    chosen = sorted(keys, key=lambda k: (-abs(k.confidence_change), k.step))[:thinning.key_limit()]
    return sorted(chosen, key=lambda k: k.step)


def keys_note(run: RunData, info: ClassExplanation) -> str:
    """What the page leaves out of a class's key checkpoints ('' when it lists all)."""
    listed, total = len(listed_keys(run, info)), len(info.key_checkpoints)
    if listed == total:
        return ""
    return (f"Of its {total:,} key checkpoints the page names the {listed:,} with the largest confidence changes "
            f"(the run has {len(run.intensity[0]):,} checkpoints, more than {thinning.MAX_FIGURE_COLUMNS}; the "
            "others are in explanation.json).")


def class_figures(run: RunData, info: ClassExplanation) -> list[Rendered]:
    c, name, slug = info.index, run.name(info.index), class_slug(info.index)
    steps, confidence = mean_confidence(run, c)
    intensity_steps, intensity = run.intensity
    shown = evolution_prototypes(run, info)
    members = class_members(run, c)
    mean_intensity = intensity[:, members][:, :, shown].mean(axis=1) if shown else np.zeros((len(steps), 0))
    following = dict(zip(intensity_steps[:-1].tolist(), intensity_steps[1:].tolist()))
    keys = listed_keys(run, info)
    # Past the limit: a selection, not bins. The lines are means over the class's samples (no lone
    # spikes to lose), and the page names key checkpoints by step: both ends of each stay drawn.
    position = {s: n for n, s in enumerate(intensity_steps.tolist())}
    ends = [s for k in keys for s in (k.step, k.next_step if k.next_step is not None else following.get(k.step))]
    thin = thinning.select(len(intensity_steps), [position[s] for s in ends if s in position])
    # Fig. 3 and Fig. 4 in one figure: the key checkpoints are shaded and numbered; what each
    # numbered checkpoint did is the HTML list beside it (linked prototypes), not text in the image.
    spec = ("class_evolution", (thin.steps(intensity_steps), thin.take(mean_intensity), shown, thin.take(confidence)),
            dict(class_name=name, key_steps=[k.step for k in keys], next_steps=following, numbered=True))
    more = len(info.shared) - len(shown)
    centres = [(k.step + following.get(k.step, k.step)) / 2 for k in keys]
    unnumbered = len(keys) - len(F.numbered_keys(centres, float(intensity_steps[-1] - intensity_steps[0])))
    caption = (f"Fig. 3-4 for '{name}': mean intensity of its shared prototypes over its {len(members)} "
               "samples (left axis) and its mean confidence (dashed, right axis); shaded and numbered: key "
               "checkpoints (listed below the figure)."
               + (f" {unnumbered} of the {len(keys)} carry no number in the figure, too close to a numbered "
                  "one; the list numbers every one." if unnumbered else "")
               + (f" The {more} least intense shared prototypes are left out." if more > 0 else ""))
    extra = " ".join(x for x in (thin.sentence, keys_note(run, info)) if x)
    return [Rendered(f"{slug}-evolution.png", b"", spec=spec, caption=caption + (" " + extra if extra else ""))]


def class_gallery(run: RunData, info: ClassExplanation) -> list[G.GalleryRow]:
    """Fig. 9 for one class: its shared then specialized prototypes in its own samples."""
    protos = list(dict.fromkeys(info.shared + info.specialized_all))[:GALLERY_ROWS_PER_CLASS]
    members = class_members(run, info.index)
    return G.gallery_rows(run.explanation_images[members], run.final_saliency[members], run.assignments[members],
                          protos, labels=run.explanation_labels[members], class_names=run.class_names,
                          sample_ids=members, n_patches=CLASS_PATCHES)


def pair_figures(run: RunData) -> list[Rendered]:
    explanation = run.explanation
    pair = explanation.pair if explanation else None
    if pair is None:
        return []
    a, b = pair.a, pair.b
    steps, D = run.pair_contributions(a, b)
    # Past the limit: bins, not a selection. An uncertain prototype is found by its flips and
    # spikes, which a stride could step over; each bin keeps its value of largest magnitude.
    thin = thinning.bins(len(steps), unit="steps")
    steps, D = thin.steps(steps), thin.take(D)
    slug = f"pair-{a:02d}-{b:02d}"
    uncertain = pair.uncertain or ([pair.uncertain_prototype] if pair.uncertain_prototype is not None else [])
    # With no unsupported flip, the explanation names the most alternating (compensated) prototype.
    label = "uncertain" if pair.uncertain else "most alternating, compensated"
    spec = ("pair_contributions", (steps, D), dict(name_a=run.name(a), name_b=run.name(b),
                                                    reliable=pair.reliable[:6], uncertain=uncertain[:3],
                                                    uncertain_label=label))
    out = [Rendered(f"{slug}-contributions.png", b"", spec=spec, caption=
                    f"Fig. 5-7: each prototype's contribution to '{run.name(a)}' versus '{run.name(b)}' at each "
                    "step (above zero: towards the first class). Coloured solid lines: reliable prototypes; "
                    "dashed: uncertain." + (" " + thin.sentence if thin.thinned else ""))]
    return out


def pair_gallery(run: RunData) -> list[G.GalleryRow]:
    """Fig. 9 for the pair: its uncertain (or compensated) and reliable prototypes in samples of a and b."""
    pair = run.explanation.pair if run.explanation else None
    if pair is None:
        return []
    uncertain = pair.uncertain or ([pair.uncertain_prototype] if pair.uncertain_prototype is not None else [])
    protos = list(dict.fromkeys(uncertain[:3] + pair.reliable[:5]))
    sub = np.flatnonzero(np.isin(run.explanation_labels, [pair.a, pair.b]))
    return G.gallery_rows(run.explanation_images[sub], run.final_saliency[sub], run.assignments[sub], protos,
                          labels=run.explanation_labels[sub], class_names=run.class_names, sample_ids=sub,
                          outline={m: G.UNCERTAIN_OUTLINE for m in uncertain[:3]})


def confusion_panels(run: RunData, label: str | None = None) -> list[tuple[str, np.ndarray]]:
    """Before (evaluation/final.npz) and, when the fine-tuning table has one, after fine-tuning."""
    prefix = f"{label}: " if label else ""
    panels = [(f"{prefix}final model (test split)", run.confusion)]
    after = run.finetuned_confusion()
    if after is not None and label is None:
        repeats = (run.finetune_table or {}).get("repeats")
        mean = f", mean of {repeats} repeats" if repeats and repeats > 1 else ""
        panels.append((f"after fine-tuning ({after[0]}{mean})", after[1]))
    return panels


def run_pair(run: RunData) -> tuple[int, int] | None:
    explanation = run.explanation
    return (explanation.pair.a, explanation.pair.b) if explanation and explanation.pair else None


def overview_figures(run: RunData) -> list[Rendered]:
    out = []
    if run.has("evaluation", "final.npz"):
        panels = confusion_panels(run)
        spec = ("confusion_matrices", (panels, run.class_names), dict(pair=run_pair(run)))
        out.append(Rendered("confusion.png", b"", spec=spec, caption=
                            "Fig. 8: confusion matrices on the test split (rows: true class, columns: predicted)"
                            + (", before and after fine-tuning." if len(panels) > 1 else ".")))
    # Table 1 is an HTML table in the page (and finetune/table.md): no image of it is drawn.
    return out


def full_gallery(run: RunData) -> list[G.GalleryRow]:
    """Fig. 9: every prototype over the whole explanation set (the rows every P-m links to)."""
    return G.gallery_rows(run.explanation_images, run.final_saliency, run.assignments, list(range(run.n_prototypes)),
                          labels=run.explanation_labels, class_names=run.class_names)


def gallery_pages(rows: list[G.GalleryRow], prefix: str, title: str) -> list[Rendered]:
    """The gallery rows as stored figure files, GALLERY_PAGE rows per file."""
    pages = [rows[start:start + GALLERY_PAGE] for start in range(0, len(rows), GALLERY_PAGE)]
    out = []
    for n, chunk in enumerate(pages):
        name = f"{prefix}-{n + 1:02d}.png" if len(pages) > 1 or prefix == "gallery" else f"{prefix}.png"
        heading = title + (f" ({n + 1}/{len(pages)})" if len(pages) > 1 else "")
        out.append(Rendered(name, G.gallery_page(chunk, heading),
                            f"Fig. 9: prototypes P-{chunk[0].prototype} to P-{chunk[-1].prototype}."))
    return out


@dataclass
class Report:
    """Everything drawn for a run: figures by section, gallery rows, misclassified test images."""

    groups: dict[str, list[Rendered]]
    galleries: dict[str, list[G.GalleryRow]] = field(default_factory=dict)
    misclassified: "PairMisclassified | None" = None

    def get(self, section: str, default=None):
        return self.groups.get(section, default)

    def figures(self) -> list[Rendered]:
        return [r for group in self.groups.values() for r in group]


def render_all(run: RunData, *, misclassified: bool = True, workers: int | None = None) -> Report:
    """Every figure of the run, grouped by report section: overview, classes (by index), pair,
    gallery; gallery rows per class ("class-CC"), for the pair ("pair") and for all ("gallery").
    workers: processes drawing the matplotlib figures (None: one per CPU, see Drawing)."""
    report = Report({"overview": overview_figures(run), "pair": [], "gallery": []})
    explanation = run.explanation
    if explanation is not None:
        for c, info in sorted(explanation.classes.items()):
            report.groups[class_slug(c)] = class_figures(run, info)
        report.groups["pair"] = pair_figures(run)
    drawing = Drawing(report.figures(), workers).start()  # matplotlib in workers, the rest meanwhile here
    try:
        has_maps = run.has("clustering", "prototypes.npz") and bool(run.interpretation_steps)
        if explanation is not None and has_maps:
            for c, info in sorted(explanation.classes.items()):
                slug = class_slug(c)
                report.galleries[slug] = class_gallery(run, info)
                report.groups[slug] += gallery_pages(report.galleries[slug], f"{slug}-gallery",
                                                     f"Prototypes of '{run.name(c)}' in its samples")
            pair = explanation.pair
            if pair is not None:
                report.galleries["pair"] = pair_gallery(run)
                report.groups["pair"] += gallery_pages(report.galleries["pair"],
                                                       f"pair-{pair.a:02d}-{pair.b:02d}-gallery",
                                                       f"'{run.name(pair.a)}' vs '{run.name(pair.b)}'")
        if explanation is not None and explanation.pair is not None and misclassified:
            from i2x.report.misclassified import pair_misclassified

            report.misclassified = pair_misclassified(run, explanation.pair.a, explanation.pair.b)
        if has_maps:
            report.galleries["gallery"] = full_gallery(run)
            report.groups["gallery"] = gallery_pages(report.galleries["gallery"], "gallery", "Prototype gallery")
    finally:
        drawing.finish()
    return report
