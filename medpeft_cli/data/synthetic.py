"""synthetic-lesions: the embedded default dataset, generated from a seed.

Each image is skin-like background with one lesion. The class is a 2x2 design of boundary shape
(round vs lobulated) and interior texture (smooth vs patterned: streaks, network or dots). Colour,
darkness, size, position, elongation, rotation and edge softness are drawn from the same
distributions for every class, so mean colour carries (almost) no signal.

The generator uses only +, -, *, /, sqrt, floor and numpy's uniform stream (float32). Those are
exactly rounded, so the same seed gives the same bytes, and the same checksum, on every CPU
(numpy's SIMD sin/exp/atan2 and BLAS are not: they differ by an ulp between CPUs).
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from medpeft_cli.errors import UserError

from .bundle import SPLIT_NAMES, DatasetBundle, make_split
from .checksum import dataset_checksum
from .registry import SyntheticEntry

log = logging.getLogger(__name__)

CLASS_NAMES = ["round-smooth", "round-textured", "irregular-smooth", "irregular-textured"]
CLASS_FRACTIONS = [0.35, 0.20, 0.30, 0.15]
_IRREGULAR = np.array([False, False, True, True])
_TEXTURED = np.array([False, True, False, True])
_HARMONICS = range(2, 7)  # boundary lobes: cos(k * theta) for k = 2..6
_CHUNK = 100  # images rendered at once; part of the random stream order, so changing it changes the bytes
_F = np.float32
_SKIN_RGB = np.array([228.0, 186.0, 160.0], dtype=_F)
_PIGMENT_RGB = np.array([0.50, 0.66, 0.74], dtype=_F)  # how much pigment darkens each channel: brown

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images, labels)


def class_counts(n: int) -> np.ndarray:
    """Images per class for a split of n: CLASS_FRACTIONS, largest remainders rounded up."""
    exact = np.array(CLASS_FRACTIONS) * n
    counts = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts


def _uniform(u: np.ndarray, low: float, high: float) -> np.ndarray:
    return low + (high - low) * u


def _unit_vector(u_angle: np.ndarray, u_sign: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A direction without trig: (1-t^2, 2t)/(1+t^2) covers a half turn; a sign flip the rest."""
    t = 2.0 * u_angle - 1.0
    c, s = (1 - t * t) / (1 + t * t), 2 * t / (1 + t * t)
    if u_sign is not None:
        sign = np.where(u_sign < 0.5, _F(-1), _F(1))
        c, s = c * sign, s * sign
    return c, s


def _triangle(t: np.ndarray) -> np.ndarray:
    """Zero-mean triangle wave of period 1 with values in [-1, 1]."""
    return 4.0 * np.abs(t - np.floor(t) - 0.5) - 1.0


def _upsample(grid: np.ndarray, size: int, spacing: float) -> np.ndarray:
    """Bilinear upsampling of (B, g, g) random grids to (B, size, size), elementwise only."""
    pos = ((np.arange(size) + 0.5) / spacing).astype(_F)
    f = pos - np.floor(pos)
    i = np.floor(pos).astype(np.intp)
    rows = grid[:, :, i] * (1 - f) + grid[:, :, i + 1] * f  # (B, g, size)
    return rows[:, i, :] * (1 - f)[:, None] + rows[:, i + 1, :] * f[:, None]


