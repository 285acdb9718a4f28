"""Prototype gallery crops drawn with numpy + PIL (no matplotlib: a few ms per row).

Each crop is two tiles side by side, both upscaled with nearest-neighbour so pixels stay
sharp: the input region around one feature cell assigned to the prototype (the image itself,
nothing drawn over it except the cell's outline), and the final checkpoint's saliency over the
same region in the jet colour map (normalised by the sample's maximum). docs/REPORT.md,
"Gallery crops", says what the region approximates.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import lru_cache

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from i2x.report.figures import receptive_box, select_patches, upsample_bilinear

TILE = 64                 # pixels of the longer side of one upscaled tile
GAP = 3                   # between the input tile and its saliency tile
CROP_GAP = 10             # between two crops of a row
CAPTION = 14              # caption band above each crop
OUTLINE = (255, 196, 0)   # the assigned cell (amber: visible on grey input and on jet)
UNCERTAIN_OUTLINE = (213, 94, 0)
PAD = (236, 239, 243)     # where a crop is clipped by the image border
_JET = matplotlib.colormaps["jet"]


@lru_cache(maxsize=4)
def font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


@dataclass
class Crop:
    sample: int           # index into the images given (see GalleryRow.sample_ids for the explanation index)
    cell: tuple[int, int]
    caption: str


@dataclass
class GalleryRow:
    prototype: int
    count: int            # images (of those given) holding the prototype anywhere
    total: int            # images given
    crops: list[Crop] = field(default_factory=list)
    png: bytes = b""      # the row's strip of crops (empty when the prototype appears nowhere)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def _box_size(feature_hw, image_hw, margin: float) -> tuple[int, int]:
    """The largest crop receptive_box can return (an inner cell), so every tile has one size."""
    h, w = feature_hw
    boxes = [receptive_box(i, j, feature_hw, image_hw, margin) for i in {0, h // 2, h - 1} for j in {0, w // 2, w - 1}]
    return max(b - t for t, b, _, _ in boxes), max(r - l for _, _, l, r in boxes)


def _outline(tile: np.ndarray, top: int, left: int, bottom: int, right: int, color, width: int = 2) -> None:
    H, W = tile.shape[:2]
    top, left = max(top, 0), max(left, 0)
    bottom, right = min(bottom, H), min(right, W)
    tile[top:min(top + width, bottom), left:right] = color
    tile[max(bottom - width, top):bottom, left:right] = color
    tile[top:bottom, left:min(left + width, right)] = color
    tile[top:bottom, max(right - width, left):right] = color


def crop_pair(image: np.ndarray, heat: np.ndarray, cell: tuple[int, int], feature_hw, *, margin: float = 1.0,
              scale: int | None = None, box: tuple[int, int] | None = None, color=OUTLINE) -> np.ndarray:
    """(tile_h, 2 * tile_w + GAP, 3) uint8: the input crop around `cell` and the saliency of the
    same region, each upscaled `scale` times (nearest), padded to `box` pixels before scaling;
    the cell outlined in both. `heat` is the sample's saliency upsampled to the input, in [0, 1]."""
    image = _to_rgb(image)
    H, W = image.shape[:2]
    h, w = feature_hw
    i, j = cell
    top, bottom, left, right = receptive_box(i, j, feature_hw, (H, W), margin)
    box = box or _box_size(feature_hw, (H, W), margin)
    scale = scale or max(1, TILE // max(box))
    tiles = []
    for source in (image, (np.asarray(_JET(np.clip(heat, 0, 1)))[..., :3] * 255).astype(np.uint8)):
        canvas = np.empty((box[0], box[1], 3), np.uint8)
        canvas[:] = PAD
        region = source[top:bottom, left:right]
        # Align the crop so the assigned cell keeps its place when the image border clips it.
        dy = box[0] - region.shape[0] if top == 0 and bottom - top < box[0] else 0
        dx = box[1] - region.shape[1] if left == 0 and right - left < box[1] else 0
        canvas[dy:dy + region.shape[0], dx:dx + region.shape[1]] = region
        big = np.repeat(np.repeat(canvas, scale, axis=0), scale, axis=1)
        cell_top = (int(round(i * H / h)) - top + dy) * scale
        cell_left = (int(round(j * W / w)) - left + dx) * scale
        _outline(big, cell_top, cell_left, cell_top + int(round(H / h * scale)), cell_left + int(round(W / w * scale)),
                 color)
        tiles.append(big)
    gap = np.full((tiles[0].shape[0], GAP, 3), 255, np.uint8)
    return np.concatenate([tiles[0], gap, tiles[1]], axis=1)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def strip(crops: list[np.ndarray], captions: list[str]) -> np.ndarray:
    """Crops side by side, each with its caption above (PIL text)."""
    height, width = crops[0].shape[:2]
    total = len(crops) * width + (len(crops) - 1) * CROP_GAP
    canvas = Image.new("RGB", (total, height + CAPTION), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (crop, caption) in enumerate(zip(crops, captions)):
        x = k * (width + CROP_GAP)
        canvas.paste(Image.fromarray(crop), (x, CAPTION))
        draw.text((x + 1, 1), caption, fill=(40, 45, 55), font=font(11))
    return np.asarray(canvas)


def gallery_rows(images: np.ndarray, saliency: np.ndarray, assignments: np.ndarray, prototypes, *,
                 labels: np.ndarray | None = None, class_names=None, sample_ids: np.ndarray | None = None,
                 n_patches: int = 6, margin: float = 1.0, outline: dict[int, tuple] | None = None) -> list[GalleryRow]:
    """One row per prototype: up to n_patches crops (figures.select_patches: each from another
    sample, the most salient first), each as crop_pair, captioned '#index 'class''."""
    images = np.asarray(images)
    N = images.shape[0]
    H, W = images.shape[1:3]
    h, w = assignments.shape[1:]
    box = _box_size((h, w), (H, W), margin)
    peak = np.maximum(saliency.reshape(N, -1).max(axis=1).astype(np.float32), 1e-12) if N else np.zeros(0)
    present = np.stack([(assignments == m).any(axis=(1, 2)) for m in prototypes]) if len(prototypes) and N else None
    heat_cache: dict[int, np.ndarray] = {}
    rows = []
    for r, m in enumerate(prototypes):
        row = GalleryRow(int(m), int(present[r].sum()) if present is not None else 0, N)
        pieces, captions = [], []
        for n, i, j in select_patches(assignments, saliency, m, n_patches):
            if n not in heat_cache:
                heat_cache[n] = upsample_bilinear(saliency[n], (H, W)) / peak[n]
            sample = int(sample_ids[n]) if sample_ids is not None else n
            caption = f"#{sample}"
            if labels is not None and class_names is not None:
                caption += f" '{class_names[int(labels[n])]}'"
            pieces.append(crop_pair(images[n], heat_cache[n], (i, j), (h, w), margin=margin, box=box,
                                    color=(outline or {}).get(int(m), OUTLINE)))
            captions.append(caption)
            row.crops.append(Crop(int(n), (i, j), caption))
        if pieces:
            row.png = _png(strip(pieces, captions))
        rows.append(row)
    return rows


def gallery_page(rows: list[GalleryRow], title: str, notes: dict[int, str] | None = None) -> bytes:
    """The rows stacked into one PNG with a label column (P-m, its note, 'in n images'): the
    stored figure file (the HTML page shows the rows themselves)."""
    label_w, gap = 120, 8
    strips = [Image.open(io.BytesIO(r.png)) if r.png else None for r in rows]
    width = label_w + max([s.width for s in strips if s is not None] + [200])
    heights = [(s.height if s is not None else 30) + gap for s in strips]
    canvas = Image.new("RGB", (width, 24 + sum(heights)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=(0, 0, 0), font=font(13))
    y = 24
    for row, image, height in zip(rows, strips, heights):
        note = (notes or {}).get(row.prototype)
        lines = [f"P-{row.prototype}"] + ([f"({note})"] if note else []) + [f"in {row.count} images"]
        draw.multiline_text((4, y + 14), "\n".join(lines), fill=(0, 0, 0), font=font(12), spacing=2)
        if image is not None:
            canvas.paste(image, (label_w, y))
        else:
            draw.text((label_w, y + 8), "no position", fill=(90, 90, 90), font=font(11))
        y += height
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=1)  # a stored file, not embedded: speed over size
    return buffer.getvalue()


def _categorical(n: int) -> np.ndarray:
    """n distinct colours (tab20 then hsv), uint8 (n, 3)."""
    base = [matplotlib.colormaps["tab20"](k % 20)[:3] for k in range(min(n, 20))]
    extra = [matplotlib.colormaps["hsv"](k / max(n - 20, 1))[:3] for k in range(max(n - 20, 0))]
    return (np.asarray(base + extra) * 255).astype(np.uint8)


def cell_outline_mask(cells: np.ndarray, scale_y: float, scale_x: float, size: tuple[int, int]) -> np.ndarray:
    """(H', W') bool: the outer border of the union of the marked feature cells, at the tile's scale."""
    H, W = size
    ys = np.minimum((np.arange(H) / scale_y).astype(int), cells.shape[0] - 1)
    xs = np.minimum((np.arange(W) / scale_x).astype(int), cells.shape[1] - 1)
    inside = cells[ys][:, xs]
    edge = np.zeros_like(inside)
    for axis in (0, 1):
        for shift in (1, -1):
            moved = np.roll(inside, shift, axis=axis)
            if axis == 0:
                moved[0 if shift == 1 else -1, :] = False
            else:
                moved[:, 0 if shift == 1 else -1] = False
            edge |= inside & ~moved
    return edge | (inside & np.pad(np.zeros((H - 2, W - 2), bool), 1, constant_values=True))


def assignment_tiles(image: np.ndarray, assignment: np.ndarray, saliency: np.ndarray | None, marked: list[int],
                     n_prototypes: int, *, size: int = 112) -> np.ndarray:
    """Three tiles side by side for one image: the input, its assignment map (one colour per
    prototype) and, when given, its saliency (jet, normalised); the positions assigned to the
    `marked` prototypes outlined in red-orange on each (thick, drawn twice as wide)."""
    image = _to_rgb(image)
    H, W = image.shape[:2]
    h, w = assignment.shape
    scale = max(1, size // max(H, W))
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    Hs, Ws = big.shape[:2]
    colours = _categorical(max(n_prototypes, int(assignment.max()) + 1))
    ys = np.minimum((np.arange(Hs) * h / Hs).astype(int), h - 1)
    xs = np.minimum((np.arange(Ws) * w / Ws).astype(int), w - 1)
    tiles = [big, colours[assignment[ys][:, xs]]]
    if saliency is not None:
        heat = upsample_bilinear(saliency, (Hs, Ws))
        heat = heat / max(float(heat.max()), 1e-12)
        tiles.append((np.asarray(_JET(np.clip(heat, 0, 1)))[..., :3] * 255).astype(np.uint8))
    marked_cells = np.isin(assignment, marked)
    if marked_cells.any():
        edge = cell_outline_mask(marked_cells, Hs / h, Ws / w, (Hs, Ws))
        edge |= np.roll(edge, 1, axis=0) | np.roll(edge, 1, axis=1)
        for tile in tiles:
            tile[edge] = UNCERTAIN_OUTLINE
    gap = np.full((Hs, GAP, 3), 255, np.uint8)
    out = [tiles[0]]
    for tile in tiles[1:]:
        out += [gap, tile]
    return np.concatenate(out, axis=1)


def misclassified_strip(images, assignments, saliency, marked: list[int], n_prototypes: int,
                        captions: list[str]) -> bytes:
    crops = [assignment_tiles(images[k], assignments[k], None if saliency is None else saliency[k], marked,
                              n_prototypes) for k in range(len(images))]
    return _png(strip(crops, captions))


def plain_strip(images, captions: list[str], size: int = 84) -> bytes:
    """Input images only (when no assignment map could be computed)."""
    crops = []
    for image in images:
        image = _to_rgb(image)
        scale = max(1, size // max(image.shape[:2]))
        crops.append(np.repeat(np.repeat(image, scale, axis=0), scale, axis=1))
    return _png(strip(crops, captions))
