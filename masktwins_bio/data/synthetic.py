"""Synthetic EM-like volumes with mitochondria: the embedded default data set (no download).

Each volume is built in physical units and then rendered by a "microscope" style:

1. Geometry. Cells are a Voronoi partition of random seeds whose sampling grid is warped by a
   smooth displacement field, so cell membranes come out as thin, curvy lines. Mitochondria are
   randomly oriented, elongated 3D ellipsoids placed inside cells (never across a membrane or
   touching each other) until a random foreground fraction of 6-10 % is reached; a 2D image is
   a single section through such 3D objects, so sections vary from round to elongated.
   Vesicles (clustered small spheres, dark rims) and ER-like squiggles are unlabelled distractors.
2. Rendering. Smoothed-noise cytoplasm texture with slow shading, dark cell membranes, a darker
   mitochondrial matrix with a double membrane (two dark bands along the signed distance to
   the surface) and lamellar cristae (stripes across the long axis, wobbled by smooth noise).
3. Microscope. Each style has its own blur, noise model, artefacts and intensity mapping.
   "source" mimics ssTEM: anisotropic (thick sections, objects thinner along z), sharp, high
   contrast, additive Gaussian noise, section-to-section brightness jitter. "target" mimics
   FIB-SEM: isotropic, ~1.4x finer pixels (larger objects), sparser cristae, more blur,
   signal-dependent shot noise, vertical curtaining stripes, brighter, lower contrast with a
   gamma. Contrast is never inverted, so the two share structures and adaptation is possible,
   while a per-volume normalisation alone does not remove the gap (gamma, noise, blur, scale).

Everything is vectorised with numpy/scipy.ndimage; Python loops run over objects, never voxels.
Every random draw comes from one ``default_rng`` seeded by (seed, style): fully deterministic.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import ConfigError

STYLES = ("source", "target")


@dataclass(frozen=True)
class _Style:
    z_step: float        # physical thickness of one z slice, in in-plane pixels
    scale: float         # multiplies every physical length (objects, membranes, cells)
    cristae_period: float
    blur: float          # PSF sigma in pixels
    gauss_noise: float   # additive noise sigma, on the [0, 1] intensity scale
    photons: float       # shot noise: photons at intensity 1 (0 = none)
    curtain: float       # amplitude of vertical FIB curtaining stripes
    slice_jitter: float  # per-section brightness offset sigma (ssTEM section thickness)
    texture: float       # sigma of the cytoplasm texture, pixels
    low: float           # uint8 value of intensity 0
    high: float          # uint8 value of intensity 1
    gamma: float


_STYLES = {
    "source": _Style(z_step=4.0, scale=1.0, cristae_period=5.0, blur=0.6, gauss_noise=0.05,
                     photons=0.0, curtain=0.0, slice_jitter=0.03, texture=1.2,
                     low=8.0, high=245.0, gamma=1.0),
    "target": _Style(z_step=1.0, scale=1.4, cristae_period=9.0, blur=1.3, gauss_noise=0.02,
                     photons=60.0, curtain=0.04, slice_jitter=0.0, texture=3.0,
                     low=70.0, high=205.0, gamma=0.7),
}

# Sizes for demo_pair: 2D stacks independent sections; all fit ~2 min of CPU training.
_DEMO_SHAPES = {"demo": {2: (6, 256, 256), 3: (32, 128, 128)},
                "tiny": {2: (2, 96, 96), 3: (16, 64, 64)}}


def _style(style: str) -> _Style:
    if style not in _STYLES:
        raise ConfigError(f"unknown synthetic style {style!r}; use one of {STYLES}.")
    return _STYLES[style]


def _smooth_noise(rng, shape, sigma, z_step) -> np.ndarray:
    """Unit-std Gaussian noise smoothed by ``sigma`` physical pixels (z sigma shrinks by z_step).

    Wide kernels are smoothed on a coarse grid and upsampled, which is far cheaper.
    """
    factor = max(1, int(sigma // 3))
    coarse = shape if factor == 1 else tuple(max(2, -(-n // factor)) for n in shape)
    f = ndimage.gaussian_filter(rng.standard_normal(coarse),
                                (sigma / z_step / factor, sigma / factor, sigma / factor))
    if factor > 1:
        f = ndimage.zoom(f, [n / c for n, c in zip(shape, coarse)], order=1, grid_mode=True,
                         mode="nearest")[: shape[0], : shape[1], : shape[2]]
    return (f - f.mean()) / (f.std() + 1e-8)


def _cell_membranes(rng, shape, st) -> np.ndarray:
    """Soft membrane map in [0, 1]: half the gap between nearest and 2nd-nearest warped seed."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    z, depth, cell, warp = z * st.z_step, shape[0] * st.z_step, 110.0 * st.scale, 9.0 * st.scale
    y = y + warp * _smooth_noise(rng, shape, 18 * st.scale, st.z_step)
    x = x + warp * _smooth_noise(rng, shape, 18 * st.scale, st.z_step)
    lo = np.array([-cell / 2, -cell / 4, -cell / 4])
    hi = np.array([depth + cell / 2, shape[1] + cell / 4, shape[2] + cell / 4])
    n = max(5, int(np.prod(hi - lo) / cell**3 * 2.5))
    d1 = np.full(shape, np.inf)
    d2 = np.full(shape, np.inf)
    for sz, sy, sx in rng.uniform(lo, hi, size=(n, 3)):
        d = np.sqrt((z - sz) ** 2 + (y - sy) ** 2 + (x - sx) ** 2)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    half_gap = (d2 - d1) / 2
    return np.exp(-0.5 * (half_gap / (0.9 * st.scale)) ** 2)


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _box(center, radius, shape, z_step):
    """Slices of the voxel box that holds a sphere of ``radius`` around a physical center."""
    lo = [(center[0] - radius) / z_step, center[1] - radius, center[2] - radius]
    hi = [(center[0] + radius) / z_step, center[1] + radius, center[2] + radius]
    return tuple(slice(max(0, int(np.floor(a))), min(n, int(np.ceil(b)) + 1))
                 for a, b, n in zip(lo, hi, shape))