class _Params:
    """Per-image random parameters, drawn as one (n, k) block of uniforms in a fixed column order."""

    COLUMNS = 23 + 4 * len(_HARMONICS)

    def __init__(self, labels: np.ndarray, size: int, u: np.ndarray):
        col = iter(u.T)
        shape = (len(labels), 1, 1)

        def nxt(low: float = 0.0, high: float = 1.0) -> np.ndarray:
            return _uniform(next(col), low, high).reshape(shape)

        irregular = _IRREGULAR[labels].reshape(shape)
        textured = _TEXTURED[labels].reshape(shape)
        self.cx, self.cy = nxt(-0.12, 0.12) * size, nxt(-0.12, 0.12) * size
        radius = nxt(0.17, 0.27) * size
        self.aspect = nxt(0.72, 1.0)
        self.rot = _unit_vector(nxt())  # an ellipse only needs a half turn
        self.edge = nxt(0.7, 2.2)  # edge softness in pixels
        # Boundary harmonics: barely there for round lesions, lobes for irregular ones.
        self.lobes = []
        power = np.zeros(shape, dtype=_F)
        for k in _HARMONICS:
            weight = 0.14 if k in (3, 4, 5) else 0.07
            amp = np.where(irregular, weight * nxt(0.3, 1.0), 0.012 * nxt())
            self.lobes.append((amp, _unit_vector(nxt(), nxt())))
            power = power + amp * amp
        # Same expected area for both shapes: area of r(theta) = R(1 + sum a cos) is pi R^2 (1 + sum a^2 / 2).
        self.radius = radius / np.sqrt(1 + power / 2)
        self.shading = nxt(0.0, 0.3)  # darker centre
        self.pigment = nxt(0.3, 0.6)
        self.skin_light = nxt(0.78, 1.05)
        self.skin_jitter = np.concatenate([nxt(-10, 10) for _ in range(3)], axis=2)
        self.dark = np.concatenate([nxt(-0.06, 0.06) for _ in range(3)], axis=2) + _PIGMENT_RGB
        self.blotch = nxt(0.02, 0.07)
        self.noise = nxt(2.0, 4.0)
        self.texture_amp = np.where(textured, nxt(0.12, 0.45), _F(0))
        self.texture_kind = np.floor(nxt(0.0, 3.0))  # 0 streaks, 1 network, 2 dots
        self.period = nxt(3.0, 5.5)
        self.texture_dir = _unit_vector(nxt(), nxt())
        self.texture_phase = nxt()
        assert next(col, None) is None, "COLUMNS does not match the parameters drawn"


def _render(p: _Params, size: int, rng: np.random.Generator) -> np.ndarray:
    """Images (B, size, size, 3) uint8 for one chunk of parameters."""
    b = len(p.cx)
    grid = (np.arange(size) + 0.5 - size / 2).astype(_F)
    x, y = grid[None, None, :] - p.cx, grid[None, :, None] - p.cy
    c, s = p.rot
    u = c * x + s * y
    v = (c * y - s * x) / p.aspect
    r = np.sqrt(u * u + v * v)
    r_safe = np.maximum(r, 1e-9)
    cos1, sin1 = u / r_safe, v / r_safe

    # r_b(theta) = R (1 + sum_k a_k cos(k theta - phi_k)), cos/sin(k theta) by the angle-addition recurrence.
    lobes = np.zeros_like(r)
    cos_k, sin_k = cos1, sin1
    for k in range(1, max(_HARMONICS) + 1):
        if k in _HARMONICS:
            amp, (pc, ps) = p.lobes[k - _HARMONICS.start]
            lobes += amp * (cos_k * pc + sin_k * ps)
        cos_k, sin_k = cos_k * cos1 - sin_k * sin1, sin_k * cos1 + cos_k * sin1
    r_b = p.radius * (1 + lobes)

    mask = np.clip((r_b - r) / p.edge + 0.5, 0.0, 1.0)
    mask = mask * mask * (3 - 2 * mask)
    rho2 = (r / r_b) ** 2
    pigment = p.pigment * mask * (1 + p.shading * np.maximum(1 - rho2, 0))

    # Zero-mean interior texture, so it changes local contrast but not the mean colour.
    dc, ds = p.texture_dir
    along = (dc * (grid[None, None, :]) + ds * grid[None, :, None]) / p.period + p.texture_phase
    across = (dc * grid[None, :, None] - ds * grid[None, None, :]) / p.period
    streaks = _triangle(along)
    network = 1.7 * _triangle(along) * _triangle(across)
    cells = size / 2.5
    dots = 1.6 * _upsample(2 * rng.random((b, int(cells) + 2, int(cells) + 2), dtype=_F) - 1, size, 2.5)
    texture = np.where(p.texture_kind == 0, streaks, np.where(p.texture_kind == 1, network, dots))
    pigment = pigment * (1 + p.texture_amp * texture)

    spacing = size / 4
    blotch = _upsample(2 * rng.random((b, 6, 6), dtype=_F) - 1, size, spacing)
    skin = p.skin_light * _SKIN_RGB + p.skin_jitter  # (B, 1, 3)
    light = 1 + p.blotch * blotch
    noise = 2 * rng.random((3, b, size, size), dtype=_F) - 1  # uniform, variance 1/3
    noise_amp = p.noise * _F(np.sqrt(3.0))
    out = np.empty((b, size, size, 3), dtype=np.uint8)
    for ch in range(3):  # per channel: numpy is slow on a trailing axis of length 3
        image = skin[:, :, ch : ch + 1] * light * (1 - pigment * p.dark[:, :, ch : ch + 1]) + noise[ch] * noise_amp
        out[..., ch] = np.floor(np.clip(image, 0, 255) + 0.5)
    return out


