"""Tests of services.core.images: every file is made with PIL in memory."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from services.core.images import (
    DEFAULT_MAX_SIDE,
    ImageError,
    LoadedImage,
    encode_base64,
    load_image,
)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def png_with_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR is patched to claim ``width`` x ``height`` (CRC fixed)."""
    d = bytearray(encode(Image.new("RGB", (4, 4), (255, 0, 0)), "PNG"))
    assert d[12:16] == b"IHDR"
    d[16:24] = struct.pack(">II", width, height)
    d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])))  # CRC over type + data
    return bytes(d)


def pixel(loaded: LoadedImage, x: int, y: int) -> tuple[int, int, int]:
    return loaded.image.getpixel((x, y))  # type: ignore[return-value]


def decoded(loaded: LoadedImage) -> Image.Image:
    img = Image.open(io.BytesIO(loaded.data))
    img.load()
    return img


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 6) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------


def test_jpeg_basic_and_what_is_sent() -> None:
    loaded = load_image(encode(Image.new("RGB", (300, 200), (200, 30, 40)), "JPEG"))
    assert loaded.format == "JPEG"
    assert (loaded.original_width, loaded.original_height) == (300, 200)
    assert (loaded.width, loaded.height) == (300, 200)
    assert not loaded.shrunk and loaded.scale == 1.0
    assert loaded.notes == []
    assert loaded.image.mode == "RGB"
    assert loaded.sent_format == "JPEG" and loaded.mime_type == "image/jpeg"
    assert loaded.data[:3] == b"\xff\xd8\xff"
    sent = decoded(loaded)
    assert sent.format == "JPEG" and sent.size == (300, 200) and sent.mode == "RGB"
    assert close(sent.getpixel((150, 100)), (200, 30, 40))
    assert "exif" not in sent.info


def test_metadata_is_not_sent() -> None:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0)}  # GPS: latitude
    src = Image.new("RGB", (64, 48), (1, 2, 3))
    data = encode(src, "JPEG", exif=exif.tobytes(), comment=b"secret")
    assert Image.open(io.BytesIO(data)).getexif().get(0x010F) == "PhoneMaker"
    loaded = load_image(data)
    assert loaded.notes == []
    sent = decoded(loaded)
    assert len(sent.getexif()) == 0
    assert b"PhoneMaker" not in loaded.data and b"secret" not in loaded.data
    assert loaded.image.info == {}


def test_png_send_format() -> None:
    src = noise(64, 48)
    loaded = load_image(encode(src, "PNG"), send_format="PNG")
    assert loaded.mime_type == "image/png" and loaded.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(np.asarray(decoded(loaded)), np.asarray(src))  # lossless


def test_webp() -> None:
    loaded = load_image(encode(Image.new("RGB", (120, 80), (0, 0, 255)), "WEBP", lossless=True))
    assert loaded.format == "WEBP"
    assert (loaded.width, loaded.height) == (120, 80)
    assert pixel(loaded, 60, 40) == (0, 0, 255)


def test_webp_with_alpha_on_white() -> None:
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    loaded = load_image(encode(img, "WEBP", lossless=True))
    assert pixel(loaded, 20, 20) == (255, 255, 255)


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (50, 30), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    loaded = load_image(data)
    assert loaded.format == "GIF"
    assert "first frame of an animated GIF (3 frames)" in loaded.notes
    assert pixel(loaded, 25, 15) == (255, 0, 0)
    assert (loaded.width, loaded.height) == (50, 30)


def test_animated_webp_gives_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in [(0, 0, 255), (255, 0, 0)]]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    loaded = load_image(data)
    assert "first frame of an animated WEBP (2 frames)" in loaded.notes
    assert pixel(loaded, 16, 16) == (0, 0, 255)


def test_other_pil_formats() -> None:
    for fmt in ["BMP", "TIFF", "PPM", "TGA"]:
        loaded = load_image(encode(Image.new("RGB", (10, 7), (1, 2, 3)), fmt))
        assert loaded.format == fmt
        assert pixel(loaded, 5, 3) == (1, 2, 3)


# ------------------------------------------------------------------------------------------
# EXIF orientation
# ------------------------------------------------------------------------------------------


