"""Decode one medical image file (PNG/JPG/TIFF/BMP with Pillow, DICOM with pydicom) and resize it to
square uint8 RGB arrays at one or more resolutions, decoding the file only once.

Policy (recorded in every prepared dataset's info.json as RESIZE_POLICY):
- the whole image is resized to R x R (aspect ratio not kept, nothing cropped), bicubic with
  Pillow's antialiasing;
- grayscale stays one channel until the end and is repeated to 3 channels;
- 16-bit and float images are scaled by their own min..max to 0..255;
- DICOM: Modality LUT / RescaleSlope+Intercept (pydicom), then the file's first window
  (WindowCenter/WindowWidth, DICOM PS3.3 C.11.2.1.2 linear function) or min..max when it has
  none, then MONOCHROME1 is inverted so that higher is brighter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .metadata import age_bin, sex_code, view_code

RESIZE_POLICY = "whole image resized to RxR (aspect not kept), Pillow bicubic; grayscale repeated to RGB; DICOM: modality LUT, first VOI window or min-max, MONOCHROME1 inverted"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")


class ImageDecodeError(Exception):
    """A file that cannot be decoded as an image; str() is the reason."""


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any numeric 2-D/3-D array by its min..max to uint8 (constant images become 0)."""
    a = array.astype(np.float64, copy=False)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ImageDecodeError("pixel values are not finite")
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _first(value) -> float:
    """WindowCenter/WindowWidth may be multi-valued; the first is the default window."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _dicom_to_uint8(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """Pixels as uint8 plus the header fields medpeft keeps as metadata (sex, age bin, view)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for damaged or unsupported files
        raise ImageDecodeError(f"not a readable DICOM image ({type(exc).__name__}: {exc})") from None
    header = {
        "sex": sex_code(getattr(ds, "PatientSex", "")),
        "age_bin": age_bin(getattr(ds, "PatientAge", "")),
        "view": view_code(getattr(ds, "ViewPosition", "")),
    }
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise ImageDecodeError(f"multi-frame DICOM ({ds.NumberOfFrames} frames); medpeft reads single images")
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT") and pixels.ndim == 3:
        return (pixels if pixels.dtype == np.uint8 else _to_uint8(pixels)), header
    if pixels.ndim != 2:
        raise ImageDecodeError(f"unsupported DICOM pixel data of shape {pixels.shape} ({photometric})")
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if center is not None and width is not None and _first(width) >= 1:
        c, w = _first(center), _first(width)
        # DICOM linear VOI function: (x - (c - 0.5)) / (w - 1) + 0.5, clipped to [0, 1]
        scaled = np.clip((values - (c - 0.5)) / max(w - 1.0, 1.0) + 0.5, 0.0, 1.0)
        out = np.round(scaled * 255.0).astype(np.uint8)
    else:
        out = _to_uint8(values)
    if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
        out = 255 - out
    return out, header


def _open_pillow(path: Path, largest: int):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(path)
        if image.format == "JPEG":
            # Let libjpeg decode at a reduced scale (1/2 .. 1/8) when that still exceeds `largest`.
            image.draft(image.mode, (largest, largest))
        image.load()
        image = ImageOps.exif_transpose(image)  # camera photographs (e.g. Fitzpatrick 17k)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    if getattr(image, "n_frames", 1) > 1:
        raise ImageDecodeError(f"multi-frame image ({image.n_frames} frames); medpeft reads single images")
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image)))  # 2-D uint8 -> mode L
    if image.mode in ("1", "LA", "La"):
        return image.convert("L")
    return image.convert("RGB")  # P, RGBA, CMYK, YCbCr, ...


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def decode_resized(path: Path, resolutions: Sequence[int]) -> tuple[list[np.ndarray], dict[str, str]]:
    """The image at `path` as uint8 (R, R, 3) arrays, one per resolution, from one decode, and the
    metadata its header carries (DICOM: sex, age_bin, view; other formats: none)."""
    from PIL import Image

    if not resolutions:
        raise ValueError("at least one resolution is needed")
    header: dict[str, str] = {}
    try:
        if _is_dicom(path):
            pixels, header = _dicom_to_uint8(path)
            image = Image.fromarray(pixels)
        else:
            image = _open_pillow(path, max(resolutions))
    except ImageDecodeError:
        raise
    except OSError as exc:
        raise ImageDecodeError(f"cannot read the file ({exc.strerror or exc})") from None
    if image.width < 1 or image.height < 1:
        raise ImageDecodeError("image has no pixels")
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    out = []
    for r in resolutions:
        resized = image if image.size == (r, r) else image.resize((r, r), Image.Resampling.BICUBIC, reducing_gap=3.0)
        array = np.asarray(resized, dtype=np.uint8)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        out.append(array)
    return out, header
