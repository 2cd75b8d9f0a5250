"""Bounding boxes: the Box type, geometry, and the fine-tune's answer format.

The model speaks boxes on a 0..1000 grid relative to the image width and height:
``<|object_ref_start|>nutrition-table<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``.

Because the grid is relative to the image, a grid box scales to the *original* image directly
(``grid / 1000 * size``), whatever size the image was shrunk to before sending.

:func:`parse_answer` reads every answer shape the fine-tune and its variants produce (see its
docstring); :func:`format_box` / :func:`format_answer` write them; :func:`match_boxes` and
:func:`best_iou` compare predictions with ground truth; :func:`boxes_of_value` reads the boxes a run
stored (the benchmark's ``box`` column, the manifest's ground truth) back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Iterator, Literal, Sequence

GRID = 1000
LABEL = "nutrition-table"

__all__ = [
    "GRID",
    "LABEL",
    "Box",
    "BoxParseError",
    "ParsedAnswer",
    "ParsedBox",
    "best_iou",
    "boxes_of_value",
    "canonical_label",
    "format_answer",
    "format_box",
    "grid_to_pixels",
    "iou",
    "match_boxes",
    "normalized",
    "parse_answer",
    "pixels_to_grid",
]


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``(x1, y1)``-``(x2, y2)`` with ``x1 <= x2`` and ``y1 <= y2``."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return max(0.0, self.x2 - self.x1)

    @property
    def height(self) -> float:
        return max(0.0, self.y2 - self.y1)

    @property
    def area(self) -> float:
        return self.width * self.height

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


def normalized(x1: float, y1: float, x2: float, y2: float) -> Box:
    """A Box from two corners given in any order."""
    return Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0.0 when both are empty).

    IoU does not change when both boxes are scaled by the same per-axis factors, so grid boxes
    and pixel boxes of the same image give the same value.
    """
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def pixels_to_grid(box: Box, width: int, height: int) -> Box:
    """A pixel box on an image of ``width`` x ``height`` to integers on the 0..1000 grid."""
    if width <= 0 or height <= 0:
        raise ValueError("image size must be positive")

    def g(v: float, size: int) -> int:
        return int(min(GRID, max(0, round(v * GRID / size))))

    return Box(g(box.x1, width), g(box.y1, height), g(box.x2, width), g(box.y2, height))


def grid_to_pixels(box: Box, width: int, height: int) -> Box:
    """A 0..1000 grid box to pixels on an image of ``width`` x ``height``."""
    if width <= 0 or height <= 0:
        raise ValueError("image size must be positive")
    return Box(
        box.x1 * width / GRID, box.y1 * height / GRID, box.x2 * width / GRID, box.y2 * height / GRID
    )


# --------------------------------------------------------------------------------------------
# Writing answers
# --------------------------------------------------------------------------------------------

BoxStyle = Literal["tokens", "plain", "training", "flat"]


def _fmt_number(v: float, decimals: int) -> str:
    if decimals <= 0:
        return str(int(round(v)))
    return f"{v:.{decimals}f}"


def format_box(
    box: Box,
    label: str | None = LABEL,
    style: BoxStyle = "tokens",
    decimals: int = 0,
) -> str:
    """One box in one of the answer shapes the parser reads.

    ``style``:
      * ``"tokens"``: ``<|object_ref_start|>LABEL<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``
        (the raw model output);
      * ``"plain"``: ``LABEL(x1,y1),(x2,y2)`` (what clients see when vLLM skips special tokens);
      * ``"training"``: ``LABEL<box(x1, y1),(x2, y2)>`` (the system prompt's format);
      * ``"flat"``: ``LABEL(x1,y1,x2,y2)`` (the seed README's shape).

    Coordinates are written as given (grid units), rounded to ``decimals`` places (0: integers).
    With ``decimals > 0``, a box whose four values are all <= 1.0 reads back as a 0..1 box:
    that is the parser's rule for normalized input. ``label=None`` writes no label.
    """
    x1, y1, x2, y2 = (_fmt_number(v, decimals) for v in box.as_tuple())
    name = label or ""
    if style == "tokens":
        return (
            f"<|object_ref_start|>{name}<|object_ref_end|>"
            f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
        )
    if style == "plain":
        return f"{name}({x1},{y1}),({x2},{y2})"
    if style == "training":
        return f"{name}<box({x1}, {y1}),({x2}, {y2})>"
    if style == "flat":
        return f"{name}({x1},{y1},{x2},{y2})"
    raise ValueError(f"unknown box style {style!r}")


