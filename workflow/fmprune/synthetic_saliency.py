"""An embedded salient-object set, generated in code: no DUTS is reachable from the machines
this project runs on, and tests and demos need saliency data that installs with the package.

Each pair is a textured, multi-scale noise background (a random palette, a light gradient) with
one to three salient objects — ellipses, rotated rectangles and star polygons, each with its own
texture (stripes, spots or noise), colour and contrast, covering from a few percent to about a
third of the image — and the exact binary mask of their union. Pair ``i`` of seed ``s`` is the
same on every machine and does not depend on how many pairs are drawn.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from .io import atomic_path, cache_dir


def generate_cached(count: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`generate`, stored once per machine under ``$FMPRUNE_CACHE/synthetic-saliency``:
    every pipeline job loads its dataset, and generating 300 pairs costs more (~2 s) than
    reading them. The file name holds this module's source hash, so a changed generator never
    serves the pairs of an old one."""
    version = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    path = cache_dir() / "synthetic-saliency" / f"{count}-{size}-{seed}-{version}.npz"
    try:
        with np.load(path) as stored:
            return stored["images"], stored["masks"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent or damaged: generate afresh
        pass
    images, masks = generate(count, size, seed)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, masks=masks)
    return images, masks


def generate(count: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` pairs: images uint8 [N, 3, size, size] and masks uint8 [N, size, size] (0 or 255)."""
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    masks = np.empty((count, size, size), dtype=np.uint8)
    for i in range(count):
        images[i], masks[i] = pair(i, size, seed)
    return images, masks


def pair(index: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, index])
    image = _background(rng, size)
    mask = np.zeros((size, size), dtype=bool)
    background_colour = image.reshape(3, -1).mean(axis=1)
    for _ in range(rng.integers(1, 4)):
        shape = _shape(rng, size)
        colour = _contrasting_colour(rng, background_colour)
        texture = _texture(rng, size)
        # a shaded, textured fill: the object's colour modulated by its texture
        fill = colour[:, None, None] * (0.75 + 0.25 * texture)[None]
        image[:, shape] = fill[:, shape]
        mask |= shape
    if not mask.any():  # every shape fell off the image: place a centred disc
        yy, xx = np.mgrid[:size, :size]
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size / 6) ** 2
        image[:, mask] = _contrasting_colour(rng, background_colour)[:, None]
    image += rng.normal(0, 0.02, image.shape)  # sensor noise
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), mask.astype(np.uint8) * 255


def _smooth_noise(rng: np.random.Generator, size: int, octaves: int = 4) -> np.ndarray:
    """Fractal noise in [0, 1]: random grids of 2, 4, 8, … cells, upsampled, amplitudes halving."""
    total = np.zeros((size, size))
    for octave in range(octaves):
        cells = 2 ** (octave + 1)
        grid = rng.random((cells + 1, cells + 1))
        total += 0.5**octave * ndimage.zoom(grid, size / (cells + 1), order=1)[:size, :size]
    total -= total.min()
    return total / max(total.max(), 1e-12)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(0.2, 0.8, 3)
    tint = rng.uniform(-0.25, 0.25, 3)
    noise = _smooth_noise(rng, size)
    ramp = np.linspace(-0.5, 0.5, size)
    gradient = np.cos(rng.uniform(0, np.pi)) * ramp[None, :] + np.sin(rng.uniform(0, np.pi)) * ramp[:, None]
    image = base[:, None, None] + tint[:, None, None] * (noise - 0.5)[None] + 0.15 * gradient[None]
    return np.clip(image, 0, 1)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A colour at least 0.25 (and up to ~0.8, RMS over channels) away from the background's mean."""
    target = rng.uniform(0.25, 0.8)
    for _ in range(100):
        colour = rng.random(3)
        if np.sqrt(np.mean((colour - background) ** 2)) >= target:
            return colour
    return 1.0 - np.round(background)  # the opposite corner of the colour cube


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """An object's texture in [0, 1]: stripes, spots or noise."""
    kind = rng.integers(3)
    yy, xx = np.mgrid[:size, :size] / size
    if kind == 0:
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.05, 0.2)
        return 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
    if kind == 1:
        spots = rng.random((size, size)) < 0.03
        return np.clip(ndimage.gaussian_filter(spots.astype(float), 1.5) * 20, 0, 1)
    return _smooth_noise(rng, size, octaves=3)


def _shape(rng: np.random.Generator, size: int) -> np.ndarray:
    """A boolean mask: ellipse, rotated rectangle or star polygon, radius 8–35% of the image."""
    radius = rng.uniform(0.08, 0.35) * size
    cy, cx = rng.uniform(0.15, 0.85, 2) * size
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:size, :size] + 0.5
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    kind = rng.integers(3)
    if kind == 0:
        aspect = rng.uniform(0.4, 1.0)
        return (u / radius) ** 2 + (v / (aspect * radius)) ** 2 <= 1
    if kind == 1:
        aspect = rng.uniform(0.3, 1.0)
        return (np.abs(u) <= radius) & (np.abs(v) <= aspect * radius)
    points = rng.integers(5, 9)
    inner = rng.uniform(0.4, 0.8)
    theta = np.arctan2(v, u)
    # radius of the star's outline in each pixel's direction: alternating outer / inner vertices
    phase = (theta * points / (2 * np.pi)) % 1.0
    outline = radius * (inner + (1 - inner) * np.abs(1 - 2 * phase))
    return np.hypot(u, v) <= outline