def test_exif_orientation_6_rotates_the_size() -> None:
    # Stored 80x40: left half red, right half blue. Orientation 6 = rotate 90 degrees clockwise
    # to display, so the left half becomes the top.
    img = Image.new("RGB", (80, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = load_image(encode(img, "JPEG", quality=95, exif=exif.tobytes()))
    assert (loaded.original_width, loaded.original_height) == (40, 80)
    assert (loaded.width, loaded.height) == (40, 80)
    assert close(pixel(loaded, 20, 10), (255, 0, 0), 10)
    assert close(pixel(loaded, 20, 70), (0, 0, 255), 10)
    assert "rotated/flipped by EXIF orientation 6" in loaded.notes
    # The sent file has no orientation tag left to be applied twice.
    assert decoded(loaded).getexif().get(0x0112) in (None, 1)


def test_exif_orientation_before_shrinking() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    loaded = load_image(encode(Image.new("RGB", (3000, 2000)), "JPEG", exif=exif.tobytes()))
    assert (loaded.original_width, loaded.original_height) == (2000, 3000)
    assert (loaded.width, loaded.height) == (683, 1024)
    assert "shrunk from 2000x3000 to 683x1024 (longest side 1024)" in loaded.notes


# ------------------------------------------------------------------------------------------
# Modes
# ------------------------------------------------------------------------------------------


def test_rgba_composited_on_white() -> None:
    img = Image.new("RGBA", (4, 1))
    img.putpixel((0, 0), (255, 0, 0, 255))  # opaque red
    img.putpixel((1, 0), (255, 0, 0, 0))  # transparent
    img.putpixel((2, 0), (255, 0, 0, 128))  # half
    img.putpixel((3, 0), (0, 0, 0, 0))  # transparent black
    loaded = load_image(encode(img, "PNG"))
    assert [pixel(loaded, x, 0) for x in range(4)] == [
        (255, 0, 0),
        (255, 255, 255),
        (255, 127, 127),
        (255, 255, 255),
    ]
    assert any("RGBA" in n and "white" in n for n in loaded.notes)


def test_la_composited_on_white() -> None:
    img = Image.new("LA", (2, 1))
    img.putpixel((0, 0), (0, 255))
    img.putpixel((1, 0), (0, 0))
    loaded = load_image(encode(img, "PNG"))
    assert [pixel(loaded, x, 0) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]


def test_palette_with_transparency() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    data = encode(img, "PNG", transparency=1)  # palette index 1 (green) is transparent
    loaded = load_image(data)
    assert [pixel(loaded, x, 0) for x in range(2)] == [(255, 0, 0), (255, 255, 255)]
    assert any("P with transparency" in n for n in loaded.notes)


def test_palette_without_transparency() -> None:
    img = Image.new("P", (1, 1))
    img.putpalette([10, 20, 30] + [0] * 765)
    loaded = load_image(encode(img, "PNG"))
    assert pixel(loaded, 0, 0) == (10, 20, 30)
    assert "converted from palette (P)" in loaded.notes


def test_gif_transparency_on_white() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 9, 9, 9] + [0] * 762)
    img.putpixel((1, 0), 1)
    loaded = load_image(encode(img, "GIF", transparency=0))
    assert [pixel(loaded, x, 0) for x in range(2)] == [(255, 255, 255), (9, 9, 9)]


def test_cmyk() -> None:
    img = Image.new("CMYK", (3, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))  # white
    img.putpixel((1, 0), (0, 255, 255, 0))  # red
    img.putpixel((2, 0), (0, 0, 0, 255))  # black
    loaded = load_image(encode(img, "TIFF"))
    assert [pixel(loaded, x, 0) for x in range(3)] == [(255, 255, 255), (255, 0, 0), (0, 0, 0)]
    assert "converted from CMYK" in loaded.notes


def test_cmyk_jpeg() -> None:
    loaded = load_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))
    assert loaded.format == "JPEG"
    assert close(pixel(loaded, 8, 8), (255, 0, 0), 8)
    assert "converted from CMYK" in loaded.notes


def test_16bit_grayscale_png_is_scaled_not_clipped() -> None:
    a = np.array([[0, 257 * 64, 32896, 65535]], dtype=np.uint16)
    img = Image.fromarray(a)
    assert img.mode == "I;16"
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    loaded = load_image(data)
    assert [pixel(loaded, x, 0) for x in range(4)] == [
        (0, 0, 0),
        (64, 64, 64),
        (128, 128, 128),
        (255, 255, 255),
    ]
    assert any("16-bit" in n and "0..65535" in n for n in loaded.notes)


