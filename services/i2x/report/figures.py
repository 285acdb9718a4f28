"""The paper's figures (Fig. 3-9), one function per figure, from plain arrays.

Each function returns a matplotlib Figure built without pyplot (no global state, safe in
threads); `to_png` renders it with the Agg backend. Prototypes are named `P-m`, classes by the
names the caller passes (run.json's classes). docs/REPORT.md says how to read each figure.
"""

from __future__ import annotations

import io
import textwrap
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from i2x.core.errors import InvalidArgument

DPI = 96
MARKER_LIMIT = 40       # more checkpoints than this: lines without markers (or with every k-th only)
MAX_KEY_NUMBERS = 25    # most numbers over Fig. 3-4's key checkpoints: at least 1/25 of the axis apart, legible
# Colour-blind friendly cycle (Okabe-Ito) for the few prototypes a figure highlights.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#882255", "#56B4E9", "#44AA99", "#000000"]
UNCERTAIN_COLOR = "#D55E00"
_JET = matplotlib.colormaps["jet"]


def proto(m: int) -> str:
    return f"P-{int(m)}"


def to_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes (Agg). Figures that set their own margins (`fixed_margins`)
    skip the tight bounding box, which costs a second full draw."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    tight = None if getattr(fig, "fixed_margins", False) else "tight"
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches=tight, facecolor="white",
                pil_kwargs={"compress_level": 3})
    return buffer.getvalue()


def numbered_keys(centres: Sequence[float], span: float) -> list[int]:
    """Which of Fig. 3-4's key checkpoints (label positions `centres`, in step order) carry their
    number: the first, then each one at least span / MAX_KEY_NUMBERS right of the last numbered,
    and always the last (replacing the one before when the two are too close)."""
    gap = span / MAX_KEY_NUMBERS
    chosen: list[int] = []
    for n, x in enumerate(centres):
        if not chosen or x - centres[chosen[-1]] >= gap:
            chosen.append(n)
    if centres and chosen[-1] != len(centres) - 1:
        if len(chosen) > 1 and centres[-1] - centres[chosen[-1]] < gap:
            chosen.pop()
        chosen.append(len(centres) - 1)
    return chosen


def _steps_array(steps, name: str) -> np.ndarray:
    steps = np.asarray(steps)
    if steps.ndim != 1 or len(steps) == 0:
        raise InvalidArgument(f"expected a non-empty 1-d array of checkpoint steps, got shape {steps.shape}", field=name)
    return steps


