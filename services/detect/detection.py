"""The Detect page's logic: run a batch of label images over the chosen model versions.

No streamlit here: the page (``pages/1_Detect.py``) is a thin view over these functions.

For each image of a batch (:func:`run_batch`):

* the bytes are checked and prepared by :func:`services.core.images.load_image` (an ``ImageError`` is
  kept as that image's error, and the batch goes on);
* each chosen version (``"1"`` bf16, ``"2"`` fp8) is asked once through ``TritonClient.detect``; a
  ``TritonClientError`` is kept as that version's error for that image, and the batch goes on;
* the answer is parsed by :func:`services.core.boxes.parse_answer` on the original image size; an answer
  with no box is a result too (``VersionResult.no_box``), not an error;
* IoU between the versions' boxes, and with the ground truth when the image has one (the bundled
  samples), are derived from the parsed boxes (:func:`set_iou`).

A progress callback is told after each step (one step per image and version, and one per image
that could not be loaded), and :func:`batch_to_json` exports a batch as JSON.

The API takes bytes, never a path: an uploaded file name is a display name only
(:func:`download_name` makes a safe file name for downloads out of it).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from services.core import settings
from services.core.boxes import Box, ParsedBox, grid_to_pixels, match_boxes, parse_answer
from services.core.images import DEFAULT_MAX_SIDE, ImageError, LoadedImage, encode_base64, load_image
from services.image_sets.samples import SampleImage, list_samples
from services.core.versions import VERSION_LABELS, version_label  # noqa: F401 (re-exported for callers)
from services.client.errors import TritonClientError
from services.client.results import Completion, VersionState
from services.client.triton_client import TritonClient

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128
JSON_SCHEMA = "qwen-detect-batch/1"

ProgressCallback = Callable[["Progress"], None]


# --------------------------------------------------------------------------- inputs and options


@dataclass
class DetectionOptions:
    """What the user chose for a batch."""

    versions: tuple[str, ...] = ("1", "2")
    max_tokens: int = DEFAULT_MAX_TOKENS
    stream: bool = False
    max_side: int = DEFAULT_MAX_SIDE
    temperature: float = 0.0
    prompt: str | None = None  # None: the fine-tune's training prompt (services.core.prompt)

    def __post_init__(self) -> None:
        self.versions = tuple(str(v) for v in self.versions)
        if not self.versions:
            raise ValueError("choose at least one model version")
        if len(set(self.versions)) != len(self.versions):
            raise ValueError(f"each version may be chosen once, not {self.versions}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, not {self.max_tokens!r}")
        if isinstance(self.max_side, bool) or not isinstance(self.max_side, int) or self.max_side < 1:
            raise ValueError(f"the maximum image side must be a positive integer, not {self.max_side!r}")


@dataclass
class ImageInput:
    """One image of a batch: its bytes, a display name, and its ground truth when known.

    ``truth`` holds ground-truth boxes on the 0..1000 grid (``None``: unknown; ``[]``: the image
    is known to hold no table). ``source`` is ``"upload"`` or ``"sample"``.
    """

    name: str
    data: bytes
    truth: list[Box] | None = None
    source: str = "upload"


def sample_input(sample: SampleImage) -> ImageInput:
    """A bundled sample as a batch input, with its ground truth on the grid."""
    return ImageInput(name=sample.path.name, data=sample.path.read_bytes(), truth=sample.grid_boxes,
                      source="sample")


def sample_inputs(names: Sequence[str], samples: Sequence[SampleImage] | None = None) -> list[ImageInput]:
    """The bundled samples called ``names`` (``SampleImage.name``), in the given order.

    Raises ``KeyError`` naming a sample that is not bundled.
    """
    by_name = {s.name: s for s in (list_samples() if samples is None else samples)}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyError(f"no bundled sample called {', '.join(map(repr, missing))}")
    return [sample_input(by_name[n]) for n in names]


# --------------------------------------------------------------------------- results


@dataclass
class VersionResult:
    """One version's answer for one image (or the error it gave)."""

    version: str
    text: str | None = None
    boxes: list[ParsedBox] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    ttft_ms: float | None = None
    num_output_tokens: int | None = None
    num_input_tokens: int | None = None
    finish_reason: str | None = None
    stream: bool = False
    error: str | None = None
    error_type: str | None = None
    error_detail: str | None = None  # the server's raw words behind the error (shown in an expander)
    truth_iou: float | None = None  # set by set_iou when the image has ground truth

    @property
    def label(self) -> str:
        return version_label(self.version)

    @property
    def ok(self) -> bool:
        """The version answered (with or without a box)."""
        return self.error is None

    @property
    def no_box(self) -> bool:
        """The version answered, but no box could be read from the answer."""
        return self.ok and not self.boxes

    @property
    def grid_boxes(self) -> list[Box]:
        return [b.grid for b in self.boxes]


