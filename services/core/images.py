"""Uploaded images: checked, decoded, oriented, converted to RGB, shrunk and encoded for sending.

The vLLM backend takes each image as base64 of the encoded file bytes (``encode_base64``). The
image is shrunk to a longest side of 1024 px by default: the fine-tune was trained on images
shrunk so, and Qwen2-VL spends one visual token per 28x28 patch, so an unresized phone photo
(4032x3024) would cost over 16,000 tokens and overflow ``max_model_len`` 4096.

What is sent: JPEG, quality 95, no chroma subsampling (4:4:4), no metadata. Why JPEG: a 1024 px
photo is 5-10 times smaller than as PNG (less base64 to send and to decode per request, which
matters when timing bf16 against fp8); at quality 95 with 4:4:4 the small print of a nutrition
table is not visibly degraded; the training photos were JPEGs; and re-encoding drops EXIF (GPS
position included) after its orientation has been applied, so the model sees exactly the image
the dashboard shows. ``send_format="PNG"`` is there for lossless comparisons.

The API takes bytes, never a path: an uploaded file name is only shown in messages.
"""

from __future__ import annotations

import base64
import io
import struct
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIDE",
    "ImageError",
    "LoadedImage",
    "encode_base64",
    "load_image",
]

DEFAULT_MAX_SIDE = 1024
UPLOAD_TYPES = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")  # what the upload widgets accept
DEFAULT_MAX_PIXELS = 64_000_000  # 64 megapixels: above any phone camera, below PIL's own limit
JPEG_QUALITY = 95

SendFormat = Literal["JPEG", "PNG"]
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png"}
_ANIMATED_FORMATS = {"GIF", "PNG", "WEBP", "FLI", "AVIF"}


class ImageError(ValueError):
    """The uploaded bytes cannot be used; the message says why (and names the upload)."""


@dataclass
class LoadedImage:
    """An image ready to send to the model.

    ``image``: the RGB image that is sent (oriented, converted, shrunk).
    ``data``: its encoded bytes, what is sent (``sent_format``, ``mime_type``).
    ``original_width`` / ``original_height``: size after EXIF orientation, before shrinking:
    grid boxes scale to this size. ``width`` / ``height``: the size sent.
    ``format``: the upload's format as PIL names it (``JPEG``, ``PNG``, ``WEBP``, ``GIF``, ...).
    ``notes``: what was done, e.g. ``shrunk from 4032x3024 to 1024x768``.
    """

    image: Image.Image
    data: bytes
    original_width: int
    original_height: int
    width: int
    height: int
    format: str
    sent_format: str = "JPEG"
    mime_type: str = "image/jpeg"
    notes: list[str] = field(default_factory=list)
    name: str | None = None

    @property
    def shrunk(self) -> bool:
        """Whether the sent image is smaller than the original."""
        return (self.width, self.height) != (self.original_width, self.original_height)

    @property
    def scale(self) -> float:
        """Sent size over original size (1.0 when not shrunk)."""
        return self.width / self.original_width


def encode_base64(loaded: LoadedImage) -> str:
    """Base64 of the encoded file bytes, as the vLLM backend's ``image`` input wants.

    Plain base64 (ASCII), not a ``data:`` URI and not a URL.
    """
    return base64.b64encode(loaded.data).decode("ascii")


