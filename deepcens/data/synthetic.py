"""Deterministic synthetic microscopy: an EVICAN2-shaped COCO set and a CTC time-lapse.

Why: tests, the demo and CI need cell data with the layout of the real sets (EVICAN2, Cell
Tracking Challenge) without downloading them. The images try to look like microscopy rather
than like rectangles:

* cells are irregular, often non-convex radial Fourier shapes with pseudopod bumps, of widely
  varied size (down to a few pixels), placed alone or in touching clusters; most hold a nucleus;
* three renderings: fluorescence (bright on dark, cytoplasm dim, nucleus bright, some images as
  RGB composites), phase contrast (dark cells with a bright halo on grey) and brightfield
  (faint cells with a dark rim on grey);
* smooth uneven illumination (gradient + vignetting), out-of-focus debris that is not
  annotated, optical blur, Poisson shot noise plus Gaussian read noise;
* 8-bit PNG and 16-bit TIFF images mixed in every split.

Why one module of this size: the output is byte-identical per seed because every draw comes
from one random stream in one fixed order (shapes, clusters, rendering, noise, then the COCO and
CTC writers); split across modules that order would be easy to break unnoticed.

Everything derives from ``numpy.random.default_rng([seed, split, index])`` and the files carry
no timestamps, so the same seed and arguments give byte-identical output.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from deepcens.data.io import encode_png, encode_tiff
from deepcens.errors import DeepcensInputError
from deepcens.utils.atomic import atomic_save_bytes, atomic_save_json

__all__ = ["make_synthetic", "make_evican_split", "make_ctc_sequence", "render_scene", "CATEGORIES"]

# EVICAN2 categories (cell first, nucleus second; COCO ids start at 1).
CATEGORIES = [{"id": 1, "name": "Cell", "supercategory": "Cell"},
              {"id": 2, "name": "Nucleus", "supercategory": "Nucleus"}]
CELL_ID, NUCLEUS_ID = 1, 2
STYLES = ("fluorescence", "phase", "brightfield")
CTC_DATASET = "Synthetic-Cells"
# Split name -> (stable integer for the random stream, json file stem, image folder).
_SPLITS = {
    "train": (1, "instances_train2019", "train2019"),
    "val": (2, "instances_val2019", "val2019"),
    "eval_easy": (3, "instances_eval2019_easy", "eval2019"),
    "eval_medium": (4, "instances_eval2019_medium", "eval2019"),
    "eval_difficult": (5, "instances_eval2019_difficult", "eval2019"),
}
# Difficulty interval (0 = few separated high-contrast cells, 1 = crowded, touching, faint).
_DIFFICULTY = {"train": (0.0, 1.0), "val": (0.0, 1.0), "eval_easy": (0.0, 0.15),
               "eval_medium": (0.45, 0.6), "eval_difficult": (0.85, 1.0)}
_MIN_CELL_AREA = 5  # smaller instances are dropped (a polygon needs >= 3 distinct points)
_MIN_NUCLEUS_AREA = 4


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------
def _fourier_polygon(rng: np.random.Generator, center: tuple[float, float], radius: float,
                     irregularity: float, elongation: float, angle: float,
                     bumps: int = 0, n_vertices: int = 48) -> np.ndarray:
    """Closed polygon (n, 2) in (x, y): a circle whose radius is perturbed by low harmonics.

    Harmonics 2..6 with amplitudes ~ irregularity / k and Gaussian angular bumps (pseudopods)
    make irregular, often non-convex outlines; elongation < 1 squashes one axis.
    """
    theta = np.linspace(0.0, 2.0 * np.pi, n_vertices, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 7):
        r += rng.normal(0.0, irregularity / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    for _ in range(bumps):
        mu, width, height = rng.uniform(0, 2 * np.pi), rng.uniform(0.12, 0.35), rng.uniform(0.3, 0.9)
        delta = np.angle(np.exp(1j * (theta - mu)))
        r += height * np.exp(-0.5 * (delta / width) ** 2)
    r = np.maximum(r, 0.35) * radius
    x, y = r * np.cos(theta), r * np.sin(theta) * elongation
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([center[0] + ca * x - sa * y, center[1] + sa * x + ca * y], axis=1)


def _rasterize(polygon: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]] | None:
    """Fill a polygon into its clipped bounding box; returns (bool crop, (y0, x0)) or None."""
    h, w = shape
    x0, y0 = max(int(np.floor(polygon[:, 0].min())) - 1, 0), max(int(np.floor(polygon[:, 1].min())) - 1, 0)
    x1, y1 = min(int(np.ceil(polygon[:, 0].max())) + 2, w), min(int(np.ceil(polygon[:, 1].max())) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return None
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    # cv2 fills pixel centres; shift=4 keeps 1/16 pixel precision of the vertices.
    points = np.round((polygon - [x0 - 0.5, y0 - 0.5]) * 16 - 8).astype(np.int32)
    cv2.fillPoly(canvas, [points], 1, lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool), (y0, x0)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 4-connected component of a boolean mask."""
    count, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if count <= 2:
        return mask
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return comp == best


