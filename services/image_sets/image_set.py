"""Image sets: which images a run sends, loaded, checked and encoded, with their ground truth.

An :class:`ImageSetSpec` names one of four kinds:

- ``samples``: the bundled sample images (:mod:`services.image_sets.samples`), with their labels;
- ``generated``: a labelled set drawn from a seed (:func:`services.image_sets.generator.generate_dataset`);
- ``uploaded``: images given as (name, bytes) pairs (the page's uploads, the CLI's ``--files``),
  no ground truth;
- ``folder``: a labelled data set folder, ``labels.jsonl`` or OpenFoodFacts parquet
  (:func:`services.image_sets.datasets.load_labeled_images`).

:func:`load_image_set` turns a spec into an :class:`ImageSet`: :class:`BenchImage` records ready to
send (base64 of the resized image, original and sent sizes, ground truth on the 0..1000 grid, the
sha256 of the bytes sent), and the images that could not be used, with why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from services.core.boxes import Box
from services.core.images import ImageError, encode_base64, load_image

ImageSetKind = Literal["uploaded", "samples", "generated", "folder"]

IMAGE_SET_KINDS = ("uploaded", "samples", "generated", "folder")


@dataclass(frozen=True)
class ImageSetSpec:
    """Which images a run sends. ``uploaded``: ``images`` holds (name, bytes) pairs."""

    kind: ImageSetKind = "samples"
    seed: int = 0  # generated sets
    count: int = 16  # generated sets
    folder: str | None = None  # dataset folder (labels.jsonl or OpenFoodFacts parquet)
    images: tuple[tuple[str, bytes], ...] = ()  # uploaded
    max_side: int = 1024


@dataclass(frozen=True)
class BenchImage:
    """One image of a run, ready to send.

    ``width``/``height``: the original size (grid boxes scale to it); ``sent_width``/``sent_height``:
    the size sent. ``truth``: ground-truth boxes on the 0..1000 grid (``None``: unknown, ``()``: known
    to hold no table). ``sha256``: of the bytes sent.
    """

    id: str
    b64: str
    width: int
    height: int
    sent_width: int
    sent_height: int
    truth: tuple[Box, ...] | None
    sha256: str
    seed: int | None = None

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "sha256": self.sha256, "width": self.width, "height": self.height,
                "sent_width": self.sent_width, "sent_height": self.sent_height, "seed": self.seed,
                "truth": None if self.truth is None else [dataclasses.asdict(b) for b in self.truth]}


@dataclass
class ImageSet:
    """The images of a run, in sending order, and the ones that could not be used (with why)."""

    spec: ImageSetSpec
    images: list[BenchImage]
    problems: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        s = self.spec
        return {"kind": s.kind, "seed": s.seed if s.kind == "generated" else None,
                "count": len(self.images), "folder": s.folder, "max_side": s.max_side,
                "images": [im.describe() for im in self.images], "problems": list(self.problems)}


def _bench_image(image_id: str, data: bytes, max_side: int, truth: Sequence[Box] | None,
                 seed: int | None = None) -> BenchImage:
    loaded = load_image(data, max_side=max_side, name=image_id)
    return BenchImage(id=image_id, b64=encode_base64(loaded), width=loaded.original_width,
                      height=loaded.original_height, sent_width=loaded.width, sent_height=loaded.height,
                      truth=None if truth is None else tuple(truth),
                      sha256=hashlib.sha256(loaded.data).hexdigest(), seed=seed)


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def load_image_set(spec: ImageSetSpec) -> ImageSet:
    """Load, check and encode the images of ``spec`` (see :class:`ImageSetSpec`).

    An image that cannot be used is left out and named in ``problems``; ValueError when none is
    left (or the folder does not exist). Ids are unique (a repeated upload name gets ``#2``...).
    """
    candidates: list[tuple[str, Callable[[], bytes], Sequence[Box] | None, int | None]] = []
    problems: list[str] = []
    if spec.kind == "uploaded":
        for name, data in spec.images:
            candidates.append((str(name), lambda d=data: bytes(d), None, None))
    elif spec.kind == "samples":
        from services.image_sets.samples import list_samples

        for s in list_samples():
            candidates.append((s.path.name, s.path.read_bytes, s.grid_boxes, None))
    elif spec.kind == "generated":
        from services.image_sets.generator import generate_dataset

        for i, sample in enumerate(generate_dataset(spec.seed, spec.count)):
            candidates.append((f"generated-{spec.seed}-{i:04d}", lambda im=sample.image: _png(im),
                               sample.grid_boxes, sample.seed))
    elif spec.kind == "folder":
        from services.image_sets.datasets import load_labeled_images

        if not spec.folder or not Path(spec.folder).exists():
            raise ValueError(f"the data set folder {spec.folder!r} does not exist")
        records, load_problems = load_labeled_images(spec.folder)
        problems.extend(str(p) for p in load_problems)
        for r in records:
            getter = (lambda b=r.image_bytes: b) if r.image_bytes is not None else r.path.read_bytes
            candidates.append((str(r.id), getter, r.grid_boxes, None))
    else:
        raise ValueError(f"unknown image set kind {spec.kind!r}")

    images: list[BenchImage] = []
    seen: dict[str, int] = {}
    for name, get_bytes, truth, seed in candidates:
        seen[name] = seen.get(name, 0) + 1
        image_id = name if seen[name] == 1 else f"{name}#{seen[name]}"
        try:
            images.append(_bench_image(image_id, get_bytes(), spec.max_side, truth, seed))
        except (ImageError, OSError) as exc:
            problems.append(f"{image_id}: {exc}")
    if not images:
        detail = f": {'; '.join(problems[:5])}" if problems else ""
        raise ValueError(f"the {spec.kind} image set has no usable image{detail}")
    return ImageSet(spec, images, problems)

