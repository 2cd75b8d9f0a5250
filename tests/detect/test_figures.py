"""Tests of services.detect.figures: the plotly figure and the annotated PNG.

Boxes come from answers written here (the tiny random-weight model of the test server answers
gibberish, so it draws no box): the figure code is the same whatever wrote the answer. One test
draws a real batch result from that server: ground truth plus two "no box" legend entries.
"""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from services.core.boxes import Box, format_answer, grid_to_pixels
from services.detect.detection import (
    DetectionOptions,
    ImageResult,
    run_batch,
    sample_inputs,
    set_iou,
    version_error,
    version_result_from_text,
)
from services.detect.figures import (
    TRUTH_COLOR,
    VERSION_COLORS,
    annotated_image,
    annotated_png,
    detection_figure,
    drawn_boxes,
    version_color,
)
from services.core.images import load_image
from services.client.errors import ServerUnreachable
from services.client.triton_client import TritonClient

pytestmark = pytest.mark.timeout(120)

BF16_BOX = Box(150, 200, 600, 700)  # grid
FP8_BOX = Box(180, 230, 640, 720)


def rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


def result_with_boxes(max_side: int = 1024, fp8_text: str | None = None) -> ImageResult:
    """us_portrait (768x1024) with its truth, a bf16 box and an fp8 box written as answers."""
    (item,) = sample_inputs(["us_portrait"])
    image = load_image(item.data, max_side=max_side, name=item.name)
    r = ImageResult(index=0, name=item.name, source="sample", image=image, truth=item.truth)
    r.versions["1"] = version_result_from_text("1", format_answer([BF16_BOX]), image)
    r.versions["2"] = version_result_from_text("2", fp8_text if fp8_text is not None else format_answer([FP8_BOX]),
                                               image)
    return set_iou(r)


def boxes_of(fig, series: str) -> list:
    return [t for t in fig.data if t.type == "scatter" and t.meta and t.meta["series"] == series
            and t.meta["pixels"] is not None]


def test_each_version_and_the_truth_get_their_own_colour():
    colors = {version_color("1"), version_color("2"), TRUTH_COLOR, version_color("3")}
    assert len(colors) == 4
    assert version_color("1") == VERSION_COLORS["1"] and version_color("2") == VERSION_COLORS["2"]


def test_figure_draws_every_box_in_original_pixels_with_labels_and_hover():
    r = result_with_boxes(max_side=512)  # shrunk for sending; the axes stay those of the original 768x1024
    fig = detection_figure(r)
    image = fig.data[0]
    assert image.type == "image" and image.source.startswith("data:image/jpeg;base64,")
    assert image.dx == pytest.approx(768 / 384) and image.dy == pytest.approx(1024 / 512)
    assert list(fig.layout.xaxis.range) == [0, 768] and list(fig.layout.yaxis.range) == [1024, 0]

    for series, grid, color, name in (("1", BF16_BOX, VERSION_COLORS["1"], "bf16 (v1): 1 box"),
                                      ("2", FP8_BOX, VERSION_COLORS["2"], "fp8 (v2): 1 box")):
        (trace,) = boxes_of(fig, series)
        px = grid_to_pixels(grid, 768, 1024)
        assert list(trace.x) == pytest.approx([px.x1, px.x2, px.x2, px.x1, px.x1])
        assert list(trace.y) == pytest.approx([px.y1, px.y1, px.y2, px.y2, px.y1])
        assert trace.line.color == color and trace.line.dash == "solid"
        assert trace.name == name and trace.showlegend
        assert f"({px.x1:.0f}, {px.y1:.0f}) – ({px.x2:.0f}, {px.y2:.0f})" in trace.hovertemplate
        assert f"grid 0..1000: ({grid.x1:.0f}, {grid.y1:.0f}) – ({grid.x2:.0f}, {grid.y2:.0f})" in trace.hovertemplate
    # the truth is drawn in each version's panel, in the legend once
    truths = boxes_of(fig, "truth")
    assert len(truths) == 2 and [t.showlegend for t in truths] == [True, False]
    assert all(t.line.dash == "dash" and t.line.color == TRUTH_COLOR and t.name == "ground truth: 1 box" for t in truths)
    captions = sorted(a.text for a in fig.layout.annotations)
    assert captions == ["bf16 (v1): 1 box", "bf16 (v1): nutrition-table", "fp8 (v2): 1 box",
                        "fp8 (v2): nutrition-table", "ground truth: nutrition-table", "ground truth: nutrition-table"]
    json.loads(fig.to_json())  # plotly accepts the whole figure


