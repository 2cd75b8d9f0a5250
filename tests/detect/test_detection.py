"""Tests of services.detect.detection against the real embedded Triton server (tests/conftest.py).

The server serves a tiny random-weight model: its answers are gibberish, so a real request gives
the "no box" result, which is what these tests assert for it. The box path (parsed boxes, IoU
between versions and with the ground truth) is exercised deterministically with answers written
here by ``services.core.boxes.format_answer``, through the same functions the batch uses.

Faults are caused for real: bytes that are no image, a truncated PNG, a version the server does
not have, a server stopped in the middle of a batch, a closed port. Nothing is mocked.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from PIL import Image

from services.core.boxes import Box, format_answer, grid_to_pixels, iou
from services.detect.detection import (
    BatchResult,
    DetectionOptions,
    ImageInput,
    ImageResult,
    Progress,
    batch_to_dict,
    batch_to_json,
    compare_boxes,
    detect_image,
    download_name,
    run_batch,
    sample_inputs,
    set_iou,
    version_result_from_text,
)
from services.core.images import load_image
from services.image_sets.samples import list_samples
from services.client.triton_client import TritonClient

pytestmark = pytest.mark.timeout(180)

FAST = dict(max_tokens=4)  # the tiny model on CPU: a few tokens keep each request well under a second


@pytest.fixture(scope="module")
def client(triton_server):
    with TritonClient(triton_server.http_url, timeout_s=60) as c:
        yield c


@pytest.fixture(scope="module")
def portrait() -> ImageInput:
    return sample_inputs(["us_portrait"])[0]


def truncated_png(data: bytes) -> bytes:
    return data[: len(data) // 2]


# --------------------------------------------------------------------------- real server


def test_batch_over_both_versions_gives_no_box_results_with_timings(client, portrait, label_image_bytes):
    seen: list[Progress] = []
    upload = ImageInput(name="label.png", data=label_image_bytes)
    batch = run_batch(client, [portrait, upload], DetectionOptions(versions=("1", "2"), **FAST), progress=seen.append)

    assert [r.name for r in batch.images] == ["us_portrait.jpg", "label.png"]
    assert batch.errors == 0
    assert batch.server_url == client.url and batch.model == "qwen"
    for r in batch.images:
        assert r.ok and r.image is not None
        assert list(r.versions) == ["1", "2"]
        for v in r.versions.values():
            assert v.ok, v.error
            assert v.text is not None and v.latency_ms and v.latency_ms > 0
            assert 1 <= v.num_output_tokens <= 4
            assert v.ttft_ms is None and not v.stream  # not streamed: no time to first token
            # the random-weight model writes gibberish: no box, said plainly
            assert v.no_box and v.boxes == []
            assert "no box found in the answer" in v.notes
        # neither version found a box: nothing to compare between them
        assert r.versions_iou is not None and r.versions_iou.mean_iou is None
    sample, upload_result = batch.images
    # the sample's truth holds one table; an answer without a box matches none of it
    assert sample.truth and all(v.truth_iou == 0.0 for v in sample.versions.values())
    assert upload_result.truth is None and all(v.truth_iou is None for v in upload_result.versions.values())
    # progress: one step per image and version, in order, ending at 1.0
    assert [p.done for p in seen] == [1, 2, 3, 4] and {p.total for p in seen} == {4}
    assert [p.image_index for p in seen] == [0, 0, 1, 1]
    assert seen[-1].fraction == 1.0 and "fp8 (v2)" in seen[-1].message


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_streaming_measures_time_to_first_token(triton_server, portrait, protocol):
    with TritonClient(triton_server.url(protocol), protocol=protocol, timeout_s=60) as c:
        r = detect_image(c, portrait, DetectionOptions(versions=("2",), stream=True, **FAST))
    v = r.versions["2"]
    assert v.ok, v.error
    assert v.stream and v.ttft_ms is not None
    assert 0 < v.ttft_ms <= v.latency_ms


def test_bad_images_are_errors_of_their_own_and_the_batch_goes_on(client, portrait, label_image_bytes):
    inputs = [
        ImageInput(name="notes.png", data=b"shopping list: oats, milk\n" * 20),
        portrait,
        ImageInput(name="cut.png", data=truncated_png(label_image_bytes)),
        ImageInput(name="empty.jpg", data=b""),
    ]
    seen: list[Progress] = []
    batch = run_batch(client, inputs, DetectionOptions(versions=("1",), **FAST), progress=seen.append)

    text, ok, cut, empty = batch.images
    assert text.error == "'notes.png': not an image (it looks like a text file)"
    assert "truncated" in cut.error and cut.error.startswith("'cut.png'")
    assert empty.error == "'empty.jpg': empty file (0 bytes)"
    for bad in (text, cut, empty):
        assert bad.image is None and bad.versions == {}
    assert ok.ok and ok.versions["1"].ok  # the good image between them still ran
    assert batch.errors == 3
    assert [p.done for p in seen] == [1, 2, 3, 4]


def test_a_version_the_server_lacks_fails_alone(client, portrait):
    r = detect_image(client, portrait, DetectionOptions(versions=("1", "7"), **FAST))
    assert r.versions["1"].ok
    bad = r.versions["7"]
    assert not bad.ok and bad.error_type == "VersionNotReady"
    assert bad.error.startswith("Version 7 of model 'qwen' is not loaded and ready")
    assert bad.label == "version 7"
    assert r.versions_iou is None  # only one version answered


def test_a_server_stopped_mid_batch_fails_the_rest_with_the_clients_message(own_triton_server, portrait,
                                                                         label_image_bytes):
    client = TritonClient(own_triton_server.http_url, timeout_s=30)
    inputs = [portrait, ImageInput(name="label.png", data=label_image_bytes),
              ImageInput(name="broken.gif", data=b"GIF89a" + b"\x00" * 5)]

    def stop_after_first_image(p: Progress) -> None:
        if p.done == 2:  # both versions of the first image have answered: the server goes away for real
            own_triton_server.stop()

    batch = run_batch(client, inputs, DetectionOptions(**FAST), progress=stop_after_first_image)
    first, second, broken = batch.images
    assert all(v.ok for v in first.versions.values())
    for v in second.versions.values():
        assert v.error_type == "ServerUnreachable"
        assert v.error.startswith(f"The Triton server at {client.url} is not reachable")
    assert broken.error is not None and broken.error.startswith("'broken.gif'")
    assert batch.errors == 3
    client.close()


def test_json_export_of_a_real_batch(client, portrait, label_image_bytes):
    batch = run_batch(client, [portrait, ImageInput(name="x.txt", data=b"hello")],
                      DetectionOptions(versions=("1", "2"), stream=True, **FAST))
    data = json.loads(batch_to_json(batch))
    assert data["schema"] == "qwen-detect-batch/1"
    assert data["options"] == {"versions": ["1", "2"], "max_tokens": 4, "stream": True, "max_side": 1024,
                               "temperature": 0.0, "prompt": None}
    assert data["server"] == {"url": client.url, "model": "qwen"}
    sample, bad = data["images"]
    assert sample["image"]["original_size"] == [768, 1024]
    assert sample["ground_truth"][0]["grid"] == [round(v, 2) for v in portrait.truth[0].as_tuple()]
    for key, precision in (("1", "bf16"), ("2", "fp8")):
        v = sample["versions"][key]
        assert v["precision"] == precision and v["error"] is None and v["no_box"] is True
        assert v["answer"] == batch.images[0].versions[key].text
        assert v["ttft_ms"] is not None and v["latency_ms"] >= v["ttft_ms"]
        assert v["truth_iou"] == 0.0
    assert sample["versions_iou"]["mean_iou"] is None
    assert bad["error"] == "'x.txt': not an image (it looks like a text file)" and bad["versions"] == {}


# --------------------------------------------------------------------------- the box path, with written answers


def loaded(sample_name: str = "two_tables", max_side: int = 1024):
    sample = next(s for s in list_samples() if s.name == sample_name)
    item = sample_inputs([sample_name])[0]
    return sample, item, load_image(item.data, max_side=max_side, name=item.name)


def test_a_right_answer_gives_iou_one_with_the_truth_and_pixels_on_the_original_image():
    sample, item, image = loaded("two_tables", max_side=256)  # sent shrunk: boxes still map to the original
    assert image.shrunk
    r = ImageResult(index=0, name=item.name, source="sample", image=image, truth=item.truth)
    r.versions["1"] = version_result_from_text("1", format_answer(item.truth), image)
    set_iou(r)
    v = r.versions["1"]
    assert len(v.boxes) == 2 and all(b.label == "nutrition-table" for b in v.boxes)
    assert v.truth_iou == pytest.approx(1.0)
    for b, truth_px in zip(v.boxes, sample.boxes):  # pixels of the 1024x768 original, not of the 256 px image sent
        assert b.pixels.as_tuple() == pytest.approx(truth_px.as_tuple(), abs=1.1)
    assert r.truth_pixels[0].as_tuple() == pytest.approx(sample.boxes[0].as_tuple(), abs=1.1)


def test_iou_between_versions_and_with_truth_from_written_answers():
    _, item, image = loaded("us_portrait")
    truth = item.truth[0]
    shifted = Box(truth.x1 + 50, truth.y1, truth.x2 + 50, truth.y2)
    r = ImageResult(index=0, name=item.name, image=image, truth=item.truth)
    r.versions["1"] = version_result_from_text("1", format_answer([truth]), image)
    r.versions["2"] = version_result_from_text("2", f"nutrition table({int(shifted.x2)},{int(shifted.y2)}),"
                                                    f"({int(shifted.x1)},{int(shifted.y1)})", image)
    set_iou(r)
    fp8 = r.versions["2"]
    assert fp8.boxes[0].swapped and fp8.boxes[0].label == "nutrition-table"
    expected = iou(truth, shifted)
    assert 0.5 < expected < 1.0
    assert r.versions_iou.mean_iou == pytest.approx(expected)
    assert r.versions["1"].truth_iou == pytest.approx(1.0)
    assert fp8.truth_iou == pytest.approx(expected)


def test_an_extra_box_halves_the_mean_iou_and_a_missing_one_counts_zero():
    a, b = Box(100, 100, 400, 400), Box(600, 600, 900, 900)
    assert compare_boxes([a, b], [a]).mean_iou == pytest.approx(0.5)
    assert compare_boxes([a], [a, b]).matched == 1
    assert compare_boxes([], [a]).mean_iou == 0.0
    assert compare_boxes([], []).mean_iou is None


def test_no_table_and_no_box_is_not_scored():
    _, item, image = loaded("no_table")
    assert item.truth == []
    r = ImageResult(index=0, name=item.name, image=image, truth=item.truth)
    r.versions["1"] = version_result_from_text("1", "There is no nutrition table.", image)
    r.versions["2"] = version_result_from_text("2", format_answer([Box(10, 10, 200, 200)]), image)
    set_iou(r)
    assert r.versions["1"].no_box and r.versions["1"].truth_iou is None
    assert r.versions["2"].truth_iou == 0.0  # a box where there is no table
    assert r.versions_iou.mean_iou == 0.0


def test_export_of_written_boxes_round_trips():
    _, item, image = loaded("us_portrait")
    r = ImageResult(index=0, name=item.name, image=image, truth=item.truth)
    r.versions["1"] = version_result_from_text("1", format_answer(item.truth), image, latency_ms=12.5,
                                               num_output_tokens=20)
    set_iou(r)
    data = batch_to_dict(BatchResult(options=DetectionOptions(versions=("1",)), server_url="http://h:1",
                                     model="qwen", images=[r]))
    box = data["images"][0]["versions"]["1"]["boxes"][0]
    assert box["label"] == "nutrition-table" and box["flags"] == []
    assert box["grid"] == [round(v, 2) for v in item.truth[0].as_tuple()]
    px = grid_to_pixels(item.truth[0], 768, 1024)
    assert box["pixels"] == [round(v, 2) for v in px.as_tuple()]
    assert data["images"][0]["versions"]["1"]["truth_iou"] == 1.0


# --------------------------------------------------------------------------- small parts


def test_sample_inputs_carry_the_truth_on_the_grid_and_refuse_unknown_names():
    sample = next(s for s in list_samples() if s.name == "two_tables")
    (item,) = sample_inputs(["two_tables"])
    assert item.source == "sample" and item.name == "two_tables.jpg"
    assert item.truth == sample.grid_boxes and len(item.truth) == 2
    assert Image.open(io.BytesIO(item.data)).size == (sample.width, sample.height)
    with pytest.raises(KeyError, match="'nope'"):
        sample_inputs(["two_tables", "nope"])


@pytest.mark.parametrize("kwargs, message", [
    ({"versions": ()}, "at least one"),
    ({"versions": ("1", "1")}, "once"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_side": -5}, "maximum image side"),
])
def test_options_refuse_nonsense(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DetectionOptions(**kwargs)


@pytest.mark.parametrize("name, expected", [
    ("label photo.JPG", "label_photo-annotated.png"),
    ("../../etc/passwd", "passwd-annotated.png"),
    ("C:\\Users\\me\\snap.png", "snap-annotated.png"),
    (".hidden", "hidden-annotated.png"),
    ("", "image-annotated.png"),
    ("....", "image-annotated.png"),
])
def test_download_names_are_safe(name, expected):
    assert download_name(name, "-annotated.png") == expected


@hsettings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.one_of(st.none(), st.integers(min_value=0, max_value=500)))
def test_download_name_never_leaves_a_plain_file_name(name, index):
    out = download_name(name, ".png", index)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*\.png", out)
    assert not out.startswith(".") and "/" not in out and "\\" not in out
    assert len(out) <= 70


def test_the_export_names_each_variant_by_label_kind_url_and_model():
    from services.client.variants import parse_variant_spec, resolve_variants
    from services.detect.detection import ImageResult, VersionResult, image_to_dict, version_fields

    variants = resolve_variants([parse_variant_spec("version=1,label=bf16-triton"),
                                 parse_variant_spec("kind=openai,url=http://10.0.0.2:8000,model=qwen-fp8,"
                                                    "label=fp8-vllm")])
    described = {v.key: {f: v.describe()[f] for f in ("label", "kind", "url", "model", "version")} for v in variants}
    r = ImageResult(index=0, name="x.png", source="upload")
    r.versions = {v.key: VersionResult(version=v.key, text="") for v in variants}
    out = image_to_dict(r, described)["versions"]
    assert out["fp8-vllm"]["label"] == "fp8-vllm" and out["fp8-vllm"]["precision"] is None  # not known: not guessed
    assert out["fp8-vllm"]["variant"] == {"label": "fp8-vllm", "kind": "openai", "url": "http://10.0.0.2:8000",
                                          "model": "qwen-fp8", "version": None}
    assert out["bf16-triton"]["variant"]["kind"] == "triton" and out["bf16-triton"]["variant"]["version"] == "1"
    assert version_fields("2", {}) == {"label": "fp8 (v2)", "precision": "fp8"}  # Triton's versions, as before