def _local_coords(box, center, rot, z_step):
    """Voxel coordinates of ``box`` in the object's frame (axis 0 = long axis)."""
    z, y, x = np.ogrid[box]
    p = [z * z_step - center[0], y - center[1], x - center[2]]
    return [sum(rot[i, k] * p[i] for i in range(3)) for k in range(3)]


def _place_mitochondria(rng, shape, st, membranes):
    """Boolean mito mask and a per-voxel long-axis coordinate (for cristae stripes)."""
    mask = np.zeros(shape, bool)
    along = np.zeros(shape, np.float32)
    depth, count, gap = shape[0] * st.z_step, 0, 2.5 * st.scale
    goal = rng.uniform(0.06, 0.10) * mask.size
    for _ in range(600):
        b = rng.uniform(8.0, 13.0) * st.scale                      # minor semi-axis
        axes = np.array([b * rng.uniform(1.5, 3.0), b, b * rng.uniform(0.8, 1.05)])
        # in a thin stack the center may sit slightly outside so sections are partial
        center = rng.uniform([-b / 2, 0, 0], [depth + b / 2, shape[1], shape[2]])
        rot = _random_rotation(rng)
        box = _box(center, axes[0] + gap, shape, st.z_step)
        if any(s.stop <= s.start for s in box):
            continue
        u = _local_coords(box, center, rot, st.z_step)
        inside = sum((c / a) ** 2 for c, a in zip(u, axes)) <= 1
        halo = sum((c / (a + gap)) ** 2 for c, a in zip(u, axes)) <= 1
        new = int(inside.sum())
        # reject objects that touch another mito, straddle a cell membrane, or would push a
        # small volume far past the wanted fraction
        if (new == 0 or count + new > 0.12 * mask.size or (mask[box] & halo).any()
                or (membranes[box][halo] > 0.3).any()):
            continue
        mask[box] |= inside
        along[box] = np.where(inside, u[0], along[box])
        count += new
        if count >= goal:
            break
    return mask, along