def test_boxes_the_versions_agree_on_are_both_visible_side_by_side():
    """The common case: fp8 answers bf16's box exactly. Each version has its own panel (titled with
    it), so neither outline nor caption can hide the other; the panels zoom together."""
    r = result_with_boxes(fp8_text=format_answer([BF16_BOX]))
    fig = detection_figure(r)
    (v1,), (v2,) = boxes_of(fig, "1"), boxes_of(fig, "2")
    assert list(v1.x) == list(v2.x) and list(v1.y) == list(v2.y)  # the same box...
    assert (v1.xaxis, v1.yaxis) == ("x", "y") and (v2.xaxis, v2.yaxis) == ("x2", "y2")  # ...in its own panel
    assert [t.type for t in fig.data].count("image") == 2
    titles = {a.text: a for a in fig.layout.annotations if a.text in ("bf16 (v1): 1 box", "fp8 (v2): 1 box")}
    assert titles["bf16 (v1): 1 box"].x < titles["fp8 (v2): 1 box"].x  # bf16 left, fp8 right
    assert fig.layout.xaxis2.matches == "x" and fig.layout.yaxis2.matches == "y"
    assert fig.layout.xaxis.domain[1] < fig.layout.xaxis2.domain[0]  # side by side, not overlaid
    # one version: one panel, as before
    r.versions.pop("2")
    single = detection_figure(r)
    assert [t.type for t in single.data].count("image") == 1 and "xaxis2" not in single.layout


def _panel_origin(canvas: Image.Image, photo: Image.Image, x0: int) -> tuple[int, int]:
    """Where ``photo`` was pasted in ``canvas`` at column ``x0``: its top, found by its bottom-right pixels."""
    w, h = photo.size
    probe = [photo.getpixel((w - 1 - i, h - 1 - i)) for i in range(6)]
    for top in range(canvas.height - h + 1):
        if [canvas.getpixel((x0 + w - 1 - i, top + h - 1 - i)) for i in range(6)] == probe:
            return x0, top
    raise AssertionError("the photo is not in the canvas")