# -- Fig. 3 ------------------------------------------------------------------------------------
def class_evolution(steps, mean_intensity, prototypes: Sequence[int], mean_confidence, *, class_name: str,
                    key_steps: Sequence[int] = (), next_steps: dict[int, int] | None = None,
                    numbered: bool = False) -> Figure:
    """Fig. 3: a class's shared prototypes' mean intensity (left axis) and the class's mean
    confidence (right axis) over the checkpoints; key checkpoint intervals shaded.

    steps (T,); mean_intensity (T, S) for the S prototypes listed in `prototypes`, averaged over
    the class's samples; mean_confidence (T,). A key step t is the change from t to the next
    checkpoint, so it is shaded from t to next_steps[t] (default: the following step).
    numbered=True numbers the shaded intervals 1, 2, ... in step order (Fig. 4's numbering).
    """
    steps = _steps_array(steps, "steps")
    mean_intensity = np.asarray(mean_intensity, dtype=float).reshape(len(steps), -1)
    if mean_intensity.shape[1] != len(prototypes):
        raise InvalidArgument(f"mean_intensity has {mean_intensity.shape[1]} columns for {len(prototypes)} "
                              "prototypes; pass one column per prototype", field="mean_intensity")
    fig = Figure(figsize=(8, 5.0))
    fig.fixed_margins = True
    fig.subplots_adjust(left=0.11, right=0.89, top=0.9, bottom=0.3)
    ax = fig.add_subplot()
    following = dict(zip(steps[:-1].tolist(), steps[1:].tolist()))
    following.update(next_steps or {})
    for n, t in enumerate(key_steps):
        ax.axvspan(t, following.get(int(t), t), color="#FFE9A8", alpha=0.8, lw=0,
                   label="key checkpoint (change to the next one)" if n == 0 else None)
    marker = "o" if len(steps) <= MARKER_LIMIT else None  # many checkpoints: lines only, still readable
    for n, m in enumerate(prototypes):
        ax.plot(steps, mean_intensity[:, n], marker=marker, ms=3, lw=1.6, color=PALETTE[n % len(PALETTE)],
                label=f"{proto(m)} intensity")
    ax.set_xlabel("training step (checkpoint)")
    ax.set_ylabel("mean prototype intensity\n(saliency summed over the prototype's positions)")
    twin = ax.twinx()
    twin.plot(steps, mean_confidence, color="black", lw=2.2, ls="--", label=f"confidence of '{class_name}'")
    twin.set_ylabel(f"mean confidence of class '{class_name}'")
    twin.set_ylim(-0.02, 1.12 if numbered else 1.02)
    if numbered:
        ordered = sorted(key_steps)
        centres = [(t + following.get(int(t), t)) / 2 for t in ordered]
        for n in numbered_keys(centres, float(steps[-1] - steps[0])):
            twin.annotate(str(n + 1), (centres[n], 1.1), ha="center", va="top",
                          fontsize=8, fontweight="bold", color="#7A5A00")
    handles, labels = ax.get_legend_handles_labels()
    twin_handles, twin_labels = twin.get_legend_handles_labels()
    fig.legend(handles + twin_handles, labels + twin_labels, fontsize=8, loc="lower center",
               bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False)
    title = f"Class '{class_name}': shared prototypes and confidence over training"
    if not len(prototypes):
        title += "\n(no prototype is shared by every sample of this class)"
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    return fig