@dataclass
class IouSummary:
    """How two sets of boxes agree: one-to-one matches by IoU (``services.core.boxes.match_boxes``).

    ``mean_iou`` averages over every entry of the matching, so a box left unmatched on either
    side counts as 0: one box each gives their IoU; a box on one side only gives 0.0. ``None``
    when both sides are empty (nothing to compare).
    """

    pairs: list[tuple[int | None, int | None, float]]
    mean_iou: float | None

    @property
    def matched(self) -> int:
        return sum(1 for a, b, _ in self.pairs if a is not None and b is not None)


def compare_boxes(a: Sequence[Box | ParsedBox], b: Sequence[Box | ParsedBox]) -> IouSummary:
    """Match ``a`` to ``b`` one to one by IoU and summarize (see :class:`IouSummary`)."""
    pairs = match_boxes(a, b)
    mean = sum(v for _, _, v in pairs) / len(pairs) if pairs else None
    return IouSummary(pairs=pairs, mean_iou=mean)


@dataclass
class ImageResult:
    """Everything about one image of a batch."""

    index: int
    name: str
    source: str = "upload"
    image: LoadedImage | None = None
    error: str | None = None  # the image could not be used (ImageError message)
    truth: list[Box] | None = None  # ground truth on the 0..1000 grid, when known
    versions: dict[str, VersionResult] = field(default_factory=dict)
    versions_iou: IouSummary | None = None  # between the first two versions' boxes, both answered

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def truth_pixels(self) -> list[Box]:
        """The ground truth in pixels of the original image (empty when unknown or unloaded)."""
        if not self.truth or self.image is None:
            return []
        return [grid_to_pixels(b, self.image.original_width, self.image.original_height) for b in self.truth]


@dataclass
class BatchResult:
    """A batch: the options it ran with, the server, and one result per image in input order."""

    options: DetectionOptions
    server_url: str
    model: str
    images: list[ImageResult] = field(default_factory=list)
    started_at: str = ""
    duration_s: float = 0.0
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> label, kind, url, model, version

    @property
    def errors(self) -> int:
        """Images that failed to load plus version requests that failed."""
        return sum(1 for r in self.images if r.error) + sum(
            1 for r in self.images for v in r.versions.values() if v.error)


@dataclass
class Progress:
    """Where a batch is: ``done`` of ``total`` steps; ``message`` says what was just done."""

    done: int
    total: int
    message: str
    image_index: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


# --------------------------------------------------------------------------- building results


def version_result_from_text(version: str, text: str, image: LoadedImage, **timings: Any) -> VersionResult:
    """A version's result from the text of its answer (boxes parsed on the original image size).

    ``timings``: the other ``VersionResult`` fields (``latency_ms``, ``ttft_ms``,
    ``num_output_tokens``...).
    """
    parsed = parse_answer(text, image.original_width, image.original_height)
    notes = list(parsed.notes)
    return VersionResult(version=str(version), text=text, boxes=list(parsed.boxes), notes=notes, **timings)


def version_result_from_completion(completion: Completion, image: LoadedImage, version: str) -> VersionResult:
    """A version's result from the client's ``Completion``."""
    return version_result_from_text(
        version, completion.text, image,
        latency_ms=completion.latency_ms, ttft_ms=completion.ttft_ms,
        num_output_tokens=completion.num_output_tokens, num_input_tokens=completion.num_input_tokens,
        finish_reason=completion.finish_reason, stream=completion.stream)


