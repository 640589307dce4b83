"""``decode_image`` for every Pillow mode an image file can come in, against independent references.

References: imageio / tifffile reads of the file plus scikit-image's ``img_as_ubyte`` for the
8-bit conversion; a numpy palette lookup for palette images; Pillow's own ``convert`` for
CMYK, YCbCr and LAB (that conversion is the definition). 16-bit RGB/LA PNGs are written by a
tiny encoder here, since Pillow cannot write them.
"""

from __future__ import annotations

import re
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage.util import img_as_ubyte

from auditkit.exceptions import DataError
from auditkit.inputs.data import decode_image, load_dataset

RNG = np.random.default_rng(0)
H, W = 6, 7


def _png16(path: Path, a: np.ndarray) -> Path:
    """Write ``a`` (H, W[, C]) uint16 as a 16-bit PNG (grey, grey+alpha, RGB or RGBA), filter 0."""
    a = a[:, :, None] if a.ndim == 2 else a
    h, w, c = a.shape
    rows = a.astype(">u2").reshape(h, w * c)
    body = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")
    )
    return path


def _decoded(path: Path, mode: str | None = None) -> np.ndarray:
    """``decode_image`` as ``(H, W)`` for one channel, else ``(H, W, C)``."""
    out = decode_image(path, mode=mode)
    assert out.dtype == torch.uint8 and out.ndim == 3
    arr = out.permute(1, 2, 0).numpy()
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def _full_range_u16() -> np.ndarray:
    a = RNG.integers(0, 65536, (H, W)).astype(np.uint16)
    a.flat[:6] = [0, 255, 256, 32768, 65280, 65535]
    return a


def _rgb8(c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (H, W, c)).astype(np.uint8)


# ---- 8-bit modes --------------------------------------------------------------------------


def test_mode_1(tmp_path: Path) -> None:
    p = tmp_path / "bits.png"
    Image.fromarray(RNG.random((H, W)) > 0.5).save(p)
    assert Image.open(p).mode == "1"
    ref = img_as_ubyte(iio.imread(p).astype(bool))
    got = _decoded(p)
    assert got.shape == (H, W) and np.array_equal(got, ref) and set(np.unique(got)) <= {0, 255}


def test_mode_l(tmp_path: Path) -> None:
    p = tmp_path / "grey.png"
    Image.fromarray(_rgb8(1)[:, :, 0]).save(p)
    assert Image.open(p).mode == "L"
    assert np.array_equal(_decoded(p), iio.imread(p))


def test_mode_la_drops_alpha(tmp_path: Path) -> None:
    p = tmp_path / "la.png"
    Image.fromarray(_rgb8(4)).convert("LA").save(p)
    assert Image.open(p).mode == "LA"
    ref = iio.imread(p)
    assert ref.shape == (H, W, 2)
    assert np.array_equal(_decoded(p), ref[:, :, 0])


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_mode_rgb(tmp_path: Path, fmt: str) -> None:
    p = tmp_path / f"rgb.{fmt}"
    Image.fromarray(_rgb8()).save(p)
    ref = tifffile.imread(p) if fmt == "tif" else iio.imread(p)
    assert np.array_equal(_decoded(p), ref)


def test_mode_rgba_drops_alpha(tmp_path: Path) -> None:
    p = tmp_path / "rgba.png"
    src = _rgb8(4)
    src[0, 0, 3] = 0  # a fully transparent pixel keeps its colour: alpha is dropped, not composited
    Image.fromarray(src).save(p)
    assert Image.open(p).mode == "RGBA"
    ref = iio.imread(p)
    assert np.array_equal(ref, src)
    assert np.array_equal(_decoded(p), ref[:, :, :3])


