"""Tests of services.core.boxes: answer parsing, formatting round trips, IoU and matching."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core.boxes import (
    GRID,
    LABEL,
    Box,
    BoxParseError,
    ParsedAnswer,
    best_iou,
    canonical_label,
    format_answer,
    format_box,
    grid_to_pixels,
    iou,
    match_boxes,
    normalized,
    parse_answer,
    pixels_to_grid,
)

W, H = 2000, 1000  # a non-square image, so x and y scaling errors show


def only(answer: ParsedAnswer):
    assert len(answer.boxes) == 1, (answer.boxes, answer.notes)
    return answer.boxes[0]


# ------------------------------------------------------------------------------------------
# Hand-written shapes
# ------------------------------------------------------------------------------------------

TARGET = Box(273.0, 304.0, 713.0, 679.0)


@pytest.mark.parametrize(
    "text",
    [
        "<|object_ref_start|>nutrition-table<|object_ref_end|><|box_start|>(273,304),(713,679)<|box_end|>",
        "nutrition-table(273,304),(713,679)",
        "nutrition table(273,304,713,679)",
        "nutrition-table<box(273, 304),(713, 679)>",
        "nutrition-table[273,304],[713,679]",
        "nutrition-table[273, 304, 713, 679]",
        "nutrition-table[[273,304],[713,679]]",
        "Nutrition-Table ( 273 ,\n 304 ) ,\n\t( 713 , 679 )",
        "  \n nutrition-table\n(273,304),(713,679)\n\n",
        "<ref>nutrition-table</ref><box>(273,304),(713,679)</box>",
        '{"bbox_2d": [273, 304, 713, 679], "label": "nutrition-table"}',
        "The nutrition table is located at (273,304) to (713,679).",
        "nutrition_table: (273.0,304.0),(713.0,679.0)",
        "nutrition-table(+273,304),(713,679)",
    ],
)
def test_each_shape_gives_the_same_box(text: str) -> None:
    b = only(parse_answer(text, W, H))
    assert b.grid == TARGET
    assert b.pixels == Box(546.0, 304.0, 1426.0, 679.0)
    assert b.label == "nutrition-table"
    assert b.flags == ()


def test_special_tokens_keep_raw_label_and_span() -> None:
    text = (
        "<|object_ref_start|>Nutrition Table<|object_ref_end|>"
        "<|box_start|>(273,304),(713,679)<|box_end|>"
    )
    b = only(parse_answer(text, W, H))
    assert b.raw_label == "Nutrition Table"
    assert b.label == "nutrition-table"
    assert text[b.span[0] : b.span[1]] == b.text == "(273,304),(713,679)"


@pytest.mark.parametrize(
    "text, raw",
    [
        ("nutrition table(1,2),(3,4)", "nutrition table"),
        ("Nutrition-Table(1,2),(3,4)", "Nutrition-Table"),
        ("NUTRITION TABLE: [1,2,3,4]", "NUTRITION TABLE"),
        ("Here are the boxes:\n1. nutrition-table (1,2),(3,4)", "nutrition-table"),
    ],
)
def test_label_text_varies(text: str, raw: str) -> None:
    b = only(parse_answer(text, W, H))
    assert b.raw_label == raw
    assert b.label == "nutrition-table"


@pytest.mark.parametrize(
    "text", ["(1,2),(3,4)", "[1,2,3,4]", "<|box_start|>(1,2),(3,4)<|box_end|>", "<box(1, 2),(3, 4)>"]
)
def test_missing_label(text: str) -> None:
    b = only(parse_answer(text, W, H))
    assert b.grid == Box(1, 2, 3, 4)
    assert b.label is None and b.raw_label is None


def test_other_label_is_kept() -> None:
    b = only(parse_answer("barcode(1,2),(3,4)", W, H))
    assert b.label == "barcode"


def test_unit_floats_are_scaled() -> None:
    b = only(parse_answer("nutrition-table(0.273,0.304),(0.713,0.679)", W, H))
    assert b.normalized_input
    assert b.grid == TARGET
    assert b.pixels == Box(546.0, 304.0, 1426.0, 679.0)
    a = parse_answer("nutrition table[0.25, 0.5, 1.0, 1]", 400, 200)
    assert only(a).grid == Box(250.0, 500.0, 1000.0, 1000.0)
    assert only(a).pixels == Box(100.0, 100.0, 400.0, 200.0)
    assert any("0..1" in n for n in a.notes)


def test_small_integers_are_grid_values_not_unit() -> None:
    # All values <= 1 but no decimal point: grid integers (a tiny box), not 0..1.
    b = only(parse_answer("nutrition-table(0,0),(1,1)", W, H))
    assert not b.normalized_input
    assert b.grid == Box(0, 0, 1, 1)


def test_grid_decimals_above_one_are_grid_values() -> None:
    b = only(parse_answer("(273.5,304.25),(713,679)", W, H))
    assert not b.normalized_input
    assert b.grid == Box(273.5, 304.25, 713.0, 679.0)


def test_swapped_corners_are_normalized() -> None:
    a = parse_answer("nutrition-table(713,679),(273,304)", W, H)
    b = only(a)
    assert b.swapped and not b.clamped
    assert b.grid == TARGET
    assert any("swapped" in n for n in a.notes)
    # only one axis swapped
    b2 = only(parse_answer("(273,679),(713,304)", W, H))
    assert b2.swapped and b2.grid == TARGET


def test_out_of_range_is_clamped_with_a_note() -> None:
    a = parse_answer("nutrition-table(-20,304),(1200,679)", W, H)
    b = only(a)
    assert b.clamped
    assert b.grid == Box(0.0, 304.0, 1000.0, 679.0)
    assert b.pixels == Box(0.0, 304.0, 2000.0, 679.0)
    assert any("clamped" in n for n in a.notes)


def test_huge_number_is_clamped_not_an_error() -> None:
    b = only(parse_answer("(1,2),(" + "9" * 400 + ",4)", W, H))
    assert b.clamped and b.grid == Box(1, 2, 1000, 4)


def test_degenerate_boxes_are_dropped_with_a_note() -> None:
    a = parse_answer("nutrition-table(5,5),(5,10)", W, H)
    assert a.boxes == []
    assert any("zero area" in n and "dropped" in n for n in a.notes)
    a = parse_answer("nutrition-table(1100,10),(1200,20)", W, H)  # both x clamp to 1000
    assert a.boxes == []
    assert any("zero area after clamping" in n for n in a.notes)


def test_several_boxes_in_answer_order() -> None:
    text = (
        "nutrition-table(10,20),(30,40)\n"
        "Nutrition Table[500, 600, 700, 800]\n"
        "<|object_ref_start|>nutrition-table<|object_ref_end|><|box_start|>(0.1,0.2),(0.3,0.4)<|box_end|>"
    )
    a = parse_answer(text, W, H)
    assert a.grid_boxes == [Box(10, 20, 30, 40), Box(500, 600, 700, 800), Box(100, 200, 300, 400)]
    assert [b.label for b in a] == ["nutrition-table"] * 3
    assert [b.normalized_input for b in a] == [False, False, True]
    assert a.pixel_boxes[1] == Box(1000.0, 600.0, 1400.0, 800.0)


def test_boxes_after_one_label_share_it() -> None:
    a = parse_answer(
        "<|object_ref_start|>nutrition-table<|object_ref_end|>"
        "<|box_start|>(1,2),(3,4)<|box_end|><|box_start|>(5,6),(7,8)<|box_end|>",
        W,
        H,
    )
    assert [b.label for b in a] == ["nutrition-table", "nutrition-table"]
    a = parse_answer("nutrition table (1,2,3,4), (5,6,7,8) and (9,10,11,12)", W, H)
    assert [b.label for b in a] == ["nutrition-table"] * 3


def test_json_like_answer_labels() -> None:
    a = parse_answer(
        '[{"bbox_2d": [273, 304, 713, 679], "label": "nutrition table"},'
        ' {"bbox_2d": [1, 2, 3, 4], "label": "barcode"}]',
        W,
        H,
    )
    assert [b.label for b in a] == ["nutrition-table", "barcode"]
    assert a.grid_boxes == [TARGET, Box(1, 2, 3, 4)]


@pytest.mark.parametrize("text", ["", "   \n", "No nutrition table in this image.", "(1,2)"])
def test_no_box_is_an_empty_result(text: str) -> None:
    a = parse_answer(text, W, H)
    assert a.boxes == [] and len(a) == 0
    assert "no box found in the answer" in a.notes


def test_incomplete_coordinates_are_noted() -> None:
    # A cut answer (max_tokens too small) leaves a lone pair behind.
    a = parse_answer("nutrition-table(1,2),(3,4)nutrition-table(5,6),(7,", W, H)
    assert a.grid_boxes == [Box(1, 2, 3, 4)]
    a = parse_answer("(1,2),(3,4),(5,6)", W, H)
    assert a.grid_boxes == [Box(1, 2, 3, 4)]
    assert any("(5,6)" in n and "incomplete" in n for n in a.notes)


def test_pixels_scale_directly_to_the_original_size() -> None:
    b = only(parse_answer("(250,500),(750,1000)", 4032, 3024))
    assert b.pixels == Box(1008.0, 1512.0, 3024.0, 3024.0)


@pytest.mark.parametrize("bad", [None, b"(1,2),(3,4)", 123, ["(1,2),(3,4)"]])
def test_non_str_answer_raises(bad: object) -> None:
    with pytest.raises(BoxParseError, match="must be a str"):
        parse_answer(bad, W, H)  # type: ignore[arg-type]


@pytest.mark.parametrize("w, h", [(0, 10), (10, 0), (-5, 10), (10, -1)])
def test_nonpositive_size_raises(w: int, h: int) -> None:
    with pytest.raises(BoxParseError, match="must be positive"):
        parse_answer("(1,2),(3,4)", w, h)


@pytest.mark.parametrize("w, h", [(10.5, 10), (10, "10"), (True, 10), (None, 10)])
def test_non_int_size_raises(w: object, h: object) -> None:
    with pytest.raises(BoxParseError, match="must be an int"):
        parse_answer("(1,2),(3,4)", w, h)  # type: ignore[arg-type]


def test_box_parse_error_is_a_value_error() -> None:
    assert issubclass(BoxParseError, ValueError)


def test_canonical_label() -> None:
    assert canonical_label(" Nutrition  Table ") == "nutrition-table"
    assert canonical_label("nutrition_table") == "nutrition-table"
    assert canonical_label("--") is None
    assert canonical_label(None) is None


# ------------------------------------------------------------------------------------------
# Formatting
# ------------------------------------------------------------------------------------------


def test_format_answer_output_is_unchanged() -> None:
    boxes = [Box(273, 304, 713, 679), Box(1.9, 2, 3, 4)]
    assert format_answer(boxes) == (
        "<|object_ref_start|>nutrition-table<|object_ref_end|><|box_start|>(273,304),(713,679)<|box_end|>"
        "<|object_ref_start|>nutrition-table<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
    )
    assert format_answer(boxes[:1], special_tokens=False) == "nutrition-table(273,304),(713,679)"
    assert format_answer([]) == ""


def test_format_box_styles() -> None:
    b = Box(273, 304, 713, 679)
    assert format_box(b, style="plain") == "nutrition-table(273,304),(713,679)"
    assert format_box(b, style="training") == "nutrition-table<box(273, 304),(713, 679)>"
    assert format_box(b, "nutrition table", style="flat") == "nutrition table(273,304,713,679)"
    assert format_box(b, None, style="plain") == "(273,304),(713,679)"
    assert format_box(Box(1.25, 2, 3, 4), style="plain", decimals=2) == (
        "nutrition-table(1.25,2.00),(3.00,4.00)"
    )
    with pytest.raises(ValueError):
        format_box(b, style="xml")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------

coord = st.integers(min_value=0, max_value=GRID)


@st.composite
def grid_boxes(draw: st.DrawFn) -> Box:
    """Integer boxes on the grid with positive area (what the model writes)."""
    x1 = draw(st.integers(0, GRID - 1))
    y1 = draw(st.integers(0, GRID - 1))
    x2 = draw(st.integers(x1 + 1, GRID))
    y2 = draw(st.integers(y1 + 1, GRID))
    return Box(x1, y1, x2, y2)


sizes = st.integers(min_value=1, max_value=10_000)


@given(box=grid_boxes(), special=st.booleans(), w=sizes, h=sizes)
def test_roundtrip_one_box(box: Box, special: bool, w: int, h: int) -> None:
    a = parse_answer(format_answer([box], special_tokens=special), w, h)
    b = only(a)
    assert b.grid == box
    assert b.label == LABEL
    assert b.flags == ()
    assert b.pixels == grid_to_pixels(box, w, h)
    assert a.notes == []


@given(boxes=st.lists(grid_boxes(), max_size=8), special=st.booleans())
def test_roundtrip_several_boxes(boxes: list[Box], special: bool) -> None:
    a = parse_answer(format_answer(boxes, special_tokens=special), W, H)
    assert a.grid_boxes == boxes
    assert all(b.label == LABEL for b in a)


@given(
    boxes=st.lists(grid_boxes(), min_size=1, max_size=5),
    style=st.sampled_from(["tokens", "plain", "training", "flat"]),
    sep=st.sampled_from(["", "\n", " ", ", ", "\n\n"]),
    label=st.sampled_from([LABEL, "nutrition table", "Nutrition-Table", "NUTRITION_TABLE"]),
)
def test_roundtrip_every_style(boxes: list[Box], style: str, sep: str, label: str) -> None:
    text = sep.join(format_box(b, label, style=style) for b in boxes)  # type: ignore[arg-type]
    a = parse_answer(text, W, H)
    assert a.grid_boxes == boxes
    assert all(b.label == LABEL for b in a)


@given(box=grid_boxes())
def test_roundtrip_unit_floats(box: Box) -> None:
    text = "nutrition-table({:.3f},{:.3f}),({:.3f},{:.3f})".format(
        *(v / GRID for v in box.as_tuple())
    )
    b = only(parse_answer(text, W, H))
    assert b.normalized_input
    assert b.grid == box


FRAGMENTS = [
    "(", ")", "[", "]", ",", ", ", " ", "\n", "\t", ".", "-", "+", ";", ":", "to", "and",
    "0", "1", "273", "1000", "1001", "-5", "0.5", "1.0", ".25", "3.", "1e5", "9" * 40,
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|im_end|>", "<box", "<box>", "</box>", ">", "<", "<ref>", "</ref>",
    "nutrition-table", "nutrition table", "Nutrition-Table", "the", '"label": "x"', '"bbox_2d": ',
    "{", "}", '"', "é", "表",
]
grammar_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=60
).map("".join)


def _check_answer(a: ParsedAnswer, w: int, h: int) -> None:
    for b in a:
        g, p = b.grid, b.pixels
        assert 0.0 <= g.x1 < g.x2 <= GRID and 0.0 <= g.y1 < g.y2 <= GRID
        assert all(math.isfinite(v) for v in g.as_tuple() + p.as_tuple())
        assert 0.0 <= p.x1 < p.x2 <= w + 1e-9 and 0.0 <= p.y1 < p.y2 <= h + 1e-9
        assert b.label is None or b.label == canonical_label(b.label)
    assert all(isinstance(n, str) for n in a.notes)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(), w=sizes, h=sizes)
def test_any_text_parses_without_error(text: str, w: int, h: int) -> None:
    _check_answer(parse_answer(text, w, h), w, h)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(text=grammar_text, w=sizes, h=sizes)
def test_grammar_fragments_parse_without_error(text: str, w: int, h: int) -> None:
    _check_answer(parse_answer(text, w, h), w, h)


@given(
    vals=st.lists(
        st.one_of(
            st.integers(-5000, 5000).map(str),
            st.floats(-10, 10, allow_nan=False).map(lambda v: f"{v:.3f}"),
        ),
        min_size=4,
        max_size=4,
    ),
    flat=st.booleans(),
)
def test_any_numbers_give_a_valid_box_or_a_note(vals: list[str], flat: bool) -> None:
    a, b, c, d = vals
    text = f"nutrition-table({a},{b},{c},{d})" if flat else f"nutrition-table({a},{b}),({c},{d})"
    ans = parse_answer(text, W, H)
    _check_answer(ans, W, H)
    if not ans.boxes:
        assert any("dropped" in n for n in ans.notes)


# ------------------------------------------------------------------------------------------
# IoU, matching (values computed by hand)
# ------------------------------------------------------------------------------------------


def test_iou_hand_computed() -> None:
    a = Box(0, 0, 10, 10)
    assert iou(a, a) == 1.0
    # overlap 5x10 = 50; union 100 + 100 - 50 = 150
    assert iou(a, Box(5, 0, 15, 10)) == pytest.approx(1 / 3)
    # overlap 5x5 = 25; union 100 + 100 - 25 = 175
    assert iou(a, Box(5, 5, 15, 15)) == pytest.approx(25 / 175)
    # inside: 4x4 = 16 / 100
    assert iou(a, Box(3, 3, 7, 7)) == pytest.approx(0.16)
    assert iou(a, Box(10, 0, 20, 10)) == 0.0  # touching edges
    assert iou(a, Box(20, 20, 30, 30)) == 0.0
    assert iou(Box(1, 1, 1, 1), Box(1, 1, 1, 1)) == 0.0  # both empty


def test_iou_same_in_grid_and_pixels() -> None:
    a, b = Box(100, 200, 500, 600), Box(300, 100, 700, 500)
    pa, pb = grid_to_pixels(a, 4032, 3024), grid_to_pixels(b, 4032, 3024)
    assert iou(a, b) == pytest.approx(iou(pa, pb))


def test_match_boxes_hand_computed() -> None:
    truth = [Box(0, 0, 10, 10), Box(100, 100, 110, 110)]
    pred = [
        Box(100, 100, 110, 120),  # IoU with truth 1: 100/200 = 0.5
        Box(0, 0, 10, 10),  # IoU with truth 0: 1.0
        Box(500, 500, 600, 600),  # nothing
    ]
    assert match_boxes(pred, truth) == [(0, 1, 0.5), (1, 0, 1.0), (2, None, 0.0)]


def test_match_boxes_is_one_to_one_and_greedy() -> None:
    truth = [Box(0, 0, 10, 10)]
    pred = [Box(0, 0, 10, 5), Box(0, 0, 10, 10)]  # IoU 0.5 and 1.0 with the same truth
    assert match_boxes(pred, truth) == [(1, 0, 1.0), (0, None, 0.0)]
    # one prediction, two truths: the better truth wins, the other is unmatched
    assert match_boxes([Box(0, 0, 10, 10)], [Box(0, 0, 10, 5), Box(0, 0, 10, 10)]) == [
        (0, 1, 1.0),
        (None, 0, 0.0),
    ]


def test_match_boxes_empty_and_disjoint() -> None:
    assert match_boxes([], []) == []
    assert match_boxes([], [Box(0, 0, 1, 1)]) == [(None, 0, 0.0)]
    assert match_boxes([Box(0, 0, 1, 1)], []) == [(0, None, 0.0)]
    assert match_boxes([Box(0, 0, 1, 1)], [Box(5, 5, 6, 6)]) == [(0, None, 0.0), (None, 0, 0.0)]


def test_match_boxes_takes_parsed_boxes() -> None:
    parsed = parse_answer("(0,0),(10,10)", W, H)
    assert match_boxes(parsed.boxes, [Box(0, 0, 10, 10)]) == [(0, 0, 1.0)]


@given(pred=st.lists(grid_boxes(), max_size=6), truth=st.lists(grid_boxes(), max_size=6))
def test_match_boxes_covers_every_index_once(pred: list[Box], truth: list[Box]) -> None:
    out = match_boxes(pred, truth)
    assert sorted(i for i, _, _ in out if i is not None) == list(range(len(pred)))
    assert sorted(j for _, j, _ in out if j is not None) == list(range(len(truth)))
    for i, j, v in out:
        if i is not None and j is not None:
            assert v == iou(pred[i], truth[j]) > 0
        else:
            assert v == 0.0


def test_best_iou() -> None:
    t = Box(0, 0, 10, 10)
    assert best_iou([], t) == 0.0
    assert best_iou([Box(20, 20, 30, 30), Box(5, 0, 15, 10), Box(0, 0, 10, 5)], t) == 0.5
    assert best_iou([Box(0, 0, 10, 10)], t) == 1.0


# ------------------------------------------------------------------------------------------
# Existing primitives still work
# ------------------------------------------------------------------------------------------


def test_existing_primitives() -> None:
    assert normalized(5, 6, 1, 2) == Box(1, 2, 5, 6)
    assert pixels_to_grid(Box(0, 0, 1008, 756), 4032, 3024) == Box(0, 0, 250, 250)
    assert grid_to_pixels(Box(0, 0, 250, 250), 4032, 3024) == Box(0, 0, 1008.0, 756.0)
    with pytest.raises(ValueError):
        grid_to_pixels(Box(0, 0, 1, 1), 0, 1)
    assert Box(1, 2, 4, 6).area == 12