def version_error(version: str, error: BaseException) -> VersionResult:
    """A version's result for a request that failed; the message is the client's own."""
    detail = None
    if isinstance(error, TritonClientError):
        message = str(error)
        detail = error.detail if error.detail and error.detail not in message else None
    else:  # not a server fault: say what it was, the batch goes on
        message = f"Unexpected error while asking {version_label(version)}: {type(error).__name__}: {error}"
    return VersionResult(version=str(version), error=message, error_type=type(error).__name__,
                         error_detail=detail)


def set_iou(result: ImageResult) -> ImageResult:
    """Fill in the IoU between the versions' boxes and each version's IoU with the ground truth.

    Versions IoU: between the first two versions that answered (``versions_iou`` is ``None`` when
    fewer than two answered; its ``mean_iou`` is ``None`` when neither found a box). Truth IoU: for each answered version of an image whose
    ground truth is known (``None`` when both the truth and the answer are empty: nothing to
    compare; the answer is then right).
    """
    answered = [v for v in result.versions.values() if v.ok]
    result.versions_iou = compare_boxes(answered[0].grid_boxes, answered[1].grid_boxes) \
        if len(answered) >= 2 else None
    for v in result.versions.values():
        v.truth_iou = None
        if v.ok and result.truth is not None:
            v.truth_iou = compare_boxes(v.grid_boxes, result.truth).mean_iou
    return result


def detect_image(client: TritonClient, item: ImageInput, options: DetectionOptions, index: int = 0,
                 on_step: Callable[[str, int], None] | None = None) -> ImageResult:
    """Load one image and ask each chosen version about it; errors are kept, never raised.

    ``on_step(message, steps)`` is called after each version (``steps`` 1), or once when the
    image could not be loaded (``steps``: the number of versions, none of which is asked).
    """
    result = ImageResult(index=index, name=item.name, source=item.source, truth=item.truth)
    try:
        result.image = load_image(item.data, max_side=options.max_side, name=item.name)
    except ImageError as exc:
        result.error = str(exc)
        if on_step:
            on_step(f"{item.name}: the image could not be used", len(options.versions))
        return result
    image_b64 = encode_base64(result.image)
    for version in options.versions:
        try:
            completion = client.detect(image_b64, prompt=options.prompt, version=version,
                                       max_tokens=options.max_tokens, temperature=options.temperature,
                                       stream=options.stream)
            result.versions[version] = version_result_from_completion(completion, result.image, version)
        except TritonClientError as exc:
            result.versions[version] = version_error(version, exc)
        except Exception as exc:  # noqa: BLE001 - one image's failure must not stop the batch
            log.exception("detection of %s with version %s failed", item.name, version)
            result.versions[version] = version_error(version, exc)
        if on_step:
            outcome = "failed" if result.versions[version].error else "answered"
            on_step(f"{item.name}: {version_label(version)} {outcome}", 1)
    return set_iou(result)


def _variants_of(client: Any) -> dict[str, dict[str, Any]]:
    """What each variant asked is (``services.client.variants.VariantClients``), for the export; {} for
    a plain client of Triton's versions."""
    variants = getattr(client, "variants", None)
    if not isinstance(variants, dict):
        return {}
    fields = ("label", "kind", "url", "model", "version")
    return {key: {f: v.describe().get(f) for f in fields} for key, v in variants.items()}


def run_batch(client: TritonClient, inputs: Sequence[ImageInput], options: DetectionOptions,
              progress: ProgressCallback | None = None) -> BatchResult:
    """Run every image over every chosen version, in order; one image's errors never stop the rest.

    ``progress`` is called after each step (:class:`Progress`; ``total`` is images x versions, an
    image that cannot be loaded counts all its steps at once). An exception it raises stops the
    batch (that is how a caller cancels).
    """
    batch = BatchResult(options=options, server_url=client.url, model=client.model,
                        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        variants=_variants_of(client))
    total = len(inputs) * len(options.versions)
    done = 0
    start = time.perf_counter()
    for index, item in enumerate(inputs):
        def on_step(message: str, steps: int, index: int = index) -> None:
            nonlocal done
            done += steps
            if progress:
                progress(Progress(done=done, total=total, message=message, image_index=index))

        batch.images.append(detect_image(client, item, options, index=index, on_step=on_step))
    batch.duration_s = time.perf_counter() - start
    return batch