def format_answer(grid_boxes: list[Box], special_tokens: bool = True) -> str:
    """The fine-tune's answer for boxes already on the 0..1000 grid (empty string for none).

    Coordinates are truncated to integers (``int()``), as the model writes them.
    ``parse_answer(format_answer(boxes), w, h)`` gives back integer boxes of positive area.
    """
    style: BoxStyle = "tokens" if special_tokens else "plain"
    return "".join(
        format_box(Box(int(b.x1), int(b.y1), int(b.x2), int(b.y2)), LABEL, style)
        for b in grid_boxes
    )


# --------------------------------------------------------------------------------------------
# Reading answers
# --------------------------------------------------------------------------------------------


class BoxParseError(ValueError):
    """Raised by :func:`parse_answer` only for a non-str answer or a bad image size.

    Any string, however garbled, parses (to zero or more boxes, with notes).
    """


@dataclass(frozen=True)
class ParsedBox:
    """One box read from a model answer.

    ``grid``: the box on the 0..1000 grid (floats, clamped, corners ordered, positive area).
    ``pixels``: the same box on the original image (``grid / 1000 * size``).
    ``label``: the canonical label (lower case, words joined by ``-``, e.g. ``nutrition-table``)
    or ``None`` when the answer gave none; ``raw_label`` is the label as written.
    Flags: ``clamped`` (a value lay outside the grid), ``swapped`` (corners were given in the
    wrong order), ``normalized_input`` (the values were 0..1 floats, scaled by 1000).
    ``text`` and ``span`` locate the coordinates in the answer.
    """

    grid: Box
    pixels: Box
    label: str | None
    raw_label: str | None = None
    clamped: bool = False
    swapped: bool = False
    normalized_input: bool = False
    text: str = ""
    span: tuple[int, int] = (0, 0)

    @property
    def flags(self) -> tuple[str, ...]:
        """The names of the flags that are set, e.g. ``("clamped", "swapped")``."""
        names = ("clamped", "swapped", "normalized_input")
        return tuple(n for n in names if getattr(self, n))


@dataclass
class ParsedAnswer:
    """All boxes read from one answer, in answer order, plus human-readable notes.

    Notes say what the parser had to do or could not use: clamped or swapped boxes, 0..1 input,
    dropped zero-area boxes, coordinates it could not complete, or that no box was found.
    """

    boxes: list[ParsedBox] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    image_width: int = 0
    image_height: int = 0

    def __len__(self) -> int:
        return len(self.boxes)

    def __iter__(self) -> Iterator[ParsedBox]:
        return iter(self.boxes)

    def __getitem__(self, i: int) -> ParsedBox:
        return self.boxes[i]

    @property
    def grid_boxes(self) -> list[Box]:
        """The boxes on the 0..1000 grid."""
        return [b.grid for b in self.boxes]

    @property
    def pixel_boxes(self) -> list[Box]:
        """The boxes in pixels of the original image."""
        return [b.pixels for b in self.boxes]


# A number: optional sign, digits with an optional fraction, or a bare fraction. No exponent:
# the model never writes one, and "1e5" would otherwise sneak in as a coordinate.
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_OPEN = r"[(\[]"
_CLOSE = r"[)\]]"
_PAIR = rf"{_OPEN}\s*(?P<{{a}}>{_NUM})\s*,\s*(?P<{{b}}>{_NUM})\s*{_CLOSE}"
# Between the two corners: whitespace, optionally one separator (",", ";", "-", "to", "and").
# Written so that whitespace can be consumed in one way only (no quadratic backtracking).
_SEP = r"\s*(?:(?:,|;|-|–|\bto\b|\band\b)\s*)?"
_BOX_RE = re.compile(
    r"(?:"
    + _PAIR.format(a="p1", b="p2")
    + _SEP
    + _PAIR.format(a="p3", b="p4")
    + r")|(?:"
    + rf"{_OPEN}\s*(?P<f1>{_NUM})\s*,\s*(?P<f2>{_NUM})\s*,\s*(?P<f3>{_NUM})\s*,\s*(?P<f4>{_NUM})\s*{_CLOSE}"
    + r")"
)
# Coordinates the box grammar did not take: two or more numbers in brackets.
_LEFTOVER_RE = re.compile(rf"{_OPEN}\s*{_NUM}(?:\s*,\s*{_NUM})+\s*{_CLOSE}")

