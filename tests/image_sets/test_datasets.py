"""Tests of the labelled-data loaders (OpenFoodFacts parquet layout and jsonl folders)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from services.core.boxes import Box
from services.image_sets.datasets import (
    LabeledImage,
    LoadProblem,
    LoadResult,
    load_labeled_images,
    load_labels_folder,
    load_openfoodfacts,
    safe_join,
)

# The schema the hub's parquet files have (datasets' Image feature is a struct of bytes + path).
OFF_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("meta", pa.struct([("barcode", pa.string()), ("off_image_id", pa.string()),
                        ("image_url", pa.string())])),
    ("objects", pa.struct([("bbox", pa.list_(pa.list_(pa.float32()))),
                           ("category_id", pa.list_(pa.int64())),
                           ("category_name", pa.list_(pa.string()))])),
])


def _jpeg(w: int, h: int, color: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="JPEG")
    return buf.getvalue()


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _off_row(image_id: str, image: Any, w: int | None, h: int | None,
             bboxes: list[list[float]] | None, names: list[str] | None = None) -> dict[str, Any]:
    names = names if names is not None else ["nutrition-table"] * len(bboxes or [])
    return {
        "image_id": image_id,
        "image": image,
        "width": w,
        "height": h,
        "meta": {"barcode": "3017620422003", "off_image_id": "1", "image_url": "https://x/1.jpg"},
        "objects": None if bboxes is None else {
            "bbox": bboxes, "category_id": [0] * len(bboxes), "category_name": names},
    }


def _write_off(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=OFF_SCHEMA), path)
    return path


@pytest.fixture()
def off_folder(tmp_path: Path) -> Path:
    """A data set folder: a parquet file with good and bad rows plus an image on disk."""
    root = tmp_path / "off"
    (root / "data").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "images" / "on_disk.png").write_bytes(_png(50, 40))
    (tmp_path / "secret.png").write_bytes(_png(50, 40))
    good = _jpeg(200, 100)
    buf = io.BytesIO()
    Image.effect_noise((200, 100), 60).convert("RGB").save(buf, format="JPEG")
    truncated = buf.getvalue()[: len(buf.getvalue()) // 2]  # header intact, scan data cut
    rows = [
        # 0: good, one box; bbox is [y_min, x_min, y_max, x_max] normalised
        _off_row("good-1", {"bytes": good, "path": "good-1.jpg"}, 200, 100,
                 [[0.1, 0.2, 0.5, 0.6]]),
        # 1: good, two tables and one box of another category (dropped)
        _off_row("good-2", {"bytes": _png(100, 80), "path": None}, 100, 80,
                 [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.2, 0.2, 0.3, 0.3]],
                 ["nutrition-table", "nutrition-table", "nutriscore"]),
        # 2: good negative (no table)
        _off_row("good-empty", {"bytes": good, "path": None}, 200, 100, []),
        # 3: no image at all
        _off_row("no-image", None, 200, 100, [[0.1, 0.1, 0.2, 0.2]]),
        # 4: bytes that are not an image
        _off_row("garbage", {"bytes": b"this is not a jpeg", "path": None}, 200, 100, []),
        # 5: truncated JPEG
        _off_row("truncated", {"bytes": truncated, "path": None}, 200, 100, []),
        # 6: box out of range
        _off_row("out-of-range", {"bytes": good, "path": None}, 200, 100,
                 [[0.1, 0.2, 1.5, 0.6]]),
        # 7: inverted box
        _off_row("inverted", {"bytes": good, "path": None}, 200, 100, [[0.5, 0.2, 0.1, 0.6]]),
        # 8: declared size does not match the image
        _off_row("size-mismatch", {"bytes": good, "path": None}, 300, 100,
                 [[0.1, 0.2, 0.5, 0.6]]),
        # 9: a box with three numbers
        _off_row("short-box", {"bytes": good, "path": None}, 200, 100, [[0.1, 0.2, 0.5]]),
        # 10: path only, escaping the data set folder
        _off_row("escape", {"bytes": None, "path": "../secret.png"}, 50, 40, []),
        # 11: path only, absolute
        _off_row("absolute", {"bytes": None, "path": str(tmp_path / "secret.png")}, 50, 40, []),
        # 12: path only, inside the folder: loaded from disk
        _off_row("on-disk", {"bytes": None, "path": "images/on_disk.png"}, 50, 40,
                 [[0.25, 0.5, 0.75, 1.0]]),
        # 13: missing objects
        _off_row("no-objects", {"bytes": good, "path": None}, 200, 100, None),
        # 14: coordinates a hair outside 0..1 are clamped, not refused
        _off_row("tolerance", {"bytes": good, "path": None}, 200, 100,
                 [[-0.0004, 0.2, 1.0004, 0.6]]),
        # 15: a duplicate image_id
        _off_row("good-1", {"bytes": good, "path": None}, 200, 100, []),
    ]
    _write_off(root / "data" / "train-00000-of-00001.parquet", rows)
    return root


def _reasons(problems: list[LoadProblem]) -> dict[int | None, str]:
    return {p.row: p.reason for p in problems}


def test_openfoodfacts_good_rows_and_problems(off_folder: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="services.image_sets.datasets"):
        result = load_openfoodfacts(off_folder)
    records, problems = result
    assert isinstance(result, LoadResult)
    assert [r.id for r in records] == ["good-1", "good-2", "good-empty", "on-disk", "tolerance"]
    by_id = {r.id: r for r in records}

    g1 = by_id["good-1"]
    assert (g1.width, g1.height) == (200, 100)
    # [y_min, x_min, y_max, x_max] = [0.1, 0.2, 0.5, 0.6] on 200 x 100
    assert len(g1.boxes) == 1 and g1.boxes[0].as_tuple() == pytest.approx((40, 10, 120, 50))
    assert g1.grid_boxes == [Box(200, 100, 600, 500)]
    assert g1.row == 0 and g1.source.endswith("train-00000-of-00001.parquet")
    assert g1.source_row["meta"]["barcode"] == "3017620422003"
    assert "image" not in g1.source_row
    im = g1.load_image()
    assert im.mode == "RGB" and im.size == (200, 100)

    assert by_id["good-2"].boxes == [Box(0, 0, 50, 40), Box(50, 40, 100, 80)]
    assert by_id["good-empty"].boxes == []
    on_disk = by_id["on-disk"]
    assert on_disk.path == (off_folder / "images" / "on_disk.png").resolve()
    assert on_disk.boxes == [Box(25, 10, 50, 30)] and on_disk.load_image().size == (50, 40)
    t = by_id["tolerance"].boxes[0]
    assert t.y1 == 0.0 and t.y2 == 100.0

    reasons = _reasons(problems)
    assert sorted(k for k in reasons if k is not None) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15]
    assert "missing image" in reasons[3]
    assert "undecodable" in reasons[4]
    assert "undecodable" in reasons[5]
    assert "out of range" in reasons[6]
    assert "inverted" in reasons[7]
    assert "size mismatch" in reasons[8] and "300x100" in reasons[8]
    assert "4 numbers" in reasons[9]
    assert "not inside the data set folder" in reasons[10]
    assert "not inside the data set folder" in reasons[11]
    assert "missing objects" in reasons[13]
    assert "duplicate" in reasons[15]
    assert {p.id for p in problems if p.row == 6} == {"out-of-range"}
    assert all(p.source.endswith(".parquet") for p in problems)
    # every problem was logged
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == len(problems)


def test_openfoodfacts_single_file_categories_and_lazy(off_folder: Path) -> None:
    f = off_folder / "data" / "train-00000-of-00001.parquet"
    records, problems = load_openfoodfacts(f, categories=None, verify_images=False)
    by_id = {r.id: r for r in records}
    # image paths are relative to the file's folder by default, to image_root when given
    assert "missing image file" in _reasons(problems)[12]
    rooted, _ = load_openfoodfacts(f, image_root=off_folder)
    assert "on-disk" in {r.id for r in rooted}
    assert len(by_id["good-2"].boxes) == 3  # the nutriscore box is kept with categories=None
    # without verification the truncated JPEG (header intact) passes the load...
    assert "truncated" in by_id
    # ...and fails only when decoded
    with pytest.raises(OSError):
        by_id["truncated"].load_image()


def test_openfoodfacts_bad_files(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    pq.write_table(pa.table({"image_id": ["a"], "width": [1]}), tmp_path / "no_cols.parquet")
    _write_off(tmp_path / "ok.parquet",
               [_off_row("fine", {"bytes": _jpeg(20, 10), "path": None}, 20, 10, [])])
    records, problems = load_openfoodfacts(tmp_path)
    assert [r.id for r in records] == ["fine"]
    reasons = {Path(p.source).name: p.reason for p in problems}
    assert "unreadable parquet" in reasons["broken.parquet"]
    assert "missing columns" in reasons["no_cols.parquet"]
    assert all(p.row is None for p in problems)
    empty = tmp_path / "empty"
    empty.mkdir()
    records, problems = load_openfoodfacts(empty)
    assert records == [] and "no parquet" in problems[0].reason
    with pytest.raises(FileNotFoundError):
        load_openfoodfacts(tmp_path / "nope")


def test_openfoodfacts_objects_as_list_of_structs(tmp_path: Path) -> None:
    """Some exports hold objects as a list of {bbox, category_name}; read that too."""
    rows = [{"image_id": "x", "image": {"bytes": _jpeg(100, 100), "path": None},
             "width": 100, "height": 100,
             "objects": [{"bbox": [0.1, 0.1, 0.2, 0.3], "category_name": "nutrition-table"},
                         {"bbox": [0.5, 0.5, 0.6, 0.6], "category_name": "other"}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "list.parquet")
    records, problems = load_openfoodfacts(tmp_path / "list.parquet")
    assert problems == []
    assert [b.as_tuple() for b in records[0].boxes] == [pytest.approx((10, 10, 30, 20))]


# ------------------------------------------------------------------ jsonl folder


@pytest.fixture()
def jsonl_folder(tmp_path: Path) -> Path:
    root = tmp_path / "set"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (120, 80), (1, 2, 3)).save(root / "a.jpg")
    Image.new("RGB", (60, 60), (1, 2, 3)).save(root / "sub" / "b.png")
    Image.new("RGB", (100, 100), (9, 9, 9)).save(root / "c.jpg")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (tmp_path / "outside.jpg").write_bytes((root / "a.jpg").read_bytes())
    lines = [
        json.dumps({"file": "a.jpg", "width": 120, "height": 80,
                    "boxes": [[10, 5, 60, 70], [70, 0, 120, 80]], "style": "us"}),  # 1 good
        json.dumps({"file": "sub/b.png", "width": 60, "height": 60, "boxes": []}),  # 2 good
        "",  # 3 blank: ignored
        json.dumps({"file": "missing.jpg", "width": 10, "height": 10, "boxes": []}),  # 4
        json.dumps({"file": "corrupt.jpg", "width": 10, "height": 10, "boxes": []}),  # 5
        json.dumps({"file": "c.jpg", "width": 100, "height": 100,
                    "boxes": [[10, 10, 120, 50]]}),  # 6 out of range
        '{"file": "c.jpg", "width": 100, ',  # 7 bad JSON
        json.dumps({"file": "../outside.jpg", "width": 120, "height": 80, "boxes": []}),  # 8
        json.dumps({"file": str(tmp_path / "outside.jpg"), "width": 120, "height": 80,
                    "boxes": []}),  # 9 absolute
        json.dumps({"file": "c.jpg", "width": 100, "height": 100,
                    "boxes": [[50, 10, 20, 50]]}),  # 10 inverted
        json.dumps({"file": "c.jpg", "width": 90, "height": 100, "boxes": []}),  # 11 size
        json.dumps({"file": "a.jpg", "width": 120, "height": 80, "boxes": []}),  # 12 duplicate
        json.dumps({"file": "c.jpg", "width": 100, "height": 100, "boxes": [[1, 2, 3]]}),  # 13
        json.dumps(["not", "an", "object"]),  # 14
        json.dumps({"file": "c.jpg", "boxes": [[0, 0, 100, 100]]}),  # 15 good, no size given
    ]
    (root / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_labels_folder_good_records_and_problems(jsonl_folder: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="services.image_sets.datasets"):
        records, problems = load_labels_folder(jsonl_folder)
    assert [(r.id, r.row) for r in records] == [("a.jpg", 1), ("sub/b.png", 2), ("c.jpg", 15)]
    a = records[0]
    assert a.boxes == [Box(10, 5, 60, 70), Box(70, 0, 120, 80)]
    assert (a.width, a.height) == (120, 80) and a.source_row["style"] == "us"
    assert a.path == (jsonl_folder / "a.jpg").resolve()
    assert a.load_image().size == (120, 80)
    assert records[1].boxes == [] and records[2].boxes == [Box(0, 0, 100, 100)]

    reasons = _reasons(problems)
    assert sorted(p.row for p in problems if p.row is not None) == list(range(4, 15))
    assert len(problems) == 11
    assert "missing image file" in reasons[4]
    assert "undecodable" in reasons[5]
    assert "out of range" in reasons[6]
    assert "bad JSON" in reasons[7]
    assert "not inside the data set folder" in reasons[8]
    assert "not inside the data set folder" in reasons[9]
    assert "inverted" in reasons[10]
    assert "size mismatch" in reasons[11]
    assert "duplicate" in reasons[12]
    assert "4 numbers" in reasons[13]
    assert "not a JSON object" in reasons[14]
    assert {p.id for p in problems if p.row == 4} == {"missing.jpg"}
    assert all(p.source.endswith("labels.jsonl") for p in problems)
    assert "labels.jsonl:4" in str(problems[0])
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == len(problems)


def test_labels_folder_missing_labels_and_folder(tmp_path: Path) -> None:
    records, problems = load_labels_folder(tmp_path)
    assert records == [] and "labels file not found" in problems[0].reason
    with pytest.raises(FileNotFoundError):
        load_labels_folder(tmp_path / "nope")


def test_load_labeled_images_detects_layout(jsonl_folder: Path, off_folder: Path) -> None:
    assert [r.id for r in load_labeled_images(jsonl_folder).records] == \
        ["a.jpg", "sub/b.png", "c.jpg"]
    assert len(load_labeled_images(off_folder).records) == 5


def test_safe_join(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir(exist_ok=True)
    (tmp_path / "x" / "link").symlink_to(outside)
    assert safe_join(tmp_path, "x/a.jpg") == (tmp_path / "x" / "a.jpg").resolve()
    for bad in ("../a.jpg", "x/../../a.jpg", "/etc/passwd", "..\\a.jpg", "C:\\a.jpg", "",
                ".", "x/link/a.jpg", "a\x00b", None, 3):
        assert safe_join(tmp_path, bad) is None, bad


def test_labeled_image_without_image() -> None:
    rec = LabeledImage(id="x", width=10, height=10, boxes=[], source="s", row=None)
    with pytest.raises(ValueError):
        rec.load_image()