# --------------------------------------------------------------------------- export


def _box_json(box: Box) -> list[float]:
    return [round(v, 2) for v in box.as_tuple()]


def _parsed_box_json(b: ParsedBox) -> dict[str, Any]:
    return {"label": b.label, "grid": _box_json(b.grid), "pixels": _box_json(b.pixels), "flags": list(b.flags)}


def _round(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)


def version_fields(version: str, variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Who answered, in an export: the label, and the precision where it is known (Triton's versions 1
    and 2 of the default set); for a variant its label, kind, URL, model (and Triton version)."""
    variant = variants.get(version)
    default = variant is None or (variant.get("kind") == "triton" and version.isdigit())
    return {"label": variant.get("label") if variant else version_label(version),
            "precision": VERSION_LABELS.get(version) if default else None,
            **({"variant": variant} if variant else {})}


def image_to_dict(r: ImageResult, variants: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One image's result as plain JSON data (``variants``: the batch's, see :func:`version_fields`)."""
    out: dict[str, Any] = {"index": r.index, "name": r.name, "source": r.source, "error": r.error}
    if r.image is not None:
        img = r.image
        out["image"] = {"format": img.format, "original_size": [img.original_width, img.original_height],
                        "sent_size": [img.width, img.height], "sent_format": img.sent_format, "notes": list(img.notes)}
    if r.truth is not None:
        pixels = r.truth_pixels  # empty when the image did not load
        out["ground_truth"] = [{"grid": _box_json(b), **({"pixels": _box_json(pixels[i])} if pixels else {})}
                               for i, b in enumerate(r.truth)]
    out["versions"] = {
        v: {
            "version": vr.version, **version_fields(vr.version, variants or {}), "error": vr.error,
            "error_type": vr.error_type, "error_detail": vr.error_detail, "answer": vr.text, "boxes": [_parsed_box_json(b) for b in vr.boxes],
            "no_box": vr.no_box, "notes": vr.notes, "latency_ms": _round(vr.latency_ms, 2),
            "ttft_ms": _round(vr.ttft_ms, 2), "num_output_tokens": vr.num_output_tokens,
            "num_input_tokens": vr.num_input_tokens, "finish_reason": vr.finish_reason, "stream": vr.stream,
            "truth_iou": _round(vr.truth_iou),
        }
        for v, vr in r.versions.items()
    }
    if r.versions_iou is not None:
        out["versions_iou"] = {"mean_iou": _round(r.versions_iou.mean_iou),
                               "pairs": [[a, b, _round(v)] for a, b, v in r.versions_iou.pairs]}
    return out


def batch_to_dict(batch: BatchResult) -> dict[str, Any]:
    """A batch as plain JSON data (no image bytes)."""
    o = batch.options
    return {
        "schema": JSON_SCHEMA,
        "started_at": batch.started_at,
        "duration_s": round(batch.duration_s, 3),
        "server": {"url": batch.server_url, "model": batch.model},
        "options": {"versions": list(o.versions), "max_tokens": o.max_tokens, "stream": o.stream,
                    "max_side": o.max_side, "temperature": o.temperature, "prompt": o.prompt},
        "images": [image_to_dict(r, batch.variants) for r in batch.images],
    }


def batch_to_json(batch: BatchResult, indent: int | None = 2) -> str:
    return json.dumps(batch_to_dict(batch), indent=indent, ensure_ascii=False)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def download_name(name: str, suffix: str, index: int | None = None) -> str:
    """A safe file name for a download made from a display name: ``label_photo-annotated.png``.

    Only letters, digits, ``.``, ``_`` and ``-`` are kept (no path separators, no leading dot);
    the extension of ``name`` is dropped; ``index`` (when given) keeps names of a batch apart.
    """
    stem = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem
    stem = _UNSAFE.sub("_", stem).strip("._-")[:60] or "image"
    prefix = f"{index + 1:02d}_" if index is not None else ""
    return f"{prefix}{stem}{suffix}"