def test_annotated_png_of_agreeing_versions_shows_both_boxes_side_by_side():
    r = result_with_boxes(max_side=512, fp8_text=format_answer([BF16_BOX]))
    img = Image.open(io.BytesIO(annotated_png(r))).convert("RGB")
    w, h = r.image.width, r.image.height
    gap = img.width - 2 * w
    assert 0 < gap < 40 and img.height > h
    px = grid_to_pixels(BF16_BOX, w, h)
    for i, version in enumerate(("1", "2")):
        ox, oy = _panel_origin(img, r.image.image.convert("RGB"), i * (w + gap))
        assert oy > 0  # a title band above each panel
        assert img.getpixel((ox + int(px.x1) + 1, oy + int((px.y1 + px.y2) / 2))) == rgb(VERSION_COLORS[version])
        title = [img.getpixel((x, y)) for x in range(ox, ox + w // 2) for y in range(oy)]
        assert rgb(VERSION_COLORS[version]) in title or any(  # antialiased text: a pixel near the colour
            sum(abs(a - b) for a, b in zip(p, rgb(VERSION_COLORS[version]))) < 60 for p in title)


def test_a_version_without_box_or_with_an_error_still_has_its_legend_entry():
    r = result_with_boxes(fp8_text="I cannot see a table here.")
    r.versions["3"] = version_error("3", ServerUnreachable("The Triton server at http://x:1 is not reachable"))
    fig = detection_figure(r)
    legend = [t.name for t in fig.data if t.type == "scatter" and t.showlegend]
    assert legend == ["ground truth: 1 box", "bf16 (v1): 1 box", "fp8 (v2): no box", "version 3: error"]
    assert boxes_of(fig, "2") == []


def test_several_boxes_share_one_legend_entry():
    (item,) = sample_inputs(["two_tables"])
    image = load_image(item.data)
    r = ImageResult(index=0, name=item.name, image=image, truth=item.truth)
    r.versions["1"] = version_result_from_text("1", format_answer(item.truth), image)
    fig = detection_figure(set_iou(r))
    traces = boxes_of(fig, "1")
    assert len(traces) == 2 and [t.showlegend for t in traces] == [True, False]
    assert traces[0].name == "bf16 (v1): 2 boxes" and traces[0].legendgroup == traces[1].legendgroup == "1"
    assert len(drawn_boxes(r)) == 4


def test_figure_of_a_real_answer_from_the_server(triton_server):
    with TritonClient(triton_server.http_url) as client:
        batch = run_batch(client, sample_inputs(["eu_square"]), DetectionOptions(max_tokens=3))
    fig = detection_figure(batch.images[0])
    assert [t.name for t in fig.data if t.type == "scatter" and t.showlegend] == ["ground truth: 1 box", "bf16 (v1): no box",
                                                          "fp8 (v2): no box"]
    assert len(boxes_of(fig, "truth")) == 2  # in each version's panel


def test_an_image_that_did_not_load_cannot_be_drawn():
    r = ImageResult(index=0, name="bad.png", error="'bad.png': empty file (0 bytes)")
    with pytest.raises(ValueError, match="empty file"):
        detection_figure(r)
    with pytest.raises(ValueError, match="empty file"):
        annotated_png(r)


def test_annotated_png_draws_each_box_in_its_colour_on_the_sent_image():
    r = result_with_boxes(max_side=512)
    r.versions.pop("2")  # one version: one panel, the legend band under it
    png = annotated_png(r)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    w, h = r.image.width, r.image.height
    assert img.width == w and img.height > h  # the legend band under the image
    img = img.convert("RGB")
    assert _panel_origin(img, r.image.image.convert("RGB"), 0) == (0, 0)  # no title band for one panel

    def left_edge_colour(grid: Box) -> tuple[int, int, int]:
        px = grid_to_pixels(grid, w, h)
        return img.getpixel((int(px.x1) + 1, int((px.y1 + px.y2) / 2)))

    assert left_edge_colour(BF16_BOX) == rgb(VERSION_COLORS["1"])
    truth = grid_to_pixels(r.truth[0], w, h)
    edge = [img.getpixel((int(truth.x1) + 1, y)) for y in range(int(truth.y1) + 20, int(truth.y2) - 20)]
    green = edge.count(rgb(TRUTH_COLOR))
    assert 0.3 * len(edge) < green < 0.8 * len(edge)  # dashed: about half the edge
    both = Image.open(io.BytesIO(annotated_png(result_with_boxes(max_side=512)))).convert("RGB")
    band = [both.getpixel((x, both.height - 5 - (both.height - h) // 4)) for x in range(both.width)]
    assert rgb(TRUTH_COLOR) in band and rgb(VERSION_COLORS["1"]) in band and rgb(VERSION_COLORS["2"]) in band


def test_annotated_image_leaves_the_photo_alone_where_nothing_is_drawn():
    r = result_with_boxes()
    drawn = annotated_image(r)
    original = r.image.image.convert("RGB")
    # a corner far from every box and caption, in each panel
    for x0 in (0, drawn.width - original.width):
        _panel_origin(drawn, original, x0)


def test_variants_get_distinct_colours_by_position_whatever_their_labels():
    from services.detect.figures import PALETTE, series_colors

    # labels whose character sums are equal: a hash of the label gave both the same colour
    assert sum(map(ord, "ab-vllm")) == sum(map(ord, "ba-vllm"))
    assert series_colors(["ab-vllm", "ba-vllm"]) == {"ab-vllm": PALETTE[0], "ba-vllm": PALETTE[1]}
    assert series_colors(["2", "bf16-vllm"]) == {"2": VERSION_COLORS["2"], "bf16-vllm": VERSION_COLORS["1"]}
    many = series_colors([f"v{n}" for n in range(len(PALETTE))])
    assert len(set(many.values())) == len(PALETTE)
    (item,) = sample_inputs(["us_portrait"])
    image = load_image(item.data, max_side=512, name=item.name)
    r = ImageResult(index=0, name=item.name, source="sample", image=image, truth=item.truth)
    for key, box in (("ab-vllm", BF16_BOX), ("ba-vllm", FP8_BOX)):
        r.versions[key] = version_result_from_text(key, format_answer([box]), image)
    fig = detection_figure(set_iou(r))
    colours = {s: {t.line.color for t in boxes_of(fig, s)} for s in ("ab-vllm", "ba-vllm")}
    assert colours == {"ab-vllm": {PALETTE[0]}, "ba-vllm": {PALETTE[1]}}
    assert version_color("ba-vllm", r.versions) == PALETTE[1]
