"""Batch transforms, run inside the loader's worker threads: normalising and augmenting.

Two kinds, told apart by an attribute the loader reads:

* deterministic: ``transform(batch) -> batch``, e.g. ``mnist_normalize``;
* random (``transform.random is True``): ``transform(batch, rng) -> batch``, where ``rng``
  is a ``numpy.random.Generator`` the loader makes for each batch with ``batch_rng(seed,
  epoch, i)``. It depends on the loader's seed, the epoch and the batch's position only,
  never on which thread assembles the batch or when, so 0 or 8 loader threads give the
  same augmented batches, and a resumed run sees the ones it would have seen.

The augmentations people use on MNIST, batch-wise on images (N, C, H, W) of float32 (or
float64), every image with its own random parameters, the same for all its channels:

    RandomShift(2)            translate by whole pixels, dy and dx each in [-2, 2]
    RandomRotation(10)        rotate about the image centre by an angle in [-10, 10] degrees,
                              bilinear interpolation
    ElasticDistortion(34, 4)  Simard, Steinkraus & Platt (2003), "Best practices for
                              convolutional neural networks applied to visual document
                              analysis": a random displacement field, each component uniform
                              in [-1, 1] per pixel, smoothed by a Gaussian of std sigma
                              pixels, scaled by alpha, then bilinear sampling
    Compose(t1, t2, ...)      one after the other (random if any of them is)
    mnist_augment()           mnist_normalize, then all three, background-filled

Pixels that come from outside the image take the value ``fill`` (0 for raw images; for
normalised MNIST the value a black pixel normalises to, ``MNIST_BACKGROUND``).

Why they run well in loader threads: the random numbers come from NumPy's Generator
(which fills its arrays with the GIL released) and the pixel work from Numba kernels
compiled with ``nogil=True``, so several loader threads augment at once, beside the training
thread. Each kernel is ``parallel=True`` over the images of the batch: in the calling thread
(``num_workers=0``) it uses that thread's Numba threads; a loader thread runs it on one
(``minigrad.threads``).

Coordinates: row r grows downwards, column q to the right, the image centre is
((H-1)/2, (W-1)/2). Every transform computes, for each output pixel, where in the input it
comes from (inverse mapping), so no output pixel is left unwritten.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from numba import njit, prange

from .. import kernels  # noqa: F401  (kernels choose Numba's threading layer first)

__all__ = ["MNIST_MEAN", "MNIST_STD", "MNIST_BACKGROUND", "mnist_normalize", "batch_rng",
           "is_random", "RandomShift", "RandomRotation", "ElasticDistortion", "Compose",
           "mnist_augment", "shift_images", "rotate_images", "gaussian_kernel1d",
           "smooth_fields", "displace_images"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# What a black pixel (0) becomes after mnist_normalize, exactly: 0 * scale - mean / std.
MNIST_BACKGROUND = float(-np.float32(MNIST_MEAN / MNIST_STD))


def mnist_normalize(batch):
    """(uint8 images (N, 28, 28), labels) -> (float32 (N, 1, 28, 28) standardised, labels)."""
    x, y = batch
    x = x.reshape(len(x), 1, 28, 28).astype(np.float32)
    x *= np.float32(1.0 / (255.0 * MNIST_STD))
    x -= np.float32(MNIST_MEAN / MNIST_STD)
    return x, y


# ---- seeding --------------------------------------------------------------------------------
def batch_rng(seed: int, epoch: int, index: int, shard: int | None = None
              ) -> np.random.Generator:
    """The generator of batch `index` of epoch `epoch`: child `index` of the epoch's seed.

    The loader's epoch order comes from ``SeedSequence([seed, epoch])``; batch i's random
    numbers from its i-th child, ``SeedSequence([seed, epoch], spawn_key=(i,))``, which is
    a separate stream by construction. (Appending i to the entropy instead would not do:
    SeedSequence([7, 0]) and SeedSequence([7, 0, 0]) are the same seed.) `shard` gives
    each worker's slice of a global batch (minigrad.distributed) a stream of its own,
    ``spawn_key=(i, shard)``.
    """
    key = (int(index),) if shard is None else (int(index), int(shard))
    ss = np.random.SeedSequence([int(seed), int(epoch)], spawn_key=key)
    return np.random.default_rng(ss)


def is_random(transform) -> bool:
    """True for a transform called as transform(batch, rng)."""
    return bool(getattr(transform, "random", False))


def _images(x, who: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype not in (np.float32, np.float64):
        got = (f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray)
               else type(x).__name__)
        raise ValueError(f"{who}: expects images (N, C, H, W) of float32 or float64, got {got}; "
                         "normalise uint8 images first (e.g. mnist_normalize)")
    return np.ascontiguousarray(x)


# ---- Numba kernels: one output pixel at a time, its source found by inverse mapping ---------
@njit(cache=True, nogil=True, inline="always")
def _pixel(plane, r, q, fill):
    """plane[r, q], or `fill` outside the image."""
    if 0 <= r < plane.shape[0] and 0 <= q < plane.shape[1]:
        return plane[r, q]
    return fill


@njit(cache=True, nogil=True, inline="always")
def _bilinear(plane, y, x, fill):
    """The image read at the real point (y, x): the four surrounding pixels weighted by
    closeness. At a whole-pixel point the weights are 1, 0, 0, 0: the pixel itself, exactly."""
    y0 = math.floor(y)
    x0 = math.floor(x)
    fy = y - y0
    fx = x - x0
    r = int(y0)
    q = int(x0)
    top = (1.0 - fx) * _pixel(plane, r, q, fill) + fx * _pixel(plane, r, q + 1, fill)
    bottom = (1.0 - fx) * _pixel(plane, r + 1, q, fill) + fx * _pixel(plane, r + 1, q + 1, fill)
    return (1.0 - fy) * top + fy * bottom


@njit(parallel=True, cache=True, nogil=True)
def _shift_kernel(x, shifts, fill, out):
    """out[i, :, r, q] = x[i, :, r - dy_i, q - dx_i]: content moves dy_i down, dx_i right."""
    n, c, h, w = x.shape
    for i in prange(n):
        dy = shifts[i, 0]
        dx = shifts[i, 1]
        for ch in range(c):
            for r in range(h):
                sr = r - dy
                for q in range(w):
                    sq = q - dx
                    if 0 <= sr < h and 0 <= sq < w:
                        out[i, ch, r, q] = x[i, ch, sr, sq]
                    else:
                        out[i, ch, r, q] = fill


@njit(parallel=True, cache=True, nogil=True)
def _rotate_kernel(x, cos_t, sin_t, fill, out):
    """Rotate image i counter-clockwise (as displayed, rows down) by the angle whose cosine
    and sine are cos_t[i], sin_t[i], about the centre. Output pixel (r, q) reads the input at
    the point rotated back by the same angle:
        y = cy + sin*(q - cx) + cos*(r - cy),   x = cx + cos*(q - cx) - sin*(r - cy)."""
    n, c, h, w = x.shape
    cy = (h - 1) / 2.0
    cx = (w - 1) / 2.0
    for i in prange(n):
        ct = cos_t[i]
        st = sin_t[i]
        for r in range(h):
            for q in range(w):
                sy = cy + st * (q - cx) + ct * (r - cy)
                sx = cx + ct * (q - cx) - st * (r - cy)
                for ch in range(c):
                    out[i, ch, r, q] = _bilinear(x[i, ch], sy, sx, fill)


@njit(parallel=True, cache=True, nogil=True)
def _smooth_kernel(fields, k, out):
    """Each plane fields[j] (H, W) convolved with the separable Gaussian k (odd length),
    zero outside the plane (scipy.ndimage.gaussian_filter's mode="constant", cval=0).

    Tap by tap: for tap t, every output pixel whose neighbour at offset t lies inside the
    plane adds k[t] times it. The inner loop then runs over a contiguous row with no test
    in it, which the compiler vectorises (a test per pixel and tap made it 3x slower)."""
    m, h, w = fields.shape
    radius = (k.shape[0] - 1) // 2
    for j in prange(m):
        rows = np.zeros((h, w), dtype=np.float64)
        for r in range(h):  # along each row: rows[r, q] = sum_t k[t] * fields[j, r, q + t]
            for t in range(max(-radius, -(w - 1)), min(radius, w - 1) + 1):
                kt = k[t + radius]
                for q in range(max(0, -t), min(w, w - t)):
                    rows[r, q] += kt * fields[j, r, q + t]
        plane = out[j]
        plane[:, :] = 0.0
        for t in range(max(-radius, -(h - 1)), min(radius, h - 1) + 1):  # then each column
            kt = k[t + radius]
            for r in range(max(0, -t), min(h, h - t)):
                for q in range(w):
                    plane[r, q] += kt * rows[r + t, q]


@njit(parallel=True, cache=True, nogil=True)
def _displace_kernel(x, disp, fill, out):
    """out[i, :, r, q] = x[i, :] read at (r + disp[i, 0, r, q], q + disp[i, 1, r, q])."""
    n, c, h, w = x.shape
    for i in prange(n):
        for r in range(h):
            for q in range(w):
                sy = r + disp[i, 0, r, q]
                sx = q + disp[i, 1, r, q]
                for ch in range(c):
                    out[i, ch, r, q] = _bilinear(x[i, ch], sy, sx, fill)


# ---- the operations with explicit parameters (what the random transforms draw) ---------------
def shift_images(x: np.ndarray, shifts: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Move image i's content by shifts[i] = (dy, dx) whole pixels (down, right); the pixels
    uncovered take `fill`."""
    x = _images(x, "shift_images")
    shifts = np.ascontiguousarray(shifts, dtype=np.int64).reshape(len(x), 2)
    out = np.empty_like(x)
    _shift_kernel(x, shifts, x.dtype.type(fill), out)
    return out


def rotate_images(x: np.ndarray, degrees: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Rotate image i counter-clockwise by degrees[i] about its centre (bilinear)."""
    x = _images(x, "rotate_images")
    theta = np.radians(np.asarray(degrees, dtype=np.float64).reshape(len(x)))
    out = np.empty_like(x)
    _rotate_kernel(x, np.cos(theta), np.sin(theta), float(fill), out)
    return out


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """exp(-t^2 / (2 sigma^2)) for t in [-radius, radius], radius = int(truncate*sigma + 0.5)
    (scipy.ndimage's choice), normalised to sum 1; [1.0] for sigma 0 (no smoothing)."""
    if sigma < 0:
        raise ValueError(f"gaussian_kernel1d: sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return np.ones(1)
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def smooth_fields(fields: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth every trailing (H, W) plane of `fields` (float64, same shape)."""
    fields = np.ascontiguousarray(fields, dtype=np.float64)
    planes = fields.reshape(-1, *fields.shape[-2:])
    out = np.empty_like(planes)
    _smooth_kernel(planes, gaussian_kernel1d(sigma), out)
    return out.reshape(fields.shape)


def displace_images(x: np.ndarray, displacement: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Output pixel (r, q) of image i reads the input at (r + dy, q + dx) (bilinear), with
    (dy, dx) = displacement[i, :, r, q]; displacement has shape (N, 2, H, W)."""
    x = _images(x, "displace_images")
    n, _, h, w = x.shape
    disp = np.ascontiguousarray(displacement, dtype=np.float64)
    if disp.shape != (n, 2, h, w):
        raise ValueError(f"displace_images: displacement must have shape {(n, 2, h, w)}, "
                         f"got {disp.shape}")
    out = np.empty_like(x)
    _displace_kernel(x, disp, float(fill), out)
    return out


# ---- the random transforms -------------------------------------------------------------------
class RandomShift:
    """Translate each image by (dy, dx), each drawn uniformly from {-max_shift..max_shift}."""

    random = True

    def __init__(self, max_shift: int = 2, fill: float = 0.0):
        if int(max_shift) < 0:
            raise ValueError(f"RandomShift: max_shift must be >= 0, got {max_shift}")
        self.max_shift, self.fill = int(max_shift), float(fill)

    def __call__(self, batch, rng: np.random.Generator):
        x, *rest = batch
        s = self.max_shift
        shifts = rng.integers(-s, s + 1, size=(len(x), 2))
        return (shift_images(x, shifts, self.fill), *rest)

    def __repr__(self):
        return f"RandomShift({self.max_shift}, fill={self.fill:g})"


class RandomRotation:
    """Rotate each image by an angle drawn uniformly from [-degrees, degrees] (bilinear)."""

    random = True

    def __init__(self, degrees: float = 10.0, fill: float = 0.0):
        if degrees < 0:
            raise ValueError(f"RandomRotation: degrees must be >= 0, got {degrees}")
        self.degrees, self.fill = float(degrees), float(fill)

    def __call__(self, batch, rng: np.random.Generator):
        x, *rest = batch
        angles = rng.uniform(-self.degrees, self.degrees, size=len(x))
        return (rotate_images(x, angles, self.fill), *rest)

    def __repr__(self):
        return f"RandomRotation({self.degrees:g}, fill={self.fill:g})"


class ElasticDistortion:
    """Simard et al. (2003): displacement = alpha * Gaussian_sigma * U(-1, 1) per pixel and
    component; each image sampled (bilinear) at its pixels plus their displacement. Their
    MNIST values: alpha 34, sigma 4 (a smooth warp of a pixel or two; sigma small: noise,
    sigma large: nearly a translation). alpha 0 leaves the images unchanged."""

    random = True

    def __init__(self, alpha: float = 34.0, sigma: float = 4.0, fill: float = 0.0):
        if alpha < 0 or sigma < 0:
            raise ValueError(f"ElasticDistortion: alpha and sigma must be >= 0, got "
                             f"alpha={alpha}, sigma={sigma}")
        self.alpha, self.sigma, self.fill = float(alpha), float(sigma), float(fill)

    def __call__(self, batch, rng: np.random.Generator):
        x, *rest = batch
        n, _, h, w = _images(x, "ElasticDistortion").shape
        noise = rng.uniform(-1.0, 1.0, size=(n, 2, h, w))
        disp = smooth_fields(noise, self.sigma)
        disp *= self.alpha
        return (displace_images(x, disp, self.fill), *rest)

    def __repr__(self):
        return f"ElasticDistortion(alpha={self.alpha:g}, sigma={self.sigma:g}, fill={self.fill:g})"


class Compose:
    """Apply transforms in order. Random if any of them is: the random ones all draw from
    the batch's one generator, in order, so the result is still a function of the seed."""

    def __init__(self, *transforms: Callable):
        self.transforms = tuple(transforms)
        self.random = any(is_random(t) for t in self.transforms)

    def __call__(self, batch, rng: np.random.Generator | None = None):
        if self.random and rng is None:
            raise TypeError("Compose: this pipeline is random; call it as t(batch, rng) "
                            "(the DataLoader does)")
        for t in self.transforms:
            batch = t(batch, rng) if is_random(t) else t(batch)
        return batch

    def __repr__(self):
        inner = ", ".join(getattr(t, "__name__", None) or repr(t) for t in self.transforms)
        return f"Compose({inner})"


def mnist_augment(shift: int = 2, degrees: float = 10.0, alpha: float = 34.0,
                  sigma: float = 4.0) -> Compose:
    """mnist_normalize, then a random shift, rotation and elastic distortion (each left out
    when its size is 0), every uncovered pixel filled with the normalised black."""
    steps: list[Callable] = [mnist_normalize]
    if shift:
        steps.append(RandomShift(shift, fill=MNIST_BACKGROUND))
    if degrees:
        steps.append(RandomRotation(degrees, fill=MNIST_BACKGROUND))
    if alpha:
        steps.append(ElasticDistortion(alpha, sigma, fill=MNIST_BACKGROUND))
    return Compose(*steps)