@pytest.mark.parametrize("transparency", [None, 3, "bytes"])
def test_mode_p(tmp_path: Path, transparency: object) -> None:
    p = tmp_path / "pal.png"
    im = Image.fromarray(_rgb8()).quantize(16)
    if transparency == "bytes":
        im.info["transparency"] = bytes([0, 128] + [255] * 254)
    elif transparency is not None:
        im.info["transparency"] = transparency
    im.save(p)
    with Image.open(p) as img:
        assert img.mode == "P" and ("transparency" in img.info) == (transparency is not None)
        index = np.asarray(img)
        palette = np.asarray(img.getpalette(), dtype=np.uint8).reshape(-1, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pillow = np.asarray(img.convert("RGB"))
    ref = palette[index]  # an independent palette lookup; alpha dropped
    assert np.array_equal(ref, pillow)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's transparency warning is expected and silenced
        got = _decoded(p)
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("fmt", ["jpg", "tif"])
def test_mode_cmyk(tmp_path: Path, fmt: str) -> None:
    p = tmp_path / f"cmyk.{fmt}"
    Image.frombytes("CMYK", (W, H), _rgb8(4).tobytes()).save(p)
    with Image.open(p) as img:
        assert img.mode == "CMYK"
        ref = np.asarray(img.convert("RGB"))
    assert np.array_equal(_decoded(p), ref)
    if fmt == "tif":  # lossless: the file's CMYK values are what was written
        assert np.array_equal(np.asarray(Image.open(p)), tifffile.imread(p))


@pytest.mark.parametrize("kind", ["YCbCr", "LAB"])
def test_mode_ycbcr_lab(tmp_path: Path, kind: str) -> None:
    p = tmp_path / f"{kind}.tif"
    Image.fromarray(_rgb8()).convert(kind).save(p)
    with Image.open(p) as img:
        assert img.mode == kind
        ref = np.asarray(img.convert("RGB"))
    assert np.array_equal(_decoded(p), ref)


def test_mode_argument_forces_the_output(tmp_path: Path) -> None:
    grey, colour = tmp_path / "g.png", tmp_path / "c.png"
    Image.fromarray(_rgb8(1)[:, :, 0]).save(grey)
    Image.fromarray(_rgb8()).save(colour)
    assert np.array_equal(_decoded(grey, "RGB"), np.repeat(iio.imread(grey)[:, :, None], 3, axis=2))
    assert np.array_equal(_decoded(colour, "L"), np.asarray(Image.open(colour).convert("L")))
    assert np.array_equal(_decoded(colour, "RGB"), iio.imread(colour))


# ---- 16-bit -------------------------------------------------------------------------------


def test_16_bit_png_full_range(tmp_path: Path) -> None:
    src = _full_range_u16()
    p = tmp_path / "g16.png"
    Image.fromarray(src).save(p)
    read = iio.imread(p)
    assert read.dtype == np.uint16 and np.array_equal(read, src)
    ref = img_as_ubyte(read)
    assert np.array_equal(ref, (src >> 8).astype(np.uint8))
    got = _decoded(p)
    assert got.shape == (H, W) and np.array_equal(got, ref)
    # the old decode (Pillow's convert("L") clips) was wrong by up to 254 levels
    with Image.open(p) as img:
        old = np.asarray(img.convert("L")).astype(int)
    assert np.abs(old - ref.astype(int)).max() >= 254
    # forced to RGB: the same grey in three channels
    assert np.array_equal(_decoded(p, "RGB"), np.repeat(ref[:, :, None], 3, axis=2))


def test_16_bit_png_dark_is_scaled_by_the_bit_depth_not_the_content(tmp_path: Path) -> None:
    src = RNG.integers(0, 600, (H, W)).astype(np.uint16)  # a dark 16-bit picture: 0..2 in 8 bit
    p = tmp_path / "dark.png"
    Image.fromarray(src).save(p)
    # what img_as_ubyte gives these pixels in an image that also holds bright ones
    ref = img_as_ubyte(np.concatenate([iio.imread(p).ravel(), [65535]]).astype(np.uint16))[:-1].reshape(H, W)
    assert np.array_equal(_decoded(p), ref) and _decoded(p).max() <= 2


def test_16_bit_png_opened_as_mode_i(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Older Pillow opens a 16-bit grey PNG as mode I: still read as 16-bit."""
    src = _full_range_u16()
    p = tmp_path / "g16.png"
    Image.fromarray(src).save(p)
    real_open: Callable[..., Any] = Image.open

    def open_as_i(fp: Any, *args: Any, **kwargs: Any) -> Image.Image:
        with real_open(fp, *args, **kwargs) as img:
            out = img.convert("I")
            out.format = img.format
        return out

    monkeypatch.setattr(Image, "open", open_as_i)
    with Image.open(p) as img:
        assert img.mode == "I" and img.format == "PNG"
    assert np.array_equal(_decoded(p), img_as_ubyte(src))


@pytest.mark.parametrize(("channels", "mode"), [(2, "LA"), (3, "RGB"), (4, "RGBA")])
def test_16_bit_png_with_colour_or_alpha(tmp_path: Path, channels: int, mode: str) -> None:
    src = RNG.integers(0, 65536, (H, W, channels)).astype(np.uint16)
    src[0, 0] = 65535
    p = _png16(tmp_path / "c16.png", src)
    ref = img_as_ubyte(src)  # the values this encoder wrote
    got = _decoded(p)
    if mode == "LA":  # grey + alpha: Pillow opens it as RGBA, but it stays one grey channel
        assert got.shape == (H, W) and np.array_equal(got, ref[:, :, 0])
    else:
        assert np.array_equal(got, ref[:, :, :3])


def test_16_bit_grey_png_written_here(tmp_path: Path) -> None:
    src = _full_range_u16()
    p = _png16(tmp_path / "g16.png", src)
    assert np.array_equal(iio.imread(p), src)
    assert np.array_equal(_decoded(p), img_as_ubyte(src))


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_16_bit_tiff(tmp_path: Path, byteorder: str) -> None:
    src = _full_range_u16()
    p = tmp_path / "g16.tif"
    tifffile.imwrite(p, src, byteorder=byteorder)
    assert Image.open(p).mode == ("I;16" if byteorder == "<" else "I;16B")
    read = tifffile.imread(p)
    assert np.array_equal(read, src)
    assert np.array_equal(_decoded(p), img_as_ubyte(read))


def test_16_bit_pgm(tmp_path: Path) -> None:
    src = _full_range_u16()
    p = tmp_path / "g16.pgm"
    p.write_bytes(f"P5 {W} {H} 65535\n".encode() + src.astype(">u2").tobytes())
    assert Image.open(p).mode in ("I", "I;16", "I;16B")
    assert np.array_equal(_decoded(p), img_as_ubyte(src))


# ---- float --------------------------------------------------------------------------------


def test_float_tiff_in_unit_range(tmp_path: Path) -> None:
    src = RNG.random((H, W)).astype(np.float32)
    src.flat[:4] = [0.0, 1.0, 0.5, 0.5 / 255]
    p = tmp_path / "f.tif"
    tifffile.imwrite(p, src)
    assert Image.open(p).mode == "F"
    read = tifffile.imread(p)
    assert np.array_equal(read, src)
    ref = img_as_ubyte(read)
    assert np.array_equal(_decoded(p), ref)
    assert np.abs(ref.astype(float) - src * 255).max() <= 0.5


# ---- refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.full((H, W), 1.5, np.float32), r"mode F \(32-bit float\) pixels span \[1\.5, 1\.5\], not \[0, 1\]"),
        (np.linspace(-0.1, 0.9, H * W, dtype=np.float32), r"mode F .* span \[-0\.1, 0\.9\]"),
        (np.where(np.eye(H, W) > 0, np.nan, 0.5).astype(np.float32), r"mode F .*\[0\.5, 0\.5\] and NaN/inf"),
    ],
)
def test_float_out_of_range_is_refused(tmp_path: Path, values: np.ndarray, match: str) -> None:
    p = tmp_path / "f.tif"
    tifffile.imwrite(p, values.reshape(H, W))
    assert Image.open(p).mode == "F"
    with pytest.raises(DataError, match=match) as err:
        decode_image(p, mode=None)
    assert str(p) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("dtype", "lo", "hi"),
    [(np.int32, 0, 255), (np.int32, -5, 1000), (np.uint32, 0, 70000), (np.int16, 0, 1000)],
)
def test_mode_i_without_declared_16_bit_is_refused(tmp_path: Path, dtype: type, lo: int, hi: int) -> None:
    """32-bit or signed integer samples: 8-bit data could not be told from dark 16-bit data."""
    a = np.linspace(lo, hi, H * W).astype(dtype).reshape(H, W)
    p = tmp_path / "i.tif"
    tifffile.imwrite(p, a)
    assert Image.open(p).mode == "I"
    with pytest.raises(DataError, match=rf"mode I \(32-bit integer\) pixels span \[{lo}, {hi}\] in a TIFF file"):
        decode_image(p, mode="L")


def test_refused_file_is_skipped_and_listed_with_its_reason(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(_rgb8(1)[:, :, 0]).save(tmp_path / cls / f"{i}.png")
    tifffile.imwrite(tmp_path / "b" / "bad.tif", np.full((H, W), 2.0, np.float32))
    data = load_dataset(tmp_path)
    assert len(data) == 20
    ((name, reason),) = data.skipped
    assert name.endswith("bad.tif") and re.match(r"mode F .* not \[0, 1\]", reason)
    tifffile.imwrite(tmp_path / "a" / "bad.tif", np.full((H, W), 2.0, np.float32))
    for i in range(10):
        (tmp_path / "a" / f"{i}.png").unlink()
    with pytest.raises(DataError, match=r"bad\.tif: mode F .* not \[0, 1\]"):  # too many bad files: named
        load_dataset(tmp_path)


def test_decompression_bomb_still_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "g16.png"
    Image.fromarray(_full_range_u16()).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W // 2 + 1)
    with pytest.raises((Image.DecompressionBombWarning, Image.DecompressionBombError)):
        decode_image(p, mode=None)


# ---- through the public loader ------------------------------------------------------------


@pytest.mark.parametrize("stream", ["off", "on"])
def test_load_dataset_16_bit_image_folder(tmp_path: Path, stream: str) -> None:
    srcs = {}
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        srcs[cls] = _full_range_u16()
        Image.fromarray(srcs[cls]).save(tmp_path / cls / "x.png")
    data = load_dataset(tmp_path, stream=stream)
    assert data.streamed == (stream == "on")
    images = data.images[:] if stream == "on" else data.images
    assert tuple(images.shape) == (2, 1, H, W)
    for i, cls in enumerate(("a", "b")):
        assert data.ids[i] == f"{cls}/x.png"
        assert np.array_equal(images[i, 0].numpy(), img_as_ubyte(srcs[cls]))


def test_load_dataset_16_bit_manifest(tmp_path: Path) -> None:
    src = _full_range_u16()
    _png16(tmp_path / "x.png", src)
    (tmp_path / "m.csv").write_text("path,label\nx.png,0\n")
    data = load_dataset(tmp_path / "m.csv", channels=3)
    assert tuple(data.images.shape) == (1, 3, H, W)
    assert np.array_equal(data.images[0].permute(1, 2, 0).numpy(), np.repeat(img_as_ubyte(src)[:, :, None], 3, 2))
