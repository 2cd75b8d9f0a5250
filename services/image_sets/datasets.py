"""Loaders of labelled nutrition-table images: the OpenFoodFacts hub layout and jsonl folders.

Two layouts are read into :class:`LabeledImage` records with pixel boxes
(:class:`services.core.boxes.Box`, continuous pixel-edge coordinates, like the generator's):

* the OpenFoodFacts ``nutrition-table-detection`` data set as published on the Hugging Face hub:
  parquet files whose rows hold ``image_id``, ``image`` (a struct with ``bytes`` and ``path``),
  ``width``, ``height``, ``meta`` and ``objects`` (a struct of lists: ``bbox`` as
  ``[y_min, x_min, y_max, x_max]`` normalised to 0..1, ``category_id``, ``category_name``);
  see :func:`load_openfoodfacts`;
* a folder of images with a ``labels.jsonl`` (one JSON object a line: ``file``, ``width``,
  ``height``, ``boxes`` as pixel ``[x1, y1, x2, y2]`` lists), the format
  :func:`services.image_sets.dataset_writer.write_dataset` writes; see :func:`load_labels_folder`.

Bad rows never crash a load: each is skipped and reported as a :class:`LoadProblem` (file, row or
line, reason), returned beside the good records and logged at WARNING. A load raises only when
the path itself does not exist. Names found in the data are never used as paths outside the
data set's folder (absolute paths, ``..`` and escaping symlinks are refused).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from services.core.boxes import LABEL, Box, pixels_to_grid

log = logging.getLogger(__name__)

LABELS_FILE = "labels.jsonl"
NORM_TOLERANCE = 1e-3  # normalised coordinates within this of 0..1 are clamped, not refused
OFF_REQUIRED_COLUMNS = ("image", "objects")
OFF_COLUMNS = ("image_id", "image", "width", "height", "meta", "objects")


@dataclass
class LoadProblem:
    """A skipped row: ``source`` file, ``row`` (0-based row of a parquet file, 1-based line of a
    ``labels.jsonl``; None when the whole file is at fault), ``reason``, and the row's ``id``
    when it has one."""

    source: str
    row: int | None
    reason: str
    id: str | None = None

    def __str__(self) -> str:
        where = self.source if self.row is None else f"{self.source}:{self.row}"
        return f"{where}{f' ({self.id})' if self.id else ''}: {self.reason}"


@dataclass
class LabeledImage:
    """One labelled image; the pixels are decoded on demand by :meth:`load_image`.

    ``boxes`` are pixel boxes on the ``width`` x ``height`` image; ``source`` and ``row`` say
    where the record came from, ``source_row`` holds the row's other fields (no image bytes).
    """

    id: str
    width: int
    height: int
    boxes: list[Box]
    source: str
    row: int | None
    source_row: dict[str, Any] = field(default_factory=dict, repr=False)
    image_bytes: bytes | None = field(default=None, repr=False)
    path: Path | None = None

    def load_image(self) -> Image.Image:
        """Decode the image (RGB)."""
        if self.image_bytes is not None:
            im = Image.open(io.BytesIO(self.image_bytes))
        elif self.path is not None:
            im = Image.open(self.path)
        else:
            raise ValueError(f"record {self.id} has no image")
        with im:
            return im.convert("RGB")

    @property
    def grid_boxes(self) -> list[Box]:
        """The boxes on the model's 0..1000 grid."""
        return [pixels_to_grid(b, self.width, self.height) for b in self.boxes]


@dataclass
class LoadResult:
    """Good records and the problems met; unpacks as ``records, problems = load_...(...)``."""

    records: list[LabeledImage] = field(default_factory=list)
    problems: list[LoadProblem] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.records, self.problems))

    def __len__(self) -> int:
        return len(self.records)


class _BadRow(Exception):
    """A row to skip, with the reason as message."""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def safe_join(root: str | os.PathLike[str], name: object) -> Path | None:
    """``root/name`` resolved, or None when ``name`` is not a plain relative path inside ``root``.

    Refuses non-strings, empty names, NUL bytes, absolute paths (POSIX or Windows drive), any
    ``..`` part (with ``/`` or ``\\`` separators) and symlinks resolving outside ``root``.
    """
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        return None
    norm = name.replace("\\", "/")
    rel = PurePosixPath(norm)
    if rel.is_absolute() or re.match(r"^[A-Za-z]:", norm) or ".." in rel.parts:
        return None
    base = Path(root).resolve()
    full = (base / rel).resolve()
    if full == base or not full.is_relative_to(base):
        return None
    return full