# --------------------------------------------------------------------------------------------
# Header sniffing: the declared size, read before PIL decodes anything
# --------------------------------------------------------------------------------------------

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(d: bytes) -> tuple[int, int] | None:
    i = 2
    n = len(d)
    while i + 4 <= n:
        if d[i] != 0xFF:
            return None
        while i < n and d[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = d[i]
        i += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue  # no length
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before it
            return None
        if i + 2 > n:
            return None
        (length,) = struct.unpack(">H", d[i : i + 2])
        if marker in _JPEG_SOF:
            if i + 7 > n:
                return None
            h, w = struct.unpack(">HH", d[i + 3 : i + 7])
            return w, h
        if length < 2:
            return None
        i += length
    return None


def _header_size(d: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` as declared by a PNG, JPEG, GIF, BMP or WebP header, or None.

    Only reads a few bytes; never decodes. Used to refuse oversized or zero-size images before
    PIL allocates anything, and to explain headers PIL refuses to identify.
    """
    try:
        if d[:8] == b"\x89PNG\r\n\x1a\n" and d[12:16] == b"IHDR":
            w, h = struct.unpack(">II", d[16:24])
            return "PNG", w, h
        if d[:3] == b"\xff\xd8\xff":
            size = _jpeg_size(d)
            return ("JPEG", *size) if size else None
        if d[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", d[6:10])
            return "GIF", w, h
        if d[:2] == b"BM" and len(d) >= 26:
            (dib,) = struct.unpack("<I", d[14:18])
            if dib == 12:
                w, h = struct.unpack("<HH", d[18:22])
            else:
                w, h = struct.unpack("<ii", d[18:26])
            return "BMP", abs(w), abs(h)
        if d[:4] == b"RIFF" and d[8:12] == b"WEBP":
            chunk = d[12:16]
            if chunk == b"VP8X":
                w = int.from_bytes(d[24:27], "little") + 1
                h = int.from_bytes(d[27:30], "little") + 1
                return "WEBP", w, h
            if chunk == b"VP8L" and d[20] == 0x2F:
                bits = int.from_bytes(d[21:25], "little")
                return "WEBP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8 " and d[23:26] == b"\x9d\x01\x2a":
                w, h = struct.unpack("<HH", d[26:30])
                return "WEBP", w & 0x3FFF, h & 0x3FFF
    except (struct.error, IndexError, TypeError):
        return None
    return None


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

_truncated_flag_lock = threading.Lock()


@contextmanager
def _truncated_images_refused() -> Iterator[None]:
    """Make sure ``ImageFile.LOAD_TRUNCATED_IMAGES`` is off while decoding.

    With it on, PIL fills the missing part of a cut file with grey and says nothing. It is a
    process-wide flag: if some other code turned it on, turn it off for this decode (under a
    lock, so that two uploads decoded at once do not restore it in the wrong order).
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _truncated_flag_lock:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _display_name(name: str | None) -> str:
    """A file name made safe to show in a message (never used as a path)."""
    if not name:
        return "image"
    text = "".join(ch if ch.isprintable() else "?" for ch in str(name)).strip()
    if len(text) > 80:
        text = text[:77] + "..."
    return repr(text)


def _mp(pixels: int) -> str:
    if pixels < 100_000:
        return f"{pixels} pixels"
    return f"{pixels / 1e6:.1f} megapixels"


def _looks_like_text(d: bytes) -> bool:
    head = d[:4096]
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return sum(ch.isprintable() or ch in "\r\n\t" for ch in text) >= 0.95 * len(text)


def _not_an_image_reason(d: bytes) -> str:
    head = d[:32]
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftyphevc"):
        return "HEIC/HEIF images are not supported here; export the photo as JPEG or PNG"
    if head.startswith(b"%PDF"):
        return "not an image (a PDF document)"
    if _looks_like_text(d):
        return "not an image (it looks like a text file)"
    return "not an image (no image format recognized)"


def _bomb_message(who: str, err: Exception | str) -> str:
    return f"{who}: image over the pixel limit (PIL's decompression bomb protection: {err})"


def _rescale_to_8bit(img: Image.Image) -> tuple[Image.Image, str]:
    """A 16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) image to 8-bit ``L``.

    ``I;16*``: 0..65535 to 0..255 (divide by 257). ``I``: values in 0..255 are kept, values in
    0..65535 are 16-bit data (divide by 257), anything else is stretched min..max to 0..255.
    ``F``: 0..1 is multiplied by 255, 0..255 kept, anything else stretched. NaN counts as 0.
    """
    mode = img.mode
    a = np.asarray(img).astype(np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(a.min()) if a.size else 0.0
    hi = float(a.max()) if a.size else 0.0
    if mode.startswith("I;16"):
        out, how = a / 257.0, "scaled 0..65535 to 0..255"
    elif mode == "F" and lo >= 0.0 and hi <= 1.0:
        out, how = a * 255.0, "scaled 0..1 to 0..255"
    elif lo >= 0.0 and hi <= 255.0:
        out, how = a, "values already 0..255"
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
        out, how = a / 257.0, "16-bit values, scaled 0..65535 to 0..255"
    else:
        span = hi - lo
        out = (a - lo) * (255.0 / span) if span > 0 else np.zeros_like(a)
        how = f"stretched {lo:g}..{hi:g} to 0..255"
    out8 = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return Image.fromarray(out8, "L"), how


_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_MODE_NAMES = {
    "1": "1-bit black and white",
    "L": "8-bit grayscale (L)",
    "P": "palette (P)",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "LAB",
    "HSV": "HSV",
    "RGBX": "RGBX",
}


def _to_rgb(img: Image.Image, who: str) -> tuple[Image.Image, str | None]:
    """Any PIL mode to RGB; transparency is composited on white. Returns the note to record."""
    mode = img.mode
    high_depth = mode.startswith("I;16") or mode in ("I", "F")
    has_alpha = mode in _ALPHA_MODES or "transparency" in img.info
    if mode == "RGB" and not has_alpha:
        return img, None
    if has_alpha:
        if high_depth:
            # A 16-bit grayscale PNG with a tRNS colour: scale first (PIL would clip at 255).
            gray, _ = _rescale_to_8bit(img)
            key = img.info["transparency"]
            mask = Image.fromarray(((np.asarray(img) != key) * 255).astype(np.uint8), "L")
            src = Image.merge("LA", (gray, mask))
        elif mode == "La":  # premultiplied LA: PIL converts it only to LA
            src = img.convert("LA")
        else:
            src = img
        rgba = src.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out = Image.alpha_composite(white, rgba).convert("RGB")
        kind = mode if mode in _ALPHA_MODES else f"{mode} with transparency"
        return out, f"converted from {kind}, transparent parts composited on white"
    if high_depth:
        gray, how = _rescale_to_8bit(img)
        bits = "16-bit grayscale" if mode.startswith("I;16") else (
            "32-bit integer grayscale" if mode == "I" else "32-bit float grayscale"
        )
        return gray.convert("RGB"), f"converted from {bits} ({mode}), {how}"
    try:
        out = img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"{who}: unsupported color mode {mode} ({e})") from e
    return out, f"converted from {_MODE_NAMES.get(mode, mode)}"


def _shrunk_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    if max(width, height) <= max_side:
        return width, height
    if width >= height:
        return max_side, max(1, round(height * max_side / width))
    return max(1, round(width * max_side / height)), max_side


def _encode(img: Image.Image, send_format: SendFormat) -> bytes:
    buf = io.BytesIO()
    if send_format == "JPEG":
        img.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def _checked_arguments(data: bytes, max_side: int, max_pixels: int, send_format: SendFormat,
                       who: str) -> bytes:
    """``load_image``'s arguments checked; the file's bytes as ``bytes``."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise ImageError(f"{who}: expected the file's bytes, got {type(data).__name__}")
    if not isinstance(max_side, int) or max_side <= 0:
        raise ValueError(f"max_side must be a positive int, got {max_side!r}")
    if not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if send_format not in _MIME:
        raise ValueError(f"send_format must be JPEG or PNG, got {send_format!r}")
    if not data:
        raise ImageError(f"{who}: empty file (0 bytes)")
    return data


def _check_dimensions(who: str, w: int, h: int, where: str, max_pixels: int) -> None:
    """Refuse a zero-size image or one over ``max_pixels`` (``where`` says where the size was read)."""
    if w <= 0 or h <= 0:
        raise ImageError(f"{who}: zero-size image ({w}x{h} {where})")
    if w * h > max_pixels:
        raise ImageError(
            f"{who}: image over the pixel limit: {w}x{h} ({_mp(w * h)}) {where}, "
            f"more than {_mp(max_pixels)}; refused before decoding"
        )


def _decode(data: bytes, who: str, max_pixels: int, notes: list[str]) -> tuple[Image.Image, str]:
    """Open the file, check its size, pick its first frame and decode it fully; (image, format)."""
    with _truncated_images_refused(), warnings.catch_warnings():
        # PIL warns (DecompressionBombWarning) above its own limit and raises at twice it:
        # both are refusals here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = _open(data, who)
        fmt = img.format or "unknown"
        _check_dimensions(who, img.width, img.height, f"in the {fmt} file", max_pixels)
        # The warnings filter above is process-wide and not thread-safe: do not rely on it alone.
        pil_limit = Image.MAX_IMAGE_PIXELS
        if pil_limit and img.width * img.height > pil_limit:
            raise ImageError(
                _bomb_message(
                    who,
                    f"{img.width}x{img.height} ({_mp(img.width * img.height)}) is over "
                    f"PIL's limit of {_mp(pil_limit)}",
                )
            )
        _seek_first_frame(img, fmt, who, notes)
        _load_pixels(img, who)
    return img, fmt


def _open(data: bytes, who: str) -> Image.Image:
    """``Image.open`` (the header only), its failures made ``ImageError``."""
    try:
        return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(_bomb_message(who, e)) from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{who}: {_not_an_image_reason(data)}") from e
    except Exception as e:  # noqa: BLE001 - any plugin error on a bad header is a refusal
        detail = str(e) or type(e).__name__
        raise ImageError(
            f"{who}: the file is truncated or its header is corrupt ({detail})"
        ) from e


def _seek_first_frame(img: Image.Image, fmt: str, who: str, notes: list[str]) -> None:
    """Of an animated or multi-frame file, take the first frame (and say so in ``notes``)."""
    try:
        frames = int(getattr(img, "n_frames", 1) or 1)
    except Exception:  # noqa: BLE001 - counting frames of a damaged file; frame 0 decides
        frames = 1
    if frames > 1:
        try:
            img.seek(0)
        except EOFError as e:
            raise ImageError(f"{who}: the image data is truncated or corrupt ({e})") from e
        if getattr(img, "is_animated", False) and fmt in _ANIMATED_FORMATS:
            notes.append(f"first frame of an animated {fmt} ({frames} frames)")
        else:
            notes.append(f"first of {frames} images in the {fmt} file")


def _load_pixels(img: Image.Image, who: str) -> None:
    """Force the full decode now: a cut file fails here, not later."""
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(_bomb_message(who, e)) from e
    except MemoryError as e:
        raise ImageError(f"{who}: not enough memory to decode the image") from e
    except Exception as e:  # noqa: BLE001 - OSError, EOFError, SyntaxError, zlib.error ...
        detail = str(e) or type(e).__name__
        raise ImageError(f"{who}: the image data is truncated or corrupt ({detail})") from e


def _apply_exif_orientation(img: Image.Image, notes: list[str]) -> Image.Image:
    """The image turned as its EXIF orientation says (left as stored when that cannot be done)."""
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - malformed EXIF: keep the image as stored
        orientation = 1
        notes.append("EXIF data unreadable, orientation left as stored")
    if 2 <= orientation <= 8:
        try:
            img = ImageOps.exif_transpose(img)
            notes.append(f"rotated/flipped by EXIF orientation {orientation}")
        except Exception:  # noqa: BLE001
            notes.append(f"EXIF orientation {orientation} could not be applied, left as stored")
    return img


def load_image(
    data: bytes,
    max_side: int = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    name: str | None = None,
    send_format: SendFormat = "JPEG",
) -> LoadedImage:
    """Check, decode, orient, convert to RGB, shrink and encode an uploaded image.

    ``data``: the file's bytes. ``name``: a display name, used in messages only (never as a
    path). ``max_side``: the longest side sent (never enlarged). ``max_pixels``: the largest
    width x height accepted, checked from the header before anything is decoded.

    Accepts whatever PIL opens (JPEG, PNG, WebP, GIF, BMP, TIFF, ...); an animated or
    multi-frame file gives its first frame. EXIF orientation is applied. Every mode becomes RGB:
    alpha and palette transparency are composited on white, 16-bit and float grayscale are
    scaled to 8 bits, CMYK, 1-bit, grayscale and the rest are converted by PIL.

    Raises :class:`ImageError` (a ``ValueError``) saying why: empty file, not an image,
    truncated or corrupt data, more pixels than ``max_pixels`` (or PIL's decompression-bomb
    limit), zero size, unsupported color mode.
    """
    who = _display_name(name)
    data = _checked_arguments(data, max_side, max_pixels, send_format, who)

    header = _header_size(data)
    if header is not None:
        _check_dimensions(who, header[1], header[2], f"declared in the {header[0]} header", max_pixels)

    notes: list[str] = []
    img, fmt = _decode(data, who, max_pixels, notes)
    img = _apply_exif_orientation(img, notes)
    original_width, original_height = img.size

    rgb, mode_note = _to_rgb(img, who)
    if mode_note:
        notes.append(mode_note)
    if rgb is img:
        rgb = img.copy()  # a plain image, detached from the opened file
    rgb.info = {}  # no EXIF (GPS!), ICC or comments in what is kept and sent

    width, height = _shrunk_size(original_width, original_height, max_side)
    if (width, height) != (original_width, original_height):
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
        notes.append(
            f"shrunk from {original_width}x{original_height} to {width}x{height} "
            f"(longest side {max_side})"
        )

    return LoadedImage(
        image=rgb,
        data=_encode(rgb, send_format),
        original_width=original_width,
        original_height=original_height,
        width=width,
        height=height,
        format=fmt,
        sent_format=send_format,
        mime_type=_MIME[send_format],
        notes=notes,
        name=name,
    )
