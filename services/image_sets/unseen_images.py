"""Images the server has not seen in the run: a per-request change no person can see.

vLLM caches prompt prefixes and image encodings by default (a 1-token request took 20.8 ms on an
image seen before, 71.1 ms on a new one; docs/vllm-engine-notes.md): a benchmark that repeats
images measures cache hits. So, unless the run asks for repeats (``ImageSetSpec.reuse``), every
request pair (the same image for every version: each version is its own engine with its own cache)
sends a variant of its image that no earlier request of the run sent, and the warm-up sends variants
of their own.

The change: :data:`BLOCKS` 8x8 pixel blocks, aligned on JPEG's block grid and picked by a seeded
generator, move by one level (+1 or -1, every channel), and the image is encoded again as it is sent
(JPEG quality 95, 4:4:4). One level over a block survives JPEG's quantization (the block's DC
coefficient moves by 8, more than its step at quality 95); a lone pixel's change would not. The
decoded pixels of every variant are checked to differ from the image's and from every other variant
of the run (a collision takes the next seed). A variant is reproducible from the image and its key:
``(seed * 1_000_003 + pair) * 2 + warm-up`` (:func:`variant_key`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from services.core.images import JPEG_QUALITY

BLOCKS = 16
BLOCK = 8
_CACHED = 64  # variants kept: the versions of one pair ask for the same variant one after the other
_MAX_TRIES = 32


@dataclass(frozen=True)
class Variant:
    """One request's image as sent: base64 of the bytes, and the sha256 of the bytes and of the pixels."""

    b64: str
    sha256: str
    pixels_sha256: str


def variant_key(seed: int, pair: int, warmup: bool) -> int:
    """The perturbation's seed of the requests of one pair (warm-up pairs have keys of their own)."""
    return ((int(seed) * 1_000_003 + int(pair)) * 2 + int(bool(warmup))) % 2**63


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(pixels, "RGB")
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def perturbed(data: bytes, key: int) -> tuple[bytes, np.ndarray]:
    """The image ``data`` with :data:`BLOCKS` seeded 8x8 blocks moved by one level, encoded in its
    own format (JPEG at the sending quality, else PNG); ``(bytes, decoded pixels)``."""
    with Image.open(io.BytesIO(data)) as img:
        fmt = "JPEG" if img.format == "JPEG" else "PNG"
    pixels = _pixels(data).astype(np.int16)
    rows, cols = max(1, pixels.shape[0] // BLOCK), max(1, pixels.shape[1] // BLOCK)
    rng = np.random.default_rng(key)
    picks = rng.choice(rows * cols, size=min(BLOCKS, rows * cols), replace=False)
    signs = rng.choice((-1, 1), size=len(picks))
    for pick, sign in zip(picks, signs):
        r, c = divmod(int(pick), cols)
        block = pixels[r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK]
        if (sign > 0 and block.max() >= 255) or (sign < 0 and block.min() > 0):
            sign = -1 if block.min() > 0 else 1  # stay within 0..255 without clipping
        block += sign
    out = np.clip(pixels, 0, 255).astype(np.uint8)
    encoded = _encode(out, fmt)
    return encoded, _pixels(encoded)


class UnseenImages:
    """The variant each request sends (thread-safe): the same for every version of a pair, new for
    every pair, other ones for the warm-up; distinct decoded pixels across the whole run."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int, bool], Variant] = OrderedDict()
        self._seen_pixels: set[str] = set()
        self._bases: set[str] = set()
        self.collisions = 0

    def variant(self, image_id: str, image_b64: str, pair: int, warmup: bool) -> Variant:
        """The variant of the image for one request pair (made on first use, then reused by the
        pair's other versions)."""
        key = (image_id, int(pair), bool(warmup))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            data = base64.b64decode(image_b64)
            if image_id not in self._bases:  # the image itself is never sent: no variant may equal it
                self._bases.add(image_id)
                self._seen_pixels.add(hashlib.sha256(_pixels(data).tobytes()).hexdigest())
            seed = variant_key(self.seed, pair, warmup)
            for attempt in range(_MAX_TRIES):
                encoded, pixels = perturbed(data, seed + attempt * 7919)
                digest = hashlib.sha256(pixels.tobytes()).hexdigest()
                if digest not in self._seen_pixels:
                    break
                self.collisions += 1
            else:
                raise RuntimeError(f"no unseen variant of image {image_id} after {_MAX_TRIES} tries")
            self._seen_pixels.add(digest)
            made = Variant(base64.b64encode(encoded).decode("ascii"), hashlib.sha256(encoded).hexdigest(), digest)
            self._cache[key] = made
            while len(self._cache) > _CACHED:
                self._cache.popitem(last=False)
            return made


def workload_manifest(reuse: bool, seed: int) -> dict[str, Any]:
    """The run manifest's ``workload`` entry: whether images repeat, and how they were made unseen."""
    if reuse:
        return {"images": "repeated", "image_reuse": True,
                "note": "the image set is cycled and the warm-up uses the same images: requests after an "
                        "image's first may be answered from the engine's prefix / image cache"}
    return {"images": "unseen", "image_reuse": False,
            "note": "every measured request pair and every warm-up pair sends an image no earlier request "
                    "of the run sent (the same to every version of a pair)",
            "perturbation": f"{BLOCKS} seeded {BLOCK}x{BLOCK} blocks moved by one level, re-encoded as sent "
                            f"(JPEG quality {JPEG_QUALITY}, 4:4:4)",
            "variant_key": "(seed * 1000003 + pair) * 2 + warmup", "seed": int(seed)}