def _open_image(data: bytes | None, path: Path | None, verify: bool) -> tuple[int, int]:
    """Size of an encoded image; decodes it fully when ``verify``. Raises _BadRow."""
    try:
        src: Any = io.BytesIO(data) if data is not None else path
        with Image.open(src) as im:
            size = im.size
            if verify:
                im.load()
    except FileNotFoundError as e:
        raise _BadRow(f"missing image file {path}") from e
    except Exception as e:  # any decoder error means a bad row
        raise _BadRow(f"undecodable image: {type(e).__name__}: {e}") from e
    if size[0] <= 0 or size[1] <= 0:
        raise _BadRow(f"empty image {size[0]}x{size[1]}")
    return size


def _as_int(v: Any, what: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or int(v) != v or v <= 0:
        raise _BadRow(f"bad {what}: {v!r}")
    return int(v)


def _check_size(declared: tuple[int | None, int | None], actual: tuple[int, int]) -> None:
    w, h = declared
    if (w is not None and w != actual[0]) or (h is not None and h != actual[1]):
        raise _BadRow(f"size mismatch: labels say {w}x{h}, image is {actual[0]}x{actual[1]}")


def _numbers(v: Any, n: int, what: str) -> list[float]:
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise _BadRow(f"{what} is not a list of {n} numbers: {v!r}")
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise _BadRow(f"{what} is not a list of {n} finite numbers: {v!r}")
        out.append(float(x))
    return out


def _report(result: LoadResult, problem: LoadProblem) -> None:
    result.problems.append(problem)
    log.warning("skipped %s", problem)


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    if hasattr(v, "tolist"):  # numpy arrays from pandas
        v = v.tolist()
    return list(v)


# --------------------------------------------------------------------------------------------
# OpenFoodFacts parquet layout
# --------------------------------------------------------------------------------------------


def _off_boxes(objects: Any, width: int, height: int,
               categories: Sequence[str] | None) -> tuple[list[Box], list[str]]:
    """Pixel boxes of the wanted categories from an ``objects`` struct (or a list of objects)."""
    if objects is None:
        raise _BadRow("missing objects")
    if isinstance(objects, dict):
        bboxes = _as_list(objects.get("bbox"))
        names = _as_list(objects.get("category_name"))
        if objects.get("bbox") is None:
            raise _BadRow("objects has no bbox")
    elif isinstance(objects, (list, tuple)):  # a list of {"bbox": [...], "category_name": ...}
        if not all(isinstance(o, dict) for o in objects):
            raise _BadRow("objects is not a struct or a list of structs")
        bboxes = [o.get("bbox") for o in objects]
        names = [o.get("category_name") for o in objects]
        if all(n is None for n in names):
            names = []
    else:
        raise _BadRow(f"objects has an unexpected type {type(objects).__name__}")
    if names and len(names) != len(bboxes):
        raise _BadRow(f"objects has {len(bboxes)} boxes but {len(names)} category names")
    boxes: list[Box] = []
    kept: list[str] = []
    for i, bb in enumerate(bboxes):
        name = names[i] if names else None
        if categories is not None and name is not None and name not in categories:
            continue
        y1, x1, y2, x2 = _numbers(_as_list(bb) if bb is not None else bb, 4, f"box {i}")
        if any(v < -NORM_TOLERANCE or v > 1 + NORM_TOLERANCE for v in (y1, x1, y2, x2)):
            raise _BadRow(f"box {i} out of range 0..1: {[y1, x1, y2, x2]}")
        y1, x1, y2, x2 = (min(1.0, max(0.0, v)) for v in (y1, x1, y2, x2))
        if y1 > y2 or x1 > x2:
            raise _BadRow(f"box {i} inverted (y_min, x_min, y_max, x_max): {[y1, x1, y2, x2]}")
        if y1 == y2 or x1 == x2:
            raise _BadRow(f"box {i} is empty: {[y1, x1, y2, x2]}")
        boxes.append(Box(x1 * width, y1 * height, x2 * width, y2 * height))
        kept.append(name if name is not None else LABEL)
    return boxes, kept


def _off_row(row: dict[str, Any], file: Path, index: int, root: Path,
             categories: Sequence[str] | None, verify: bool) -> LabeledImage:
    rid = row.get("image_id")
    rid = str(rid) if rid not in (None, "") else f"{file.stem}:{index}"
    image = row.get("image")
    data: bytes | None = None
    path: Path | None = None
    img_path_name: str | None = None
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    elif isinstance(image, dict):
        if image.get("bytes") is not None:
            data = bytes(image["bytes"])
        img_path_name = image.get("path")
        if data is None:
            if not img_path_name:
                raise _BadRow("missing image (no bytes and no path)")
            path = safe_join(root, img_path_name)
            if path is None:
                raise _BadRow(f"image path {img_path_name!r} is not inside the data set folder")
            if not path.is_file():
                raise _BadRow(f"missing image file {img_path_name!r}")
    elif image is None:
        raise _BadRow("missing image")
    else:
        raise _BadRow(f"image has an unexpected type {type(image).__name__}")
    if data is not None and not data:
        raise _BadRow("missing image (empty bytes)")
    size = _open_image(data, path, verify)
    _check_size((_as_int(row.get("width"), "width"), _as_int(row.get("height"), "height")), size)
    boxes, kept = _off_boxes(row.get("objects"), size[0], size[1], categories)
    meta = {k: v for k, v in row.items() if k != "image"}
    meta["image_path"] = img_path_name
    meta["categories"] = kept
    return LabeledImage(id=rid, width=size[0], height=size[1], boxes=boxes, source=str(file),
                        row=index, source_row=meta, image_bytes=data, path=path)


def load_openfoodfacts(
    path: str | os.PathLike[str],
    *,
    categories: Sequence[str] | None = (LABEL,),
    verify_images: bool = True,
    image_root: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
) -> LoadResult:
    """Load one parquet file, or every ``*.parquet`` under a folder, in the OpenFoodFacts layout.

    Keeps boxes whose ``category_name`` is in ``categories`` (all boxes when None; boxes with no
    name are kept); a row with no such box is a valid negative. Images stay encoded in memory
    and are decoded on demand; ``verify_images`` decodes each once while loading so that
    truncated files are caught here. Image ``path`` fields are only used when a row has no
    bytes, relative to ``image_root`` (default: the folder given, or the file's folder), and
    never outside it. Bad rows and unreadable files become problems.
    """
    import pyarrow.parquet as pq  # imported here: a heavy import the folder loader does not need

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    root = Path(image_root) if image_root is not None else p if p.is_dir() else p.parent
    files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
    result = LoadResult()
    if not files:
        _report(result, LoadProblem(str(p), None, "no parquet files found"))
    seen: dict[str, str] = {}
    for f in files:
        try:
            pf = pq.ParquetFile(f)
            names = set(pf.schema_arrow.names)
        except Exception as e:  # noqa: BLE001 - any reader error
            _report(result, LoadProblem(str(f), None, f"unreadable parquet file: {e}"))
            continue
        missing = [c for c in OFF_REQUIRED_COLUMNS if c not in names]
        if missing:
            _report(result, LoadProblem(str(f), None, f"missing columns {missing}"))
            continue
        columns = [c for c in OFF_COLUMNS if c in names]
        index = 0
        try:
            for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
                for row in batch.to_pylist():
                    try:
                        rec = _off_row(row, f, index, root, categories, verify_images)
                        if rec.id in seen:
                            raise _BadRow(f"duplicate image_id (first in {seen[rec.id]})")
                        seen[rec.id] = f"{f}:{index}"
                        result.records.append(rec)
                    except _BadRow as e:
                        _report(result, LoadProblem(str(f), index, str(e), _row_id(row)))
                    except Exception as e:  # noqa: BLE001 - never crash a load on one row
                        _report(result, LoadProblem(str(f), index,
                                                    f"unexpected error: {e!r}", _row_id(row)))
                    index += 1
        except Exception as e:  # noqa: BLE001 - a corrupt page: keep what was read
            _report(result, LoadProblem(str(f), index, f"unreadable from this row on: {e}"))
    log.info("loaded %d images from %d parquet file(s), %d problem(s)",
             len(result.records), len(files), len(result.problems))
    return result


def _row_id(row: Any) -> str | None:
    if isinstance(row, dict) and row.get("image_id") not in (None, ""):
        return str(row["image_id"])
    return None


# --------------------------------------------------------------------------------------------
# Folder + labels.jsonl layout
# --------------------------------------------------------------------------------------------


def _pixel_box(v: Any, i: int, width: int, height: int) -> Box:
    x1, y1, x2, y2 = _numbers(v, 4, f"box {i}")
    if x1 > x2 or y1 > y2:
        raise _BadRow(f"box {i} inverted: {[x1, y1, x2, y2]}")
    if min(x1, y1) < 0 or x2 > width or y2 > height:
        raise _BadRow(f"box {i} out of range of the {width}x{height} image: {[x1, y1, x2, y2]}")
    if x1 == x2 or y1 == y2:
        raise _BadRow(f"box {i} is empty: {[x1, y1, x2, y2]}")
    return Box(x1, y1, x2, y2)


def load_labels_folder(
    folder: str | os.PathLike[str],
    *,
    labels_file: str = LABELS_FILE,
    verify_images: bool = True,
) -> LoadResult:
    """Load a folder of images described by ``labels.jsonl`` (pixel boxes, one image a line).

    Each line needs ``file`` (relative to the folder) and ``boxes`` (a list, empty for an image
    without table); ``width``/``height``, when given, must match the image. Extra keys are kept
    in ``source_row``. Blank lines are ignored; bad lines become problems.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    labels = safe_join(root, labels_file)
    result = LoadResult()
    if labels is None or not labels.is_file():
        _report(result, LoadProblem(str(root / labels_file), None, "labels file not found"))
        return result
    seen: dict[str, int] = {}
    with labels.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            rid: str | None = None
            try:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise _BadRow(f"bad JSON: {e}") from e
                if not isinstance(rec, dict):
                    raise _BadRow("line is not a JSON object")
                name = rec.get("file")
                rid = name if isinstance(name, str) else None
                if not isinstance(name, str) or not name:
                    raise _BadRow("missing file name")
                img_path = safe_join(root, name)
                if img_path is None:
                    raise _BadRow(f"file name {name!r} is not inside the data set folder")
                if name in seen:
                    raise _BadRow(f"duplicate entry (first at line {seen[name]})")
                if not img_path.is_file():
                    raise _BadRow(f"missing image file {name!r}")
                size = _open_image(None, img_path, verify_images)
                _check_size((_as_int(rec.get("width"), "width"),
                             _as_int(rec.get("height"), "height")), size)
                raw_boxes = rec.get("boxes")
                if not isinstance(raw_boxes, list):
                    raise _BadRow("boxes is missing or not a list")
                boxes = [_pixel_box(b, i, size[0], size[1]) for i, b in enumerate(raw_boxes)]
                seen[name] = lineno
                result.records.append(LabeledImage(
                    id=name, width=size[0], height=size[1], boxes=boxes, source=str(labels),
                    row=lineno, source_row=rec, path=img_path))
            except _BadRow as e:
                _report(result, LoadProblem(str(labels), lineno, str(e), rid))
            except Exception as e:  # noqa: BLE001 - never crash a load on one line
                _report(result, LoadProblem(str(labels), lineno, f"unexpected error: {e!r}", rid))
    log.info("loaded %d images from %s, %d problem(s)", len(result.records), labels,
             len(result.problems))
    return result


def load_labeled_images(path: str | os.PathLike[str], **kwargs: Any) -> LoadResult:
    """Load either layout: a folder with ``labels.jsonl``, or parquet file(s) otherwise."""
    p = Path(path)
    if p.is_dir() and (p / LABELS_FILE).is_file():
        return load_labels_folder(p, **kwargs)
    return load_openfoodfacts(p, **kwargs)