def _has_holes(mask: np.ndarray) -> bool:
    """True when the background inside the mask's bounding frame is not all connected to its edge."""
    padded = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    count, _ = cv2.connectedComponents(padded, connectivity=4)
    return count > 2


def mask_polygon(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[float] | None:
    """COCO polygon ``[x1, y1, x2, y2, ...]`` of a single-component mask (>= 3 points) or None.

    A contour through pixel centres would cut every boundary pixel in half (mean mask IoU of
    its rasterisation ~0.77, far worse for tiny cells). So the contour is traced on the mask
    upsampled 4x, i.e. 1/8 pixel inside the pixel edges, and simplified by 0.3 px: the polygon
    then rasterises (pycocotools) back to exactly the mask and its area is close to the pixel count. ``offset`` (y0, x0) places
    a crop back into image coordinates.
    """
    mask = mask.astype(np.uint8)
    upsampled = cv2.resize(mask, (4 * mask.shape[1], 4 * mask.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(upsampled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    contour = cv2.approxPolyDP(max(contours, key=cv2.contourArea), 1.2, True).reshape(-1, 2)
    if len(contour) < 3:
        return None
    contour = (contour.astype(np.float64) + 0.5) / 4.0 + [offset[1], offset[0]]
    return [float(v) for v in contour.reshape(-1)]


# ----------------------------------------------------------------------------------------------
# Scenes (label images) for the EVICAN-shaped set
# ----------------------------------------------------------------------------------------------
@dataclass
class Scene:
    """Label images of one synthetic image: cells and nuclei, 0 = background, ids 1..n."""

    cells: np.ndarray  # int32 (H, W), non-overlapping cells (nucleus pixels included)
    nuclei: np.ndarray  # int32 (H, W), nucleus k lies inside cell ``nucleus_cell[k - 1]``
    nucleus_cell: list[int] = field(default_factory=list)
    debris: list[np.ndarray] = field(default_factory=list)  # unannotated blobs (bool masks)


def _typical_radius(size: int) -> float:
    """Typical cell radius: 9 px at 128 px, growing with sqrt(size) (cell count grows with size),
    so the covered fraction of the image does not depend on the image size."""
    return 9.0 * math.sqrt(size / 128.0)


def _cell_radius(rng: np.random.Generator, size: int) -> float:
    """Cell radius in pixels: mostly lognormal around the typical radius, 15% tiny (1.5-3 px)."""
    if rng.random() < 0.15:
        return float(rng.uniform(1.5, 3.0))
    return float(np.clip(rng.lognormal(math.log(_typical_radius(size)), 0.4), 3.0, 0.2 * size))


def _place_nucleus(rng: np.random.Generator, cell_mask: np.ndarray) -> np.ndarray | None:
    """A smooth nucleus strictly inside a cell crop, centred near the cell's deepest point."""
    dist = cv2.distanceTransform(np.pad(cell_mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    depth = float(dist.max())
    if depth < 2.5:
        return None
    cy, cx = np.unravel_index(int(np.argmax(dist)), dist.shape)
    radius = rng.uniform(0.45, 0.75) * (depth - 1.0)
    jitter = rng.normal(0.0, 0.15 * radius, size=2)
    polygon = _fourier_polygon(rng, (cx + jitter[0], cy + jitter[1]), radius, rng.uniform(0.03, 0.1),
                               rng.uniform(0.7, 1.0), rng.uniform(0, np.pi), n_vertices=32)
    raster = _rasterize(polygon, cell_mask.shape)
    if raster is None:
        return None
    crop, (y0, x0) = raster
    nucleus = np.zeros_like(cell_mask)
    nucleus[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    inner = cv2.erode(cell_mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=1).astype(bool)
    nucleus = _largest_component(nucleus & inner)
    return nucleus if nucleus.sum() >= _MIN_NUCLEUS_AREA else None


def make_scene(rng: np.random.Generator, size: int, difficulty: float, background: bool = False) -> Scene:
    """Random cells + nuclei for one image; crowding and clustering grow with ``difficulty``.

    Cells are drawn one after another onto free pixels only, so they never overlap but touch
    where they meet; a cell that would be mostly hidden, split, or would wrap a hole around an
    earlier cell is dropped. Easy scenes keep a gap between cells.
    """
    shape = (size, size)
    cells = np.zeros(shape, np.int32)
    nuclei = np.zeros(shape, np.int32)
    scene = Scene(cells, nuclei)
    scale = size / 128.0  # cell count grows linearly, cell radius with sqrt(size)
    n_target = 0 if background else max(1, int(round(rng.uniform(3, 6) + difficulty * rng.uniform(14, 24)) * scale))
    cluster_prob = 0.1 + 0.8 * difficulty
    gap = 2 if difficulty < 0.3 else 0
    clusters = [rng.uniform(0.15, 0.85, size=2) * size for _ in range(1 + int(difficulty * 3))]
    attempts, label = 0, 0
    while label < n_target and attempts < n_target * 6:
        attempts += 1
        radius = _cell_radius(rng, size)
        if rng.random() < cluster_prob:
            center = clusters[rng.integers(len(clusters))] + rng.normal(0, 0.12 * size, size=2)
        else:
            center = rng.uniform(0, size, size=2)
        polygon = _fourier_polygon(rng, (float(center[0]), float(center[1])), radius,
                                   rng.uniform(0.05, 0.3), rng.uniform(0.45, 1.0), rng.uniform(0, np.pi),
                                   bumps=int(rng.integers(0, 3)) if radius > 4 else 0,
                                   n_vertices=16 if radius < 4 else 48)
        raster = _rasterize(polygon, shape)
        if raster is None:
            continue
        crop, (y0, x0) = raster
        window = (slice(y0, y0 + crop.shape[0]), slice(x0, x0 + crop.shape[1]))
        occupied = cells[window] > 0
        if gap:
            grown = cv2.dilate(crop.astype(np.uint8), np.ones((2 * gap + 1,) * 2, np.uint8)).astype(bool)
            if (grown & occupied).any():
                continue
        visible = crop & ~occupied
        full_area = int(crop.sum())
        visible = _largest_component(visible)
        area = int(visible.sum())
        if area < _MIN_CELL_AREA or area < 0.6 * full_area or _has_holes(visible):
            continue
        if mask_polygon(visible) is None:
            continue
        label += 1
        cells[window][visible] = label
        nucleus = _place_nucleus(rng, visible) if rng.random() < 0.9 else None
        if nucleus is not None and mask_polygon(nucleus) is not None:
            nuclei[window][nucleus] = len(scene.nucleus_cell) + 1
            scene.nucleus_cell.append(label)
    for _ in range(int(rng.integers(0, 4))):  # out-of-focus debris, never annotated
        polygon = _fourier_polygon(rng, tuple(rng.uniform(0, size, size=2)), rng.uniform(1.5, 0.05 * size),
                                   0.2, rng.uniform(0.5, 1.0), rng.uniform(0, np.pi), n_vertices=16)
        raster = _rasterize(polygon, shape)
        if raster is not None:
            crop, (y0, x0) = raster
            blob = np.zeros(shape, bool)
            blob[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
            scene.debris.append(blob)
    return scene


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (Gaussian-filtered white noise)."""
    field_ = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return field_ / max(float(field_.std()), 1e-6)


def _illumination(rng: np.random.Generator, shape: tuple[int, int], strength: float) -> np.ndarray:
    """Multiplicative uneven illumination: a linear gradient times radial vignetting."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / max(h - 1, 1) - 0.5, xx / max(w - 1, 1) - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1.0 + strength * rng.uniform(0.3, 0.8) * (math.cos(angle) * xx + math.sin(angle) * yy) * 2
    cy, cx = rng.uniform(-0.2, 0.2, size=2)
    vignette = 1.0 - strength * rng.uniform(0.3, 0.9) * ((xx - cx) ** 2 + (yy - cy) ** 2) * 2
    return (gradient * vignette).astype(np.float32)


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Pixels of an object whose 4-neighbour has another label (object borders, incl. touching)."""
    padded = np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy:dy + labels.shape[0], dx:dx + labels.shape[1]] != centre
    return edge & (labels > 0)


def _per_label(rng: np.random.Generator, labels: np.ndarray, low: float, high: float) -> np.ndarray:
    """Image where each label's pixels hold one random value in [low, high) (0 on background)."""
    values = np.concatenate([[0.0], rng.uniform(low, high, size=int(labels.max()))]).astype(np.float32)
    return values[labels]


def render_scene(rng: np.random.Generator, scene: Scene, style: str, contrast: float,
                 photons: float, allow_rgb: bool = True) -> np.ndarray:
    """Float image (H, W) or (H, W, 3) for an RGB fluorescence composite, values ~0..1.

    ``contrast`` (0..1] scales the object signal against the background; ``photons`` is the
    expected count at intensity 1 for the Poisson noise (lower = noisier).
    """
    cells, nuclei = scene.cells, scene.nuclei
    shape = cells.shape
    size = shape[0]
    fg, nuc = cells > 0, nuclei > 0
    edge = _boundary(cells)
    d_edge = np.minimum(cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3), 64.0)
    d_inside = cv2.distanceTransform(np.pad(fg & ~edge, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    texture = _smooth_noise(rng, shape, 1.2)
    coarse = _smooth_noise(rng, shape, size / 12.0)
    debris = np.zeros(shape, np.float32)
    for blob in scene.debris:
        debris += blob
    debris = cv2.GaussianBlur(debris, (0, 0), 2.5)
    rgb = False
    if style == "fluorescence":
        # Cells thicker in the middle; nuclei bright with dark nucleoli speckle.
        thickness = 1.0 - np.exp(-(d_inside + 1.0) / 3.0)
        cyto = _per_label(rng, cells, 0.2, 0.45) * thickness * (1.0 + 0.25 * texture)
        nucleus = _per_label(rng, nuclei, 0.55, 1.0) * (1.0 + 0.15 * texture)
        nucleus = cv2.GaussianBlur(nucleus.astype(np.float32), (0, 0), 0.7)
        background = 0.04 + 0.01 * coarse + 0.05 * debris
        rgb = bool(rng.random() < 0.35) and allow_rgb
        if rgb:
            green = background + contrast * cyto * ~nuc + contrast * 0.3 * nucleus
            blue = background + contrast * nucleus
            red = background + 0.15 * contrast * cyto
            image = np.stack([red, green, blue], axis=-1)
        else:
            image = background + contrast * (cyto * ~nuc + nucleus + 0.15 * cyto * nuc)
        light = _illumination(rng, shape, 0.5)
        image = image * (light[..., None] if rgb else light)
    else:
        # Grey field; objects differ by a little absorption and by their edge optics.
        width = rng.uniform(0.8, 1.5)
        outside = np.exp(-0.5 * (d_edge / (1.2 * width)) ** 2) * ~fg
        inside_rim = np.exp(-0.5 * (d_inside / width) ** 2) * fg
        body = _per_label(rng, cells, 0.02, 0.08) * (1.0 + 0.4 * texture)
        nuc_edge = _boundary(nuclei).astype(np.float32)
        if style == "phase":  # dark cells, bright halo outside, darker nuclei
            signal = -1.6 * body - 0.25 * inside_rim + 0.35 * outside - 0.08 * nuc - 0.06 * nuc_edge
        else:  # brightfield: faint cells, dark rim, visible nuclear envelope
            signal = -0.6 * body - 0.22 * inside_rim - 0.05 * outside - 0.05 * nuc - 0.05 * nuc_edge
        background = 0.5 + 0.03 * coarse - 0.1 * debris
        image = (background + contrast * signal) * _illumination(rng, shape, 0.6)
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), rng.uniform(0.5, 0.9) + 0.3 * (1 - contrast))
    image = np.clip(image, 0.0, None)
    image = rng.poisson(image * photons).astype(np.float32) / photons
    image += rng.normal(0.0, rng.uniform(0.005, 0.015), size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _to_uint(image: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Quantise a 0..1 float image: 8-bit full range, 16-bit with a camera offset and gain."""
    if bits == 8:
        return np.round(np.clip(image, 0, 1) * 255.0).astype(np.uint8)
    offset, gain = rng.uniform(80, 400), rng.uniform(3000, 50000)
    return np.round(np.clip(offset + image * gain, 0, 65535)).astype(np.uint16)


# ----------------------------------------------------------------------------------------------
# EVICAN-shaped COCO set
# ----------------------------------------------------------------------------------------------
def _balanced(values: tuple, n: int, rng: np.random.Generator) -> list:
    """``n`` values cycling through ``values`` (so each appears when n allows), shuffled."""
    items = [values[i % len(values)] for i in range(n)]
    return [items[i] for i in rng.permutation(n)]


def make_evican_split(root: str, split: str, num_images: int, seed: int, size: int,
                      first_image_id: int, first_ann_id: int) -> dict:
    """Render one split's images under ``root`` and return its COCO dict (not yet written).

    train/val contain about one background image (no cells, no annotations) in eight, as
    EVICAN2 has; eval splits take their difficulty from the split name.
    """
    split_key, _, folder = _SPLITS[split]
    plan_rng = np.random.default_rng([seed, split_key, 0])
    styles = _balanced(STYLES, num_images, plan_rng)
    depths = _balanced((8, 16), num_images, plan_rng)
    n_background = 0
    if split in ("train", "val") and num_images >= 2:
        n_background = max(1, int(round(num_images / 8)))
    background_ids = set(plan_rng.permutation(num_images)[:n_background].tolist())
    low, high = _DIFFICULTY[split]
    prefix = split.replace("eval_", "") + "_" if split.startswith("eval_") else ""
    images, annotations = [], []
    ann_id = first_ann_id
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_key, index + 1])
        difficulty = float(rng.uniform(low, high))
        scene = make_scene(rng, size, difficulty, background=index in background_ids)
        contrast = float(np.clip(1.0 - 0.6 * difficulty + rng.normal(0, 0.05), 0.3, 1.0))
        photons = float(500.0 * (1.0 - difficulty) + 100.0)
        rendered = render_scene(rng, scene, styles[index], contrast, photons, allow_rgb=depths[index] == 8)
        image = _to_uint(rendered, depths[index], rng)
        suffix = ".png" if depths[index] == 8 else ".tif"
        name = f"{prefix}{index:04d}{suffix}"
        data = encode_png(image) if suffix == ".png" else encode_tiff(image, "rgb" if image.ndim == 3 else "minisblack")
        atomic_save_bytes(os.path.join(root, folder, name), data)
        image_id = first_image_id + index
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        for category, labels in ((CELL_ID, scene.cells), (NUCLEUS_ID, scene.nuclei)):
            for label, window in enumerate(ndimage.find_objects(labels), start=1):
                polygon = mask_polygon(labels[window] == label, (window[0].start, window[1].start))
                if polygon is None:  # cannot happen: make_scene keeps only polygon-able masks
                    raise RuntimeError(f"synthetic instance {label} of {name} has no polygon")
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": category,
                                    "segmentation": [polygon], "iscrowd": 0})
                ann_id += 1
    return {"info": {"description": f"deepcens synthetic EVICAN2-shaped data, split {split}, seed {seed}"},
            "images": images, "annotations": annotations, "categories": CATEGORIES}


# ----------------------------------------------------------------------------------------------
# CTC time-lapse
# ----------------------------------------------------------------------------------------------
@dataclass
class _Track:
    label: int
    parent: int
    begin: int
    x: float
    y: float
    radius: float
    shape_seed: int
    angle: float
    elongation: float
    brightness: float
    vx: float = 0.0  # persistent velocity (pixels per frame)
    vy: float = 0.0
    end: int = -1


def _track_polygon(track: _Track, frame: int, frames_to_division: int | None) -> tuple[np.ndarray, float]:
    """Outline of a tracked cell at a frame; shape drifts slowly, mitotic cells round up."""
    rng = np.random.default_rng([track.shape_seed])
    base = rng.normal(0.0, 1.0, size=(5, 2))
    drift = np.random.default_rng([track.shape_seed, frame]).normal(0.0, 0.25, size=(5, 2))
    roundness = 1.0 if frames_to_division is None else min(1.0, 0.3 * frames_to_division)
    theta = np.linspace(0.0, 2.0 * np.pi, 40, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 7):
        a, b = (base[k - 2] + drift[k - 2]) * 0.12 / k * roundness
        r += a * np.cos(k * theta) + b * np.sin(k * theta)
    r = np.maximum(r, 0.4) * track.radius
    elongation = 1.0 - (1.0 - track.elongation) * roundness
    angle = track.angle + 0.05 * frame
    x, y = r * np.cos(theta), r * np.sin(theta) * elongation
    ca, sa = math.cos(angle), math.sin(angle)
    boost = 1.0 if frames_to_division is None else 1.0 + 0.5 * (1.0 - roundness)
    return np.stack([track.x + ca * x - sa * y, track.y + sa * x + ca * y], axis=1), boost


def _relax(tracks: list[_Track], size: int, rng: np.random.Generator) -> None:
    """Persistent random walk, pairwise repulsion (cells touch but stay visible), walls."""
    for t in tracks:
        t.vx = 0.8 * t.vx + rng.normal(0.0, 0.6)
        t.vy = 0.8 * t.vy + rng.normal(0.0, 0.6)
        t.x += t.vx
        t.y += t.vy
    for _ in range(6):
        for i, a in enumerate(tracks):
            for b in tracks[i + 1:]:
                dx, dy = b.x - a.x, b.y - a.y
                dist = math.hypot(dx, dy) + 1e-6
                want = 0.85 * (a.radius + b.radius)
                if dist < want:
                    push = 0.5 * (want - dist) / dist
                    a.x, a.y, b.x, b.y = a.x - dx * push, a.y - dy * push, b.x + dx * push, b.y + dy * push
        for t in tracks:
            margin = 0.6 * t.radius + 1.0
            if not margin <= t.x <= size - margin:
                t.vx = -t.vx
            if not margin <= t.y <= size - margin:
                t.vy = -t.vy
            t.x, t.y = float(np.clip(t.x, margin, size - margin)), float(np.clip(t.y, margin, size - margin))


def make_ctc_sequence(root: str, seed: int, size: int, frames: int, sequence: str = "01") -> dict:
    """Write a CTC sequence ``root/{seq}/tTTT.tif`` + ``{seq}_GT/{SEG,TRA}``; return its summary.

    Cells move by a random walk with repulsion; at least one cell divides: its track ends at
    frame t and two daughters (parent = its label) begin at t + 1. SEG and TRA label ids are the
    track labels, and every track is visible in every frame it spans.
    """
    if frames < 2:
        raise ValueError(f"a CTC sequence needs at least 2 frames to show a division, got {frames}")
    rng = np.random.default_rng([seed, 100, 0])
    n_cells = max(3, int(round(rng.uniform(6, 9) * size / 128.0)))
    typical = _typical_radius(size)
    division_frames = sorted({max(0, frames // 2 - 1)} | ({max(0, frames // 4 - 1)} if frames >= 8 else set()))
    tracks: list[_Track] = []
    next_label = 1

    def new_track(parent: int, begin: int, x: float, y: float, radius: float) -> _Track:
        nonlocal next_label
        track = _Track(next_label, parent, begin, x, y, radius, int(rng.integers(2**31)),
                       float(rng.uniform(0, np.pi)), float(rng.uniform(0.6, 0.95)), float(rng.uniform(0.5, 1.0)))
        next_label += 1
        tracks.append(track)
        return track

    for _ in range(n_cells):
        new_track(0, 0, float(rng.uniform(0.15, 0.85) * size), float(rng.uniform(0.15, 0.85) * size),
                  float(rng.uniform(0.7, 1.2) * typical))
    alive = list(tracks)
    _relax(alive, size, rng)
    dividers: dict[int, int] = {}  # track label -> frame where it ends by dividing
    candidates = [t.label for t in alive]
    for frame in division_frames:
        dividers[candidates.pop(int(rng.integers(len(candidates))))] = frame
    seq_dir, gt_dir = os.path.join(root, sequence), os.path.join(root, f"{sequence}_GT")
    written = []
    offset, gain = 100.0, float(rng.uniform(2000, 6000))
    for frame in range(frames):
        labels = np.zeros((size, size), np.uint16)
        brightness = np.zeros(int(next_label) + 1, np.float32)
        for track in sorted(alive, key=lambda t: t.label):
            end = dividers.get(track.label)
            polygon, boost = _track_polygon(track, frame, None if end is None else end - frame)
            raster = _rasterize(polygon, (size, size))
            if raster is None:
                continue
            crop, (y0, x0) = raster
            window = (slice(y0, y0 + crop.shape[0]), slice(x0, x0 + crop.shape[1]))
            free = crop & (labels[window] == 0)
            free = _largest_component(free)
            labels[window][free] = track.label
            brightness[track.label] = track.brightness * boost
        missing = [t.label for t in alive if not (labels == t.label).any()]
        if missing:  # repulsion keeps cells apart; this guards the CTC validity contract
            raise RuntimeError(f"synthetic CTC frame {frame}: tracks {missing} have no pixels")
        scene = Scene(labels.astype(np.int32), np.zeros((size, size), np.int32))
        frame_rng = np.random.default_rng([seed, 100, frame + 1])
        image = render_scene(frame_rng, scene, "fluorescence", 1.0, 300.0, allow_rgb=False)
        # Per-track brightness (mitotic cells brighten) on top of the rendered texture.
        image = image * np.where(labels > 0, 0.5 + brightness[labels], 1.0)
        raw = np.round(np.clip(offset + image * gain, 0, 65535)).astype(np.uint16)
        for path, data in ((os.path.join(seq_dir, f"t{frame:03d}.tif"), raw),
                           (os.path.join(gt_dir, "SEG", f"man_seg{frame:03d}.tif"), labels),
                           (os.path.join(gt_dir, "TRA", f"man_track{frame:03d}.tif"), labels)):
            atomic_save_bytes(path, encode_tiff(data))
            written.append(path)
        # Advance: end dividing tracks, start their daughters, move everybody.
        for track in [t for t in alive if dividers.get(t.label) == frame]:
            track.end = frame
            alive.remove(track)
            axis = rng.uniform(0, np.pi)
            for sign in (-1.0, 1.0):
                dx, dy = sign * 0.45 * track.radius * math.cos(axis), sign * 0.45 * track.radius * math.sin(axis)
                alive.append(new_track(track.label, frame + 1, track.x + dx, track.y + dy, 0.75 * track.radius))
        for track in alive:
            track.radius = min(track.radius * 1.02, 1.3 * typical)
        _relax(alive, size, rng)
    for track in alive:
        track.end = frames - 1
    lines = "".join(f"{t.label} {t.begin} {t.end} {t.parent}\n" for t in sorted(tracks, key=lambda t: t.label)
                    if t.begin < frames)
    track_file = os.path.join(gt_dir, "TRA", "man_track.txt")
    atomic_save_bytes(track_file, lines.encode("ascii"))
    written.append(track_file)
    return {"sequence_dir": seq_dir, "gt_dir": gt_dir, "man_track": track_file, "files": written,
            "num_tracks": sum(1 for t in tracks if t.begin < frames),
            "divisions": sorted(dividers.items())}


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------
def make_synthetic(out_dir: str | os.PathLike, seed: int = 0, num_train: int = 24, num_val: int = 8,
                   num_eval: int = 8, size: int = 128, ctc_frames: int = 12) -> dict[str, Any]:
    """Write the synthetic EVICAN2-shaped set to ``out_dir/evican`` and a CTC sequence to
    ``out_dir/ctc/Synthetic-Cells``; return the paths written.

    The train annotation file is written last, so its presence marks a complete set.
    ``ctc_frames=0`` skips the CTC sequence.
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DeepcensInputError(out_dir, "output path exists and is not a folder")
    for name, value, minimum in (("num_train", num_train, 1), ("num_val", num_val, 0),
                                 ("num_eval", num_eval, 0), ("size", size, 32), ("ctc_frames", ctc_frames, 0)):
        if int(value) != value or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if ctc_frames == 1:
        raise ValueError("ctc_frames must be 0 (no sequence) or >= 2")
    evican_root = os.path.join(out_dir, "evican")
    counts = {"train": num_train, "val": num_val, "eval_easy": num_eval, "eval_medium": num_eval,
              "eval_difficult": num_eval}
    coco: dict[str, dict] = {}
    image_id, ann_id = 1, 1
    for split, count in counts.items():
        coco[split] = make_evican_split(evican_root, split, count, seed, size, image_id, ann_id)
        image_id += count
        ann_id += len(coco[split]["annotations"])
    result: dict[str, Any] = {"root": out_dir, "evican": evican_root, "annotations": {}, "images": {},
                              "num_annotations": {}}
    for split in ["val", "eval_easy", "eval_medium", "eval_difficult", "train"]:
        _, stem, folder = _SPLITS[split]
        path = os.path.join(evican_root, "annotations", f"{stem}.json")
        atomic_save_json(path, coco[split], sort_keys=True, indent=None, separators=(",", ":"))
        result["annotations"][split] = path
        result["images"][split] = [os.path.join(evican_root, folder, im["file_name"]) for im in coco[split]["images"]]
        result["num_annotations"][split] = len(coco[split]["annotations"])
    if ctc_frames:
        ctc_root = os.path.join(out_dir, "ctc", CTC_DATASET)
        result["ctc"] = ctc_root
        result["ctc_sequence"] = make_ctc_sequence(ctc_root, seed, size, ctc_frames)
    return result
