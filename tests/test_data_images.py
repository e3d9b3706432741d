"""Decoding: DICOM (rescale, windowing, MONOCHROME1), 16-bit PNG, EXIF-free RGB, broken files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medpeft_cli.data.images import ImageDecodeError, decode_resized
from medpeft_cli.data.metadata import age_bin, sex_code

from raw_layouts import write_dicom


def gradient(h=8, w=10, top=1000) -> np.ndarray:
    return np.tile(np.linspace(0, top, w).round().astype(np.uint16), (h, 1))



def test_dicom_min_max_and_header(tmp_path):
    write_dicom(tmp_path / "a.dcm", gradient(), sex="M", age="067Y", view="AP")
    (out,), header = decode_resized(tmp_path / "a.dcm", [10])
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255  # no window: min..max
    assert header == {"sex": "M", "age_bin": "60-79", "view": "AP"}


def test_monochrome1_is_inverted(tmp_path):
    write_dicom(tmp_path / "m2.dcm", gradient(), photometric="MONOCHROME2")
    write_dicom(tmp_path / "m1.dcm", gradient(), photometric="MONOCHROME1")
    (m2,), _ = decode_resized(tmp_path / "m2.dcm", [10])
    (m1,), _ = decode_resized(tmp_path / "m1.dcm", [10])
    assert np.array_equal(m1, 255 - m2)


def test_rescale_slope_intercept_then_window(tmp_path):
    # stored 0..1000 -> HU = 2 * stored - 1000 = -1000..1000; window 0 +- 100 HU
    pixels = np.array([[0, 400, 500, 600, 1000]], dtype=np.uint16).repeat(5, axis=0)
    write_dicom(tmp_path / "ct.dcm", pixels, slope=2.0, intercept=-1000.0, window=(0, 201))
    (out,), _ = decode_resized(tmp_path / "ct.dcm", [5])
    row = out[2, :, 0].tolist()
    assert row[0] == 0 and row[1] == 0 and row[3] == 255 and row[4] == 255  # outside the window: clipped
    assert 120 <= row[2] <= 135  # HU 0, the window centre: mid grey
    # the same pixels without rescale would put everything above the window
    write_dicom(tmp_path / "raw.dcm", pixels, window=(0, 201))
    (raw,), _ = decode_resized(tmp_path / "raw.dcm", [5])
    assert raw[2, 1:, 0].tolist() == [255] * 4


def test_sixteen_bit_png_is_scaled(tmp_path):
    Image.fromarray(gradient(top=60000)).save(tmp_path / "x.png")  # mode I;16
    (out,), header = decode_resized(tmp_path / "x.png", [10])
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255 and header == {}


def test_several_resolutions_and_rgb(tmp_path):
    rgb = np.zeros((30, 40, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    small, big = decode_resized(tmp_path / "x.jpg", [4, 12])[0]
    assert small.shape == (4, 4, 3) and big.shape == (12, 12, 3)
    assert abs(int(big[6, 6, 0]) - 200) < 6 and big[6, 6, 1] < 10


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00garbage", b"DICM" * 50])
def test_broken_files_raise_decode_error(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError):
        decode_resized(path, [8])


def test_broken_dicom(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00" * 10)
    with pytest.raises(ImageDecodeError, match="not a readable DICOM"):
        decode_resized(path, [8])


@pytest.mark.parametrize("text, expected", [("58", "40-59"), ("058Y", "40-59"), ("18.0", "0-19"), ("006M", "0-19"), ("85", "80+"), ("", ""), ("unknown", ""), ("200", "")])
def test_age_bins(text, expected):
    assert age_bin(text) == expected


def test_sex_codes():
    assert [sex_code(x) for x in ("male", "F", "unknown", None, "O")] == ["M", "F", "", "", ""]