def test_32bit_integer_with_16bit_values() -> None:
    img = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32), "I")
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    loaded = load_image(data)
    assert [pixel(loaded, x, 0)[0] for x in range(3)] == [0, 4, 255]  # 1000/257 = 3.9


def test_32bit_integer_with_8bit_values_is_kept() -> None:
    img = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), "I")
    loaded = load_image(encode(img, "TIFF"))
    assert [pixel(loaded, x, 0)[0] for x in range(3)] == [0, 100, 255]


def test_float_image_unit_range() -> None:
    img = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    loaded = load_image(encode(img, "TIFF"))
    assert [pixel(loaded, x, 0)[0] for x in range(3)] == [0, 128, 255]
    assert any("float" in n for n in loaded.notes)


def test_float_image_other_range_is_stretched() -> None:
    img = Image.fromarray(np.array([[-10.0, 0.0, 30.0]], dtype=np.float32), "F")
    loaded = load_image(encode(img, "TIFF"))
    assert [pixel(loaded, x, 0)[0] for x in range(3)] == [0, 64, 255]


def test_one_bit() -> None:
    img = Image.new("1", (2, 1), 0)
    img.putpixel((1, 0), 1)
    loaded = load_image(encode(img, "PNG"))
    assert [pixel(loaded, x, 0) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]
    assert "converted from 1-bit black and white" in loaded.notes


def test_grayscale() -> None:
    loaded = load_image(encode(Image.new("L", (2, 2), 77), "PNG"))
    assert pixel(loaded, 1, 1) == (77, 77, 77)
    assert loaded.image.mode == "RGB"


# ------------------------------------------------------------------------------------------
# Shrinking
# ------------------------------------------------------------------------------------------


def test_phone_photo_is_shrunk() -> None:
    loaded = load_image(encode(noise(4032, 3024), "JPEG", quality=80))
    assert (loaded.original_width, loaded.original_height) == (4032, 3024)
    assert (loaded.width, loaded.height) == (1024, 768)
    assert loaded.image.size == (1024, 768)
    assert decoded(loaded).size == (1024, 768)
    assert "shrunk from 4032x3024 to 1024x768 (longest side 1024)" in loaded.notes
    assert loaded.shrunk and loaded.scale == pytest.approx(1024 / 4032)


def test_max_side_is_configurable_and_never_enlarges() -> None:
    data = encode(Image.new("RGB", (1000, 250)), "PNG")
    assert load_image(data, max_side=500).image.size == (500, 125)
    assert load_image(data, max_side=4000).image.size == (1000, 250)
    tall = encode(Image.new("RGB", (10, 3000)), "PNG")
    assert load_image(tall).image.size == (3, DEFAULT_MAX_SIDE)  # rounding, never below 1
    assert load_image(encode(Image.new("RGB", (1, 5000)), "PNG")).image.size == (1, 1024)


def test_huge_but_allowed_image_is_shrunk() -> None:
    # 9000x6000 = 54 megapixels: under the default 64 MP limit.
    data = encode(Image.new("RGB", (9000, 6000), (10, 200, 30)), "PNG")
    loaded = load_image(data)
    assert (loaded.original_width, loaded.original_height) == (9000, 6000)
    assert loaded.image.size == (1024, 683)
    assert close(pixel(loaded, 500, 300), (10, 200, 30), 1)


# ------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------


def test_empty() -> None:
    with pytest.raises(ImageError, match=r"^'label\.jpg': empty file \(0 bytes\)$"):
        load_image(b"", name="label.jpg")


def test_random_bytes() -> None:
    data = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match="not an image"):
        load_image(data)


def test_text_file() -> None:
    with pytest.raises(ImageError, match=r"not an image \(it looks like a text file\)"):
        load_image(b"Energy 250 kcal\nFat 3 g\n", name="notes.txt")


def test_heic_is_explained() -> None:
    fake = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100
    with pytest.raises(ImageError, match="HEIC"):
        load_image(fake)