def _vesicles(rng, shape, st, occupied):
    """Dark-rim and lumen maps of clustered small spheres that avoid the mitochondria."""
    rim = np.zeros(shape, np.float32)
    lumen = np.zeros(shape, bool)
    depth = shape[0] * st.z_step
    n_clusters = max(1, int(rng.poisson(shape[1] * shape[2] / 128**2 * 2.5)))
    for cluster in rng.uniform([0, 0, 0], [depth, shape[1], shape[2]], size=(n_clusters, 3)):
        for _ in range(rng.integers(6, 18)):
            r = rng.uniform(2.5, 5.0) * st.scale
            center = cluster + rng.normal(0, 14 * st.scale, 3)
            box = _box(center, r + 2 * st.scale, shape, st.z_step)
            if any(s.stop <= s.start for s in box) or occupied[box].any():
                continue
            z, y, x = np.ogrid[box]
            d = np.sqrt((z * st.z_step - center[0]) ** 2 + (y - center[1]) ** 2
                        + (x - center[2]) ** 2)
            rim[box] = np.maximum(rim[box], np.exp(-0.5 * ((d - r) / (0.8 * st.scale)) ** 2))
            lumen[box] |= d < r
    return rim, lumen


def _er_lines(rng, shape, st) -> np.ndarray:
    """Squiggly ER-like lines (zero crossings of smooth noise) in patches: unlabelled clutter."""
    field = _smooth_noise(rng, shape, 5 * st.scale, st.z_step)
    patches = np.clip(_smooth_noise(rng, shape, 25 * st.scale, st.z_step) - 0.3, 0, 1)
    return np.exp(-0.5 * (field / 0.3) ** 2) * patches


def _render(rng, shape, st, membranes, mito, along, rim, lumen) -> np.ndarray:
    """Noise-free intensity in ~[0, 1] (1 = bright), before the microscope."""
    img = (0.66 + 0.06 * _smooth_noise(rng, shape, st.texture, st.z_step)
           + 0.05 * _smooth_noise(rng, shape, 40 * st.scale, st.z_step))
    img -= 0.45 * membranes + 0.3 * np.where(mito | lumen, 0, _er_lines(rng, shape, st))
    img = np.where(lumen, img + 0.06, img) - 0.5 * rim
    # signed distance to the mito surface (positive inside) places the double membrane
    sd = (ndimage.distance_transform_edt(mito, sampling=(st.z_step, 1, 1))
          - ndimage.distance_transform_edt(~mito, sampling=(st.z_step, 1, 1)))
    s = st.scale
    double = np.exp(-0.5 * ((sd - 0.6 * s) / (0.6 * s)) ** 2) \
        + np.exp(-0.5 * ((sd - 2.6 * s) / (0.6 * s)) ** 2)
    wobble = 0.8 * _smooth_noise(rng, shape, 4 * s, st.z_step)
    stripes = np.cos(2 * np.pi * along / st.cristae_period + wobble)
    cristae = np.clip((stripes - 0.4) / 0.6, 0, 1) * np.clip((sd - 3.0 * s) / s, 0, 1)
    img = np.where(mito, img - 0.3 + 0.3 * cristae, img)
    return img - 0.4 * double


def _microscope(rng, img, st) -> np.ndarray:
    """Blur, noise, artefacts and intensity mapping of one style; returns uint8."""
    img = ndimage.gaussian_filter(img, (st.blur / st.z_step, st.blur, st.blur))
    img += st.slice_jitter * rng.standard_normal((img.shape[0], 1, 1))
    if st.curtain:
        stripes = ndimage.gaussian_filter1d(rng.standard_normal(img.shape[2]), 1.0)
        img += st.curtain * stripes / (stripes.std() + 1e-8)
    if st.photons:
        img = rng.poisson(np.clip(img, 0, None) * st.photons) / st.photons
    img = img + st.gauss_noise * rng.standard_normal(img.shape)
    img = np.clip(img, 0, 1) ** st.gamma
    return np.round(st.low + (st.high - st.low) * img).astype(np.uint8)