def generate_lesions(seed: int, sizes: dict[str, int], image_size: int = 64) -> Arrays:
    """{split: (images uint8 (N, S, S, 3), labels int64 (N,))}; each split has its own seeded stream."""
    out = {}
    for index, split in enumerate(SPLIT_NAMES):
        rng = np.random.default_rng([seed, index])
        n = sizes[split]
        labels = np.repeat(np.arange(len(CLASS_NAMES)), class_counts(n))
        labels = labels[np.argsort(rng.random(n), kind="stable")]
        u = rng.random((n, _Params.COLUMNS), dtype=_F)
        images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
        for start in range(0, n, _CHUNK):
            part = slice(start, start + _CHUNK)
            images[part] = _render(_Params(labels[part], image_size, u[part]), image_size, rng)
        out[split] = (images, labels.astype(np.int64))
    return out


# A changed generator gets a new version here (and in registry.SyntheticEntry), so datasets that
# results were published on can still be rebuilt byte for byte.
GENERATORS = {"lesions-v1": generate_lesions}


def cache_path(entry: SyntheticEntry, data_dir: Path) -> Path:
    s = entry.split_sizes
    key = f"{entry.generator}_seed{entry.seed}_{entry.image_size}px_{s.train}-{s.val}-{s.test}"
    return data_dir / entry.name / f"{key}.npz"


def _read_cache(path: Path) -> Arrays | None:
    """The cached arrays if the file is complete and matches its stored checksum, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {s: (npz[f"{s}_images"], npz[f"{s}_labels"]) for s in SPLIT_NAMES}
            stored = str(npz["checksum"])
        splits = {s: make_split(s, *arrays[s]) for s in SPLIT_NAMES}
        if dataset_checksum(splits) != stored:
            raise ValueError("checksum mismatch")
        return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("regenerating %s: cached file is unreadable (%s)", path, exc)
        return None


def _write_cache(path: Path, arrays: Arrays, checksum: str) -> None:
    """Write atomically (temp file + os.replace) so concurrent readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    except OSError as exc:
        log.warning("not caching %s: %s", path, exc)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            payload = {f"{s}_{k}": a for s in SPLIT_NAMES for k, a in zip(("images", "labels"), arrays[s], strict=True)}
            np.savez(f, checksum=np.array(checksum), **payload)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared data dir should stay readable
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("not caching %s: %s", path, exc)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_synthetic(entry: SyntheticEntry, data_dir: Path, download: bool = True) -> DatasetBundle:
    """Load the cached dataset from data_dir, generating (and caching) it when needed."""
    if list(entry.classes) != CLASS_NAMES:
        raise UserError(
            f"datasets.yaml lists classes {entry.classes} for {entry.name}, but generator {entry.generator} "
            f"makes {CLASS_NAMES}; fix the classes in datasets.yaml"
        )
    path = cache_path(entry, data_dir)
    arrays = _read_cache(path)
    fresh = arrays is None
    if fresh:
        arrays = GENERATORS[entry.generator](entry.seed, entry.split_sizes.model_dump(), entry.image_size)
    splits = {s: make_split(s, *arrays[s]) for s in SPLIT_NAMES}
    checksum = dataset_checksum(splits)
    if fresh:
        _write_cache(path, arrays, checksum)
    return DatasetBundle(
        name=entry.name,
        task=entry.task,
        class_names=list(entry.classes),
        splits=splits,
        checksum=checksum,
        source=f"generated ({entry.name} {entry.generator}, seed {entry.seed})",
    )