def test_truncated_jpeg() -> None:
    data = encode(noise(400, 300), "JPEG", quality=90)
    with pytest.raises(ImageError, match="truncated"):
        load_image(data[: len(data) // 2], name="cut.jpg")
    with pytest.raises(ImageError, match="truncated"):
        load_image(data[:300])  # cut inside the header


def test_truncated_png() -> None:
    data = encode(noise(200, 100), "PNG")
    with pytest.raises(ImageError, match="truncated"):
        load_image(data[: len(data) // 2])


def test_truncated_refused_even_if_pil_flag_is_on() -> None:
    data = encode(noise(400, 300), "JPEG", quality=90)
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageError, match="truncated"):
            load_image(data[: len(data) // 2])
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def test_header_claims_30000x30000() -> None:
    data = png_with_size(30000, 30000)
    assert len(data) < 200
    with pytest.raises(ImageError) as info:
        load_image(data, name="bomb.png")
    msg = str(info.value)
    assert "'bomb.png'" in msg
    assert "pixel limit" in msg and "30000x30000" in msg and "900.0 megapixels" in msg
    assert "64.0 megapixels" in msg and "before decoding" in msg


def test_pixel_limit_is_configurable() -> None:
    data = encode(Image.new("RGB", (100, 100)), "JPEG")
    with pytest.raises(ImageError, match=r"100x100 \(10000 pixels\) .*more than 9999 pixels"):
        load_image(data, max_pixels=9999)
    assert load_image(data, max_pixels=10000).width == 100


def test_pixel_limit_for_formats_without_a_sniffed_header() -> None:
    # TIFF is not read by the header sniffer: the check on PIL's size (still before decoding)
    # refuses it.
    data = encode(Image.new("RGB", (200, 100)), "TIFF")
    with pytest.raises(ImageError, match=r"200x100 .* in the TIFF file"):
        load_image(data, max_pixels=10_000)


def test_pil_decompression_bomb_warning_is_an_error() -> None:
    # 10000x10000 = 100 MP: allowed by our max_pixels here, but over PIL's own limit
    # (89.5 MP), where PIL only warns. The warning is a refusal.
    assert Image.MAX_IMAGE_PIXELS is not None and 10000 * 10000 > Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(png_with_size(10000, 10000), max_pixels=200_000_000)


def test_pil_decompression_bomb_error_is_an_error() -> None:
    # Over twice PIL's limit PIL raises at open, before our check on the decoded header would.
    with pytest.raises(ImageError, match="decompression bomb.*900000000 pixels"):
        load_image(png_with_size(30000, 30000), max_pixels=10**9)


def test_zero_size() -> None:
    with pytest.raises(ImageError, match=r"zero-size image \(0x4 declared in the PNG header\)"):
        load_image(png_with_size(0, 4))
    gif = bytearray(encode(Image.new("P", (3, 3)), "GIF"))
    gif[6:10] = struct.pack("<HH", 5, 0)
    with pytest.raises(ImageError, match=r"zero-size image \(5x0 declared in the GIF header\)"):
        load_image(bytes(gif))


def test_not_bytes() -> None:
    with pytest.raises(ImageError, match="expected the file's bytes, got str"):
        load_image("photo.jpg")  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    data = encode(Image.new("RGB", (2, 2)), "PNG")
    with pytest.raises(ValueError, match="max_side"):
        load_image(data, max_side=0)
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(data, max_pixels=-1)
    with pytest.raises(ValueError, match="send_format"):
        load_image(data, send_format="GIF")  # type: ignore[arg-type]


def test_name_is_only_used_in_messages(tmp_path) -> None:
    # A name that is the path of a real image must not be read: the bytes decide.
    real = tmp_path / "real.png"
    Image.new("RGB", (5, 5)).save(real)
    with pytest.raises(ImageError, match="text file"):
        load_image(b"just text", name=str(real))
    loaded = load_image(encode(Image.new("RGB", (7, 3)), "PNG"), name="../../etc/passwd")
    assert loaded.name == "../../etc/passwd" and loaded.width == 7


def test_name_is_sanitized_in_messages() -> None:
    with pytest.raises(ImageError) as info:
        load_image(b"", name="evil\nname\x1b[31m" + "x" * 200)
    msg = str(info.value)
    assert "\n" not in msg and "\x1b" not in msg and len(msg) < 130


def test_image_error_is_value_error() -> None:
    assert issubclass(ImageError, ValueError)


# ------------------------------------------------------------------------------------------
# Base64
# ------------------------------------------------------------------------------------------


def test_encode_base64() -> None:
    loaded = load_image(encode(Image.new("RGB", (20, 10), (0, 128, 0)), "PNG"))
    b64 = encode_base64(loaded)
    assert isinstance(b64, str)
    assert not b64.startswith("data:")
    raw = base64.b64decode(b64, validate=True)
    assert raw == loaded.data
    assert Image.open(io.BytesIO(raw)).size == (20, 10)