def make_volume(style: str, shape: tuple[int, int, int] = (8, 256, 256),
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic volume: ``(image uint8 (Z,Y,X), labels bool (Z,Y,X))``.

    A 2D image is shape ``(1, Y, X)``. Deterministic for (style, shape, seed).
    """
    st = _style(style)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1 or seed < 0:
        raise ConfigError(f"need a (Z, Y, X) shape of positive sizes and seed >= 0, "
                          f"got shape {shape} and seed {seed}.")
    rng = np.random.default_rng([int(seed), STYLES.index(style)])
    membranes = _cell_membranes(rng, shape, st)
    mito, along = _place_mitochondria(rng, shape, st, membranes)
    rim, lumen = _vesicles(rng, shape, st, mito)
    img = _render(rng, shape, st, membranes, mito, along, rim, lumen)
    return _microscope(rng, img, st), mito


def demo_pair(dims: int, seed: int = 0, size: str = "demo") -> dict:
    """``{"source": (img, lab), "target": (img, lab)}`` for the demo (``size="demo"``) or tests
    (``size="tiny"``). With dims=2 each slice is an independent 2D section (more variety than
    neighbouring slices of one volume); with dims=3 each domain is one volume.
    """
    if dims not in (2, 3) or size not in _DEMO_SHAPES:
        raise ConfigError(f"demo_pair needs dims 2 or 3 and size in {tuple(_DEMO_SHAPES)}, "
                          f"got dims={dims}, size={size!r}.")
    shape = _DEMO_SHAPES[size][dims]
    out = {}
    for style in STYLES:
        if dims == 3:
            out[style] = make_volume(style, shape, seed)
            continue
        # distinct, reproducible seeds per slice that do not collide across demo seeds
        slices = [make_volume(style, (1,) + shape[1:], seed * 1000 + i) for i in range(shape[0])]
        out[style] = (np.concatenate([s[0] for s in slices]),
                      np.concatenate([s[1] for s in slices]))
    return out


def _atomic_write(path: Path, write) -> None:
    """Write via a temp name in the same folder, then rename, so readers never see a partial
    file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_domain(directory, style: str, shape: tuple[int, int, int], seed: int,
                 fmt: str = "png") -> tuple[Path, Path]:
    """Write one synthetic volume to ``directory`` and return (image path, mask path).

    ``fmt="png"``: folders ``images/`` and ``masks/`` with one ``NNN.png`` per z slice.
    ``fmt="tif"``: multipage ``image.tif`` and ``mask.tif``. Masks are 0/255 uint8.
    """
    if fmt not in ("png", "tif"):
        raise ConfigError(f"unknown synthetic output format {fmt!r}; use 'png' or 'tif'.")
    img, lab = make_volume(style, shape, seed)
    mask = lab.astype(np.uint8) * 255
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "tif":
        import tifffile

        paths = directory / "image.tif", directory / "mask.tif"
        for path, arr in zip(paths, (img, mask)):
            # minisblack: a 3- or 4-slice stack must not be read as RGB(A) planes
            _atomic_write(path, lambda p, a=arr: tifffile.imwrite(p, a, photometric="minisblack"))
        return paths
    from PIL import Image

    paths = directory / "images", directory / "masks"
    for folder, arr in zip(paths, (img, mask)):
        folder.mkdir(exist_ok=True)
        for i, plane in enumerate(arr):
            _atomic_write(folder / f"{i:03d}.png",
                          lambda p, a=plane: Image.fromarray(a).save(p, format="PNG"))
    return paths
