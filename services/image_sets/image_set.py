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

Recovery: a run stores no pixels. Its manifest records, per image it sent, the id, the sha256 of the
bytes sent, the seed of a generated image and the ground truth the benchmark knew. From these and the
run's image-set spec (``config["image_set"]``), :func:`run_images` recovers each image of every kind
for display and scoring: a generated label is regenerated from its seed, a bundled sample is read by
name, a dataset folder by id; uploaded images are not kept. :func:`truth_for_run` gives only the
ground truth (what the comparison scores accuracy against). Loading and recovery of every kind live
here, side by side, so a new kind is added in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from services.bench.store import RunInfo
from services.core.boxes import Box, boxes_of_value
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
    # False (default): every request pair sends an image the server has not seen in the run
    # (services.image_sets.unseen_images); True: the images repeat, on purpose (cache hits measured)
    reuse: bool = False


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
        return {"kind": s.kind, "seed": s.seed if s.kind == "generated" else None, "reuse": s.reuse,
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


# --------------------------------------------------------------------------- recovery of a stored run's images


@dataclass
class RunImage:
    """One image of a run, recovered for display and scoring.

    ``data``: the encoded image bytes (None when they cannot be recovered: uploads are not kept).
    ``truth``: ground-truth boxes on the 0..1000 grid (None: unknown; ``[]``: no table).
    ``source``: where it came from, in words.
    """

    image_id: str
    data: bytes | None
    truth: list[Box] | None
    source: str
    note: str | None = None


_TRAILING_INT = re.compile(r"(\d+)(?:\.[A-Za-z0-9]+)?$")


def _manifest_images(manifest: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The manifest's per-image records keyed by id (``image_set.images``, as the benchmark writes
    them: ``id``, ``sha256``, ``width``, ``height``, ``seed``, ``truth``)."""
    image_set = manifest.get("image_set") if isinstance(manifest, Mapping) else None
    imgs = image_set.get("images") if isinstance(image_set, Mapping) else None
    if isinstance(imgs, Mapping):
        return {str(k): v for k, v in imgs.items() if isinstance(v, Mapping)}
    out: dict[str, Mapping[str, Any]] = {}
    if isinstance(imgs, list):
        for rec in imgs:
            if isinstance(rec, Mapping):
                key = rec.get("id", rec.get("image_id", rec.get("name")))
                if key is not None:
                    out[str(key)] = rec
    return out


def _truth_of_record(rec: Mapping[str, Any]) -> list[Box] | None:
    for key in ("truth", "grid_boxes", "truth_grid", "ground_truth"):
        if key in rec:
            value = rec[key]
            if value is None:
                return None
            boxes = boxes_of_value(value)
            if boxes is not None:
                return boxes
    return None


def _generated_index(image_id: str, rec: Mapping[str, Any] | None) -> int | None:
    if rec is not None and isinstance(rec.get("index"), int):
        return int(rec["index"])
    m = _TRAILING_INT.search(image_id)
    return int(m.group(1)) if m else None


def _encode_png(img: Any) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _check_sent(item: RunImage, rec: Mapping[str, Any] | None, max_side: Any) -> None:
    """Note whether recovered bytes, prepared as the benchmark prepares them, are the bytes it
    sent (the manifest's ``sha256``); a mismatch is said, not hidden (another Pillow, fonts...)."""
    want = rec.get("sha256") if rec is not None else None
    if item.data is None or not isinstance(want, str):
        return
    import hashlib

    from services.core.images import load_image

    try:
        sent = load_image(item.data, max_side=int(max_side) if isinstance(max_side, int) else 1024).data
    except Exception as exc:  # noqa: BLE001
        item.note = f"the recovered image does not load: {exc}"
        return
    if hashlib.sha256(sent).hexdigest() != want:
        item.note = ("the recovered image differs from the one the run sent (another library or font "
                     "version?): its boxes are drawn on an approximation")


class _Recovery:
    """Recovers the pixels (and, where the manifest lacks it, the truth) of one run's images of one
    kind; the bundled samples and the dataset folder are read once."""

    def __init__(self, spec: Mapping[str, Any], with_data: bool) -> None:
        self.spec = spec
        self.with_data = with_data
        self._samples: dict[str, Any] | None = None
        self._folder_records: dict[str, Any] | None = None

    def recover(self, item: RunImage, rec: Mapping[str, Any] | None) -> None:
        kind = str(self.spec.get("kind") or "")
        if kind == "generated":
            self.generated(item, rec)
        elif kind == "samples":
            self.sample(item)
        elif kind == "folder" and self.spec.get("folder"):
            self.folder(item)
        elif kind == "uploaded":
            item.note = "uploaded images are not stored with the run"

    def generated(self, item: RunImage, rec: Mapping[str, Any] | None) -> None:
        """Regenerated from the seed recorded for it, else from the set's seed and its index."""
        from services.image_sets.generator import generate_label, sample_seed

        seed = rec.get("seed") if rec is not None and isinstance(rec.get("seed"), int) else None
        if seed is None:
            index = _generated_index(item.image_id, rec)
            if index is not None and isinstance(self.spec.get("seed"), int):
                seed = sample_seed(int(self.spec["seed"]), index)
        if seed is None:
            item.note = "its seed could not be recovered from the run's config"
            return
        sample = generate_label(int(seed))
        item.data = _encode_png(sample.image) if self.with_data else None
        if item.truth is None:
            item.truth = list(sample.grid_boxes)
        item.source = f"regenerated from seed {seed}"

    def sample(self, item: RunImage) -> None:
        """A bundled sample, by name."""
        from services.image_sets.samples import list_samples

        if self._samples is None:
            self._samples = {s.name: s for s in list_samples()}
        stem = item.image_id.split("#", 1)[0].rsplit(".", 1)[0]
        sample_image = self._samples.get(stem)
        if sample_image is None:
            item.note = "no bundled sample of that name"
            return
        item.data = sample_image.path.read_bytes() if self.with_data else None
        if item.truth is None:
            item.truth = sample_image.grid_boxes
        item.source = "bundled sample"

    def folder(self, item: RunImage) -> None:
        """An image of the run's dataset folder, by id."""
        from services.core.boxes import pixels_to_grid
        from services.image_sets.datasets import load_labeled_images

        if self._folder_records is None:
            self._folder_records = {r.id: r for r in load_labeled_images(str(self.spec["folder"])).records}
        r = self._folder_records.get(item.image_id.split("#", 1)[0])
        if r is None:
            item.note = "not in the dataset folder any more"
            return
        if self.with_data:
            item.data = r.image_bytes if r.image_bytes is not None else (
                r.path.read_bytes() if r.path is not None else None)
        if item.truth is None:
            item.truth = [pixels_to_grid(b, r.width, r.height) for b in r.boxes]
        item.source = "dataset folder"


def run_images(run: RunInfo, image_ids: Sequence[str], *, with_data: bool = True) -> dict[str, RunImage]:
    """Recover the images ``image_ids`` of ``run`` and their ground truth.

    The truth comes from the run manifest's per-image record (``image_set.images``: what the
    benchmark knew when it sent the image). The pixels: a generated image is regenerated from the
    seed recorded for it (``services.image_sets.generator.generate_label``; else from the set's seed
    and the image's index, ``sample_seed``), a bundled sample is read by name, a dataset folder by id;
    where the manifest has the sent bytes' sha256, the recovered image is checked against it
    (``RunImage.note`` says when it differs). Uploaded images are not stored: ``data`` is None.
    ``with_data=False`` only recovers what the truth needs.
    """
    spec = run.config.get("image_set") if isinstance(run.config.get("image_set"), Mapping) else {}
    max_side = spec.get("max_side", 1024)
    records = _manifest_images(run.manifest)
    recovery = _Recovery(spec, with_data)
    out: dict[str, RunImage] = {}
    for image_id in image_ids:
        rec = records.get(str(image_id))
        truth = _truth_of_record(rec) if rec is not None else None
        item = RunImage(str(image_id), None, truth, "run manifest" if truth is not None else "unknown")
        out[str(image_id)] = item
        if not with_data and truth is not None:
            continue
        try:
            recovery.recover(item, rec)
            if with_data:
                _check_sent(item, rec, max_side)
        except Exception as exc:  # noqa: BLE001 - one image that cannot be recovered is shown as such
            item.note = f"could not be recovered: {type(exc).__name__}: {exc}"
    return out


def truth_for_run(run: RunInfo, image_ids: Sequence[str]) -> dict[str, list[Box] | None]:
    """Ground-truth grid boxes of each image of ``run`` (None where unknown)."""
    return {k: v.truth for k, v in run_images(run, image_ids, with_data=False).items()}