_SPECIAL_TOKEN_RE = re.compile(r"<\|[A-Za-z_]{1,40}\|>")
_OBJECT_REF_RE = re.compile(r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>", re.S)
_REF_TAG_RE = re.compile(r"<ref>(.*?)</ref>", re.S | re.I)  # Qwen-VL (v1) grounding format
_BOX_TAG_RE = re.compile(r"</?\s*box\b\s*>?", re.I)
_TRAILING_JUNK_RE = re.compile(r"[^\w]+\Z")
_TRAILING_RUN_RE = re.compile(r"[\w\- ]*\Z")
_LEADING_NON_LETTERS_RE = re.compile(r"\A[\W\d_]+")
_JSON_LABEL_RE = re.compile(r"\"label\"\s*:\s*\"([^\"]{0,80})\"")
_KEY_WORDS = {"bbox_2d", "bbox", "box", "box_2d", "bounding box", "bounding_box", "coordinates",
              "coords", "points"}
_FILLER_WORDS = {"a", "an", "and", "are", "at", "found", "from", "is", "located", "or", "the",
                 "then", "to"}
_LABEL_WINDOW = 200  # only the last characters before a box can hold its label
_MAX_LABEL_WORDS = 3


def canonical_label(raw: str | None) -> str | None:
    """``"Nutrition Table"``, ``"nutrition_table"``, ``" Nutrition-Table "`` -> ``"nutrition-table"``.

    ``None`` or a label with no word characters gives ``None``.
    """
    if raw is None:
        return None
    out = re.sub(r"[\s_\-]+", "-", raw.strip().lower()).strip("-")
    return out or None


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _label_before(gap: str, after: str) -> tuple[str | None, bool]:
    """The raw label written just before a box, given the text since the previous box.

    Returns ``(label, separator_only)``; ``separator_only`` is true when the gap holds no words
    at all (then the box belongs to the previous label, as in ``label(box),(box)`` lists).
    """
    refs = _OBJECT_REF_RE.findall(gap) or _REF_TAG_RE.findall(gap)
    if refs:
        raw = refs[-1].strip()
        return (raw or None), False
    clean = _SPECIAL_TOKEN_RE.sub(" ", gap[-_LABEL_WINDOW:])
    clean = _BOX_TAG_RE.sub(" ", clean)
    if not re.search(r"\w", clean):
        return None, True
    # The label is the run of words (letters, digits, "-", "_", spaces) that ends the gap, less
    # trailing punctuation ("label: ", '"bbox_2d": ') and leading numbering ("1. ").
    clean = _TRAILING_JUNK_RE.sub("", clean)
    run = _TRAILING_RUN_RE.search(clean)
    words = _LEADING_NON_LETTERS_RE.sub("", run.group(0) if run else "").split()
    # Prose around the label: "The nutrition table is located at (..)", "(..) and (..)".
    while words and words[-1].lower() in _FILLER_WORDS:
        words.pop()
    words = words[-_MAX_LABEL_WORDS:]
    while words and words[0].lower() in _FILLER_WORDS:
        words.pop(0)
    if not words:
        return None, True
    raw = " ".join(words)
    if raw.lower() in _KEY_WORDS:
        # JSON-like answers: {"bbox_2d": [..], "label": "nutrition table"}
        j = _JSON_LABEL_RE.search(after[:_LABEL_WINDOW])
        return (j.group(1).strip() or None) if j else None, False
    return raw or None, False


def _check_size(image_width: object, image_height: object) -> tuple[int, int]:
    for name, v in (("image_width", image_width), ("image_height", image_height)):
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise BoxParseError(f"{name} must be an int, got {type(v).__name__}")
        if v <= 0:
            raise BoxParseError(f"{name} must be positive, got {v}")
    return int(image_width), int(image_height)  # type: ignore[call-overload]


def parse_answer(text: str, image_width: int, image_height: int) -> ParsedAnswer:
    """Read every box in a model answer.

    Accepted, anywhere in the text and with whitespace or newlines anywhere between the parts:

    * with or without Qwen2-VL special tokens:
      ``<|object_ref_start|>nutrition-table<|object_ref_end|><|box_start|>(273,304),(713,679)<|box_end|>``,
      ``nutrition-table(273,304),(713,679)``;
    * the training format ``nutrition-table<box(273, 304),(713, 679)>``; Qwen-VL's
      ``<ref>..</ref><box>..</box>``;
    * two corner pairs or a flat 4-tuple (``nutrition table(273,304,713,679)``), in ``( )`` or
      ``[ ]``; JSON-like ``{"bbox_2d": [273, 304, 713, 679], "label": "..."}``;
    * 0..1000 grid numbers (integers or decimals) or 0..1 floats: a box whose four values are all
      <= 1.0 and at least one is written with a decimal point is taken as 0..1 and scaled by 1000;
    * any label text (``nutrition table``, ``Nutrition-Table``, ...) or none; a box directly
      following another one (only separators between) shares its label;
    * several boxes, or none (an empty result and a note, not an error).

    Corners in the wrong order are put in order (flag ``swapped``); values outside 0..1000 are
    clamped (flag ``clamped`` and a note); a box of zero area after that is dropped with a note.
    Pixel boxes are ``grid / 1000 * size`` on an image of ``image_width`` x ``image_height``
    (the original image, whatever size was sent: the grid is relative).

    Raises :class:`BoxParseError` only when ``text`` is not a str or the image size is not a
    positive int; any string parses.
    """
    if not isinstance(text, str):
        raise BoxParseError(f"answer must be a str, got {type(text).__name__}")
    width, height = _check_size(image_width, image_height)

    result = ParsedAnswer(image_width=width, image_height=height)
    matches = list(_BOX_RE.finditer(text))
    for number, (m, raw_label) in enumerate(zip(matches, _box_labels(text, matches)), start=1):
        box = _read_box(m, number, raw_label, width, height, result.notes)
        if box is not None:
            result.boxes.append(box)

    # Coordinates outside any complete box: say so, they may be a truncated answer.
    rest = _BOX_RE.sub(lambda m: " " * len(m.group(0)), text)
    for lm in _LEFTOVER_RE.finditer(rest):
        result.notes.append(f"ignored incomplete coordinates {_short(lm.group(0))!r}")
    if not matches:
        result.notes.append("no box found in the answer")
    return result


def _box_labels(text: str, matches: list[re.Match[str]]) -> list[str | None]:
    """The raw label of each box match: the text just before it, or, for a box directly following
    another one (only separators between), the previous box's label."""
    labels: list[str | None] = []
    prev_end = 0
    prev_raw_label: str | None = None
    for k, m in enumerate(matches):
        next_start = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        gap = text[prev_end : m.start()]
        raw_label, separator_only = _label_before(gap, text[m.end() : next_start])
        if raw_label is None and separator_only and k > 0:
            raw_label = prev_raw_label
        prev_raw_label = raw_label
        prev_end = m.end()
        labels.append(raw_label)
    return labels


def _read_box(m: re.Match[str], number: int, raw_label: str | None, width: int, height: int,
              notes: list[str]) -> ParsedBox | None:
    """One box match on the 0..1000 grid: 0..1 values scaled, corners put in order, values clamped
    (each said in ``notes``); None, with a note, when nothing of it is left (zero area)."""
    if m.group("p1") is not None:
        strs = [m.group(g) for g in ("p1", "p2", "p3", "p4")]
    else:
        strs = [m.group(g) for g in ("f1", "f2", "f3", "f4")]
    values = [float(s) for s in strs]
    where = f"box {number} {_short(m.group(0))!r}"

    is_unit = all(v <= 1.0 for v in values) and any("." in s for s in strs)
    if is_unit:
        values = [round(v * GRID, 6) for v in values]
        notes.append(f"{where}: 0..1 values, scaled to the 0..1000 grid")
    x1, y1, x2, y2 = values
    swapped = x1 > x2 or y1 > y2
    if swapped:
        x1, x2 = min(x1, x2), max(x1, x2)
        y1, y2 = min(y1, y2), max(y1, y2)
        notes.append(f"{where}: corners in the wrong order, swapped")
    raw = (x1, y1, x2, y2)
    c = tuple(min(float(GRID), max(0.0, v)) for v in raw)
    clamped = c != raw
    if clamped:
        notes.append(f"{where}: values outside 0..{GRID}, clamped to the grid")
    grid = Box(*c)
    if grid.area <= 0:
        why = "zero area after clamping" if clamped else "zero area"
        notes.append(f"{where}: {why}, dropped")
        return None
    return ParsedBox(
        grid=grid,
        pixels=grid_to_pixels(grid, width, height),
        label=canonical_label(raw_label),
        raw_label=raw_label,
        clamped=clamped,
        swapped=swapped,
        normalized_input=is_unit,
        text=m.group(0),
        span=(m.start(), m.end()),
    )


# --------------------------------------------------------------------------------------------
# Comparing boxes
# --------------------------------------------------------------------------------------------


def _as_box(b: Box | ParsedBox) -> Box:
    return b.grid if isinstance(b, ParsedBox) else b


def match_boxes(
    pred: Sequence[Box | ParsedBox], truth: Sequence[Box | ParsedBox]
) -> list[tuple[int | None, int | None, float]]:
    """One-to-one matching of predicted and true boxes by IoU.

    Greedy by descending IoU (ties: lower prediction index, then lower truth index), as the
    PASCAL VOC / COCO evaluations do; pairs with IoU 0 are never matched. Both lists must be in
    the same coordinates (grid or pixels: IoU is the same in both).

    Returns ``(pred_index, truth_index, iou)`` for every matched pair, in prediction order, then
    ``(pred_index, None, 0.0)`` for each unmatched prediction and ``(None, truth_index, 0.0)``
    for each unmatched truth, each in index order. Every index appears exactly once.
    """
    p = [_as_box(b) for b in pred]
    t = [_as_box(b) for b in truth]
    pairs = [(iou(a, b), i, j) for i, a in enumerate(p) for j, b in enumerate(t)]
    pairs = [x for x in pairs if x[0] > 0.0]
    pairs.sort(key=lambda x: (-x[0], x[1], x[2]))
    used_p: dict[int, tuple[int, float]] = {}
    used_t: set[int] = set()
    for v, i, j in pairs:
        if i in used_p or j in used_t:
            continue
        used_p[i] = (j, v)
        used_t.add(j)
    out: list[tuple[int | None, int | None, float]] = [
        (i, used_p[i][0], used_p[i][1]) for i in sorted(used_p)
    ]
    out += [(i, None, 0.0) for i in range(len(p)) if i not in used_p]
    out += [(None, j, 0.0) for j in range(len(t)) if j not in used_t]
    return out


def best_iou(pred: Sequence[Box | ParsedBox], truth_box: Box | ParsedBox) -> float:
    """The highest IoU of any predicted box with ``truth_box`` (0.0 when there is none)."""
    t = _as_box(truth_box)
    return max((iou(_as_box(b), t) for b in pred), default=0.0)


def _box_from(value: Any) -> Box | None:
    if isinstance(value, Box):
        return value
    if isinstance(value, Mapping):
        if all(k in value for k in ("x1", "y1", "x2", "y2")):
            return Box(float(value["x1"]), float(value["y1"]), float(value["x2"]), float(value["y2"]))
        if "grid" in value:
            return _box_from(value["grid"])
        return None
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        x1, y1, x2, y2 = (float(v) for v in value)
        return Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    return None


def boxes_of_value(value: Any) -> list[Box] | None:
    """Grid boxes from a stored ``box`` value: a box (``{"x1",..}``, ``{"grid": ..}``, ``[x1, y1,
    x2, y2]``), a list of them, ``{"boxes": [...]}``, or JSON text of any of these. None when the
    value holds no recognisable box shape (an empty list is a known "no box")."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    one = _box_from(value)
    if one is not None:
        return [one]
    if isinstance(value, Mapping) and "boxes" in value:
        return boxes_of_value(value["boxes"])
    if isinstance(value, (list, tuple)):
        out = [_box_from(v) for v in value]
        if all(b is not None for b in out):
            return out  # type: ignore[return-value]
    return None
