"""Bounding boxes: the Box type, geometry, and the fine-tune's answer format.

The model speaks boxes on a 0..1000 grid relative to the image width and height:
``<|object_ref_start|>nutrition-table<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``.
"""

from __future__ import annotations

from dataclasses import dataclass

GRID = 1000
LABEL = "nutrition-table"


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
    """Intersection over union of two boxes (0.0 when both are empty)."""
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


def format_answer(grid_boxes: list[Box], special_tokens: bool = True) -> str:
    """The fine-tune's answer for boxes already on the 0..1000 grid (empty string for none)."""
    parts = []
    for b in grid_boxes:
        coords = f"({int(b.x1)},{int(b.y1)}),({int(b.x2)},{int(b.y2)})"
        if special_tokens:
            parts.append(
                f"<|object_ref_start|>{LABEL}<|object_ref_end|><|box_start|>{coords}<|box_end|>"
            )
        else:
            parts.append(f"{LABEL}{coords}")
    return "".join(parts)