# -- Fig. 4 ------------------------------------------------------------------------------------
# -- Fig. 5-7 ----------------------------------------------------------------------------------
def pair_contributions(steps, contributions, *, name_a: str, name_b: str, reliable: Sequence[int] = (),
                       uncertain: Sequence[int] = (), title: str | None = None,
                       uncertain_label: str = "uncertain") -> Figure:
    """Fig. 5-7: each prototype's contribution D_t[m] = W_t[m, a] - W_t[m, b] over the steps.

    Above zero the prototype's intensity change pushed towards a, below towards b. Reliable
    prototypes are drawn solid and coloured, uncertain ones thick dashed in red-orange, the
    others thin grey.
    """
    steps = _steps_array(steps, "steps")
    contributions = np.asarray(contributions, dtype=float)
    if contributions.ndim != 2 or contributions.shape[0] != len(steps):
        raise InvalidArgument(f"contributions must be (steps, M) = ({len(steps)}, M), got {contributions.shape}",
                              field="contributions")
    fig = Figure(figsize=(8, 4.4))
    fig.fixed_margins = True
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
    ax = fig.add_subplot()
    highlighted = set(reliable) | set(uncertain)
    others = [m for m in range(contributions.shape[1]) if m not in highlighted]
    for n, m in enumerate(others):
        ax.plot(steps, contributions[:, m], color="#BBBBBB", lw=0.7, zorder=1,
                label="other prototypes" if n == 0 else None)
    # Reliable lines take the palette without its orange (kept apart from the uncertain colour);
    # uncertain lines share one colour and differ by marker.
    reliable_colors = [c for c in PALETTE if c != "#E69F00"]
    # The markers tell the uncertain lines apart: with many steps only every k-th point has one.
    every = max(1, -(-len(steps) // MARKER_LIMIT))
    for n, m in enumerate(reliable):
        ax.plot(steps, contributions[:, m], color=reliable_colors[n % len(reliable_colors)], lw=2, marker="o", ms=3,
                markevery=every, zorder=3, label=f"{proto(m)} (reliable)")
    for n, m in enumerate(uncertain):
        ax.plot(steps, contributions[:, m], color=UNCERTAIN_COLOR, lw=2.6, ls="--", marker="s^Dv"[n % 4], ms=5,
                markevery=every, zorder=4, label=f"{proto(m)} ({uncertain_label})")
    ax.axhline(0, color="black", lw=0.8)
    limit = max(np.abs(contributions).max(), 1e-9) * 1.1
    ax.set_ylim(-limit, limit)
    ax.text(0.01, 0.97, f"favours '{name_a}' \u2191", transform=ax.transAxes, va="top", fontsize=9)
    ax.text(0.01, 0.03, f"favours '{name_b}' \u2193", transform=ax.transAxes, va="bottom", fontsize=9)
    ax.set_xlabel("training step t (change from checkpoint t to the next)")
    ax.set_ylabel(f"contribution W_t[m,'{name_a}'] \u2212 W_t[m,'{name_b}']")
    ax.set_title(title or f"Pair '{name_a}' vs '{name_b}': each prototype's contribution over training", fontsize=11)
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    ax.grid(alpha=0.3)
    return fig


# -- Fig. 8 ------------------------------------------------------------------------------------
def confusion_matrices(panels: Sequence[tuple[str, np.ndarray]], class_names: Sequence[str], *,
                       pair: tuple[int, int] | None = None) -> Figure:
    """Fig. 8: confusion matrices side by side (rows true class, columns predicted), counts in
    each cell, the diagonal left out of the colour scale so errors stand out; the pair's two
    off-diagonal cells outlined."""
    if not panels:
        raise InvalidArgument("give at least one (title, confusion matrix) panel", field="panels")
    K = len(class_names)
    size = min(4.2 + 0.25 * K, 9)
    fig = Figure(figsize=(size * len(panels) + 1.0, size + 0.4), layout="constrained")
    for title, confusion in panels:
        if np.shape(confusion) != (K, K):
            raise InvalidArgument(f"confusion matrix '{title}' has shape {np.shape(confusion)}, expected ({K}, {K}) "
                                  "for the run's classes", field="confusion")
    errors_max = max(float(np.max(np.asarray(c, float) * (1 - np.eye(K)))) for _, c in panels) or 1.0
    for n, (title, confusion) in enumerate(panels):
        confusion = np.asarray(confusion, dtype=float)
        ax = fig.add_subplot(1, len(panels), n + 1)
        off_diagonal = np.where(np.eye(K, dtype=bool), np.nan, confusion)
        image = ax.imshow(off_diagonal, cmap="Reds", vmin=0, vmax=errors_max)
        ax.imshow(np.where(np.eye(K, dtype=bool), 1.0, np.nan), cmap="Greys", vmin=0, vmax=4)
        integers = np.allclose(confusion, np.round(confusion))
        if K <= 20:
            for i in range(K):
                for j in range(K):
                    value = confusion[i, j]
                    text = f"{int(round(value))}" if integers else f"{value:.1f}"
                    strong = i != j and value > 0.6 * errors_max
                    ax.text(j, i, text, ha="center", va="center", fontsize=7 if K > 10 else 8,
                            color="white" if strong else "black")
        if pair is not None:
            a, b = pair
            for (i, j) in ((a, b), (b, a)):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="#0072B2", lw=2.2))
        accuracy = np.trace(confusion) / max(confusion.sum(), 1e-12)
        ax.set_title(f"{title}\naccuracy {100 * accuracy:.2f}%", fontsize=10)
        ax.set_xticks(range(K), [str(c) for c in class_names], rotation=90 if K > 10 else 0, fontsize=8)
        ax.set_yticks(range(K), [str(c) for c in class_names], fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    fig.colorbar(image, ax=fig.axes, shrink=0.8, label="misclassified samples (off-diagonal)")
    if pair is not None:
        fig.suptitle(f"Confusion matrices (blue boxes: the pair '{class_names[pair[0]]}' / '{class_names[pair[1]]}')",
                     fontsize=11)
    return fig


# -- Fig. 9 ------------------------------------------------------------------------------------
def receptive_box(i: int, j: int, feature_hw: tuple[int, int], image_hw: tuple[int, int],
                  margin: float = 1.0) -> tuple[int, int, int, int]:
    """Input region (top, bottom, left, right; end exclusive) approximating the receptive field
    of feature cell (i, j): the cell scaled by H/h and W/w, enlarged by `margin` cells on each
    side, clipped to the image. An approximation: a conv net's true receptive field is larger
    and centre-weighted, but the cell's own region plus a margin is where its evidence mostly lies.
    """
    h, w = feature_hw
    H, W = image_hw
    if not (0 <= i < h and 0 <= j < w):
        raise InvalidArgument(f"cell ({i}, {j}) is outside the {h}x{w} feature map", field="position")
    if margin < 0:
        raise InvalidArgument(f"margin must be >= 0 cells, got {margin}", field="margin")
    sy, sx = H / h, W / w
    top = int(np.floor((i - margin) * sy))
    bottom = int(np.ceil((i + 1 + margin) * sy))
    left = int(np.floor((j - margin) * sx))
    right = int(np.ceil((j + 1 + margin) * sx))
    return max(top, 0), min(bottom, H), max(left, 0), min(right, W)


def upsample_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., h, w) -> (..., H, W) bilinear, cell centres aligned (like align_corners=False)."""
    maps = np.asarray(maps, dtype=np.float32)
    h, w = maps.shape[-2:]
    H, W = size
    ys = np.clip((np.arange(H) + 0.5) * h / H - 0.5, 0, h - 1)
    xs = np.clip((np.arange(W) + 0.5) * w / W - 0.5, 0, w - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    top = maps[..., y0, :][..., :, x0] * (1 - fx) + maps[..., y0, :][..., :, x1] * fx
    bottom = maps[..., y1, :][..., :, x0] * (1 - fx) + maps[..., y1, :][..., :, x1] * fx
    return top * (1 - fy) + bottom * fy


def select_patches(assignments: np.ndarray, saliency: np.ndarray, prototype: int, n_patches: int) -> list[tuple[int, int, int]]:
    """Positions (n, i, j) assigned to `prototype` to show: per sample its most salient such
    position, then the samples with the highest saliency there (ties: lower sample index)."""
    mask = assignments == prototype
    if not mask.any():
        return []
    scored = np.where(mask, saliency, -np.inf)
    N, h, w = assignments.shape
    flat = scored.reshape(N, -1)
    best_cell = flat.argmax(axis=1)
    best_value = flat[np.arange(N), best_cell]
    candidates = np.flatnonzero(np.isfinite(best_value))
    order = candidates[np.lexsort((candidates, -best_value[candidates]))][:n_patches]
    return [(int(n), int(best_cell[n] // w), int(best_cell[n] % w)) for n in order]


# -- Table 1 -----------------------------------------------------------------------------------
def format_mean_std(value, *, percent: bool = False) -> str:
    """{"mean": m, "std": s} (or a bare number) as 'm ± s'; accuracy in [0, 1] shown as percent."""
    if value is None:
        return "\u2013"
    mean, std = (value.get("mean"), value.get("std")) if isinstance(value, dict) else (value, None)
    if mean is None:
        return "\u2013"
    scale = 100.0 if percent and abs(float(mean)) <= 1.0 else 1.0
    text = f"{scale * float(mean):.2f}"
    return text + (f" \u00b1 {scale * float(std):.2f}" if std is not None else "")


def wrap(text: str, width: int = 90) -> str:
    return "\n".join(textwrap.wrap(text, width))
