"""Render every figure of a run (names -> PNG bytes) from its artifacts in the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from i2x.report import figures as F
from i2x.report import gallery as G
from i2x.report.run_data import ClassExplanation, RunData

if TYPE_CHECKING:
    from i2x.report.misclassified import PairMisclassified

MAX_LINES = 8           # prototypes drawn in one evolution figure
GALLERY_PAGE = 16       # prototype rows per stored gallery file
GALLERY_ROWS_PER_CLASS = 12
CLASS_PATCHES = 4       # crops per row in a class's own gallery (the full gallery has 6)
EVENTS_PER_KEY = 3      # driving prototypes annotated per key checkpoint in the timeline


@dataclass
class Rendered:
    name: str           # file name under figures/
    png: bytes
    caption: str


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


def class_figures(run: RunData, info: ClassExplanation) -> list[Rendered]:
    c, name, slug = info.index, run.name(info.index), class_slug(info.index)
    steps, confidence = mean_confidence(run, c)
    intensity_steps, intensity = run.intensity
    shown = evolution_prototypes(run, info)
    members = class_members(run, c)
    mean_intensity = intensity[:, members][:, :, shown].mean(axis=1) if shown else np.zeros((len(steps), 0))
    following = dict(zip(intensity_steps[:-1].tolist(), intensity_steps[1:].tolist()))
    # Fig. 3 and Fig. 4 in one figure: the key checkpoints are shaded and numbered; what each
    # numbered checkpoint did is the HTML list beside it (linked prototypes), not text in the image.
    fig = F.class_evolution(intensity_steps, mean_intensity, shown, confidence, class_name=name,
                            key_steps=[k.step for k in info.key_checkpoints], next_steps=following, numbered=True)
    more = len(info.shared) - len(shown)
    return [Rendered(f"{slug}-evolution.png", F.to_png(fig),
                     f"Fig. 3-4 for '{name}': mean intensity of its shared prototypes over its {len(members)} "
                     "samples (left axis) and its mean confidence (dashed, right axis); shaded and numbered: key "
                     "checkpoints (listed below the figure)."
                     + (f" The {more} least intense shared prototypes are left out." if more > 0 else ""))]


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
    slug = f"pair-{a:02d}-{b:02d}"
    uncertain = pair.uncertain or ([pair.uncertain_prototype] if pair.uncertain_prototype is not None else [])
    # With no unsupported flip, the explanation names the most alternating (compensated) prototype.
    label = "uncertain" if pair.uncertain else "most alternating, compensated"
    fig = F.pair_contributions(steps, D, name_a=run.name(a), name_b=run.name(b), reliable=pair.reliable[:6],
                               uncertain=uncertain[:3], uncertain_label=label)
    out = [Rendered(f"{slug}-contributions.png", F.to_png(fig),
                    f"Fig. 5-7: each prototype's contribution to '{run.name(a)}' versus '{run.name(b)}' at each "
                    "step (above zero: towards the first class). Coloured solid lines: reliable prototypes; "
                    "dashed: uncertain.")]
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
        fig = F.confusion_matrices(panels, run.class_names, pair=run_pair(run))
        out.append(Rendered("confusion.png", F.to_png(fig),
                            "Fig. 8: confusion matrices on the test split (rows: true class, columns: predicted)"
                            + (", before and after fine-tuning." if len(panels) > 1 else ".")))
    table = run.finetune_table
    if table and table.get("rows"):
        pair = run_pair(run)
        names = (run.name(pair[0]), run.name(pair[1])) if pair else None
        rows = list(table["rows"])
        if table.get("baseline"):
            rows.insert(0, {"protocol": "final model (no fine-tuning)", **table["baseline"]})
        out.append(Rendered("finetune-table.png", F.to_png(F.finetune_table(rows, pair_names=names)),
                            "Table 1: fine-tuning protocols from the final model."))
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


def render_all(run: RunData, *, misclassified: bool = True) -> Report:
    """Every figure of the run, grouped by report section: overview, classes (by index), pair,
    gallery; gallery rows per class ("class-CC"), for the pair ("pair") and for all ("gallery")."""
    report = Report({"overview": overview_figures(run), "pair": [], "gallery": []})
    explanation = run.explanation
    has_maps = run.has("clustering", "prototypes.npz") and bool(run.interpretation_steps)
    if explanation is not None:
        for c, info in sorted(explanation.classes.items()):
            slug = class_slug(c)
            report.groups[slug] = class_figures(run, info)
            if has_maps:
                report.galleries[slug] = class_gallery(run, info)
                report.groups[slug] += gallery_pages(report.galleries[slug], f"{slug}-gallery",
                                                     f"Prototypes of '{run.name(c)}' in its samples")
        report.groups["pair"] = pair_figures(run)
        if explanation.pair is not None and has_maps:
            pair = explanation.pair
            report.galleries["pair"] = pair_gallery(run)
            report.groups["pair"] += gallery_pages(report.galleries["pair"], f"pair-{pair.a:02d}-{pair.b:02d}-gallery",
                                                   f"'{run.name(pair.a)}' vs '{run.name(pair.b)}'")
            if misclassified:
                from i2x.report.misclassified import pair_misclassified

                report.misclassified = pair_misclassified(run, pair.a, pair.b)
    if has_maps:
        report.galleries["gallery"] = full_gallery(run)
        report.groups["gallery"] = gallery_pages(report.galleries["gallery"], "gallery", "Prototype gallery")
    return report
