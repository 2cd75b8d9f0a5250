"""Synthetic food-label images with exact ground-truth boxes of their nutrition tables.

Each image is a package-like scene (coloured background, panels, brand name, slogans, an
ingredients paragraph, simple logos, a barcode, a bordered storage/allergy note) with zero, one
or two nutrition tables in one of two styles:

* ``"us"``: the US "Nutrition Facts" panel (title, servings, thick/medium/thin rules, calories,
  nutrient rows with amounts and %DV, vitamins, footnote), always on opaque paper;
* ``"eu"``: the European column table ("Nutrition declaration", "per 100 g", optionally
  "per portion"), a grid of two or three columns on opaque paper or printed straight on the pack.

Each table is drawn on its own RGBA layer, optionally rotated by a few degrees, and pasted
through its alpha channel. A table's box is the bounding box of the layer's non-zero alpha after
rotation, i.e. exactly the pixels the paste changed, in continuous pixel-edge coordinates
(``x2``/``y2`` are one past the last drawn column/row, PIL's ``getbbox`` convention, so a table
touching the right edge has ``x2 == width``). Blur, noise and JPEG artefacts come after the box
is taken.

Everything is deterministic from an integer seed (numpy ``default_rng``), given the same Pillow,
FreeType, libjpeg and fonts. Text uses the DejaVu fonts of the Debian package
``fonts-dejavu-core`` (only its six files, so that images do not depend on optional packages);
fonts are never downloaded.

Command line::

    python -m services.image_sets.generator --out DIR --count N [--seed S]   # write a data set
    python -m services.image_sets.generator --bench 200 [--side 512]         # time the generator
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from services.core.boxes import Box, pixels_to_grid

Color = tuple[int, int, int]
Rect = tuple[int, int, int, int]  # x1, y1, x2 (exclusive), y2 (exclusive)

STYLES: tuple[str, ...] = ("us", "eu")
FONT_PACKAGE = "fonts-dejavu-core"
FONT_FILES: dict[str, str] = {
    "sans": "DejaVuSans.ttf",
    "sans_bold": "DejaVuSans-Bold.ttf",
    "serif": "DejaVuSerif.ttf",
    "serif_bold": "DejaVuSerif-Bold.ttf",
    "mono": "DejaVuSansMono.ttf",
    "mono_bold": "DejaVuSansMono-Bold.ttf",
}
FONT_DIRS: tuple[str, ...] = (
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/dejavu",
    "/usr/share/fonts/TTF",
    "/usr/share/fonts/truetype",
    "/usr/local/share/fonts",
    "/usr/share/fonts",
)
FONT_DIR_ENV = "LABEL_FONT_DIR"
ALPHA_THRESHOLD = 16  # layer alpha below this is cleared before pasting (invisible fringe)
_ALPHA_LUT = [0] * ALPHA_THRESHOLD + list(range(ALPHA_THRESHOLD, 256))


class FontsNotFoundError(RuntimeError):
    """The DejaVu fonts are missing; install the Debian package ``fonts-dejavu-core``."""


# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorConfig:
    """Knobs of the generator; the defaults give the training mix.

    Sizes: both sides lie in ``min_side..max_side`` and width/height in
    ``min_aspect..max_aspect`` unless ``size`` fixes ``(width, height)``.
    Tables: ``none_fraction`` of images have none, ``two_fraction`` have two, the rest one;
    a single table is ``min_table_fraction..max_table_fraction`` of the image height (shrunk
    until it fits); with probability ``rotation_prob`` a table is rotated by up to
    ``max_rotation_deg`` degrees either way.
    Test hooks: ``background`` paints a plain background and turns distractors off;
    ``table_paper`` (a colour or ``"transparent"``) and ``table_ink`` force the table colours.
    Degradations (applied after the boxes are taken): Gaussian blur, Gaussian noise, JPEG.
    """

    min_side: int = 320
    max_side: int = 1024
    min_aspect: float = 0.5
    max_aspect: float = 2.0
    size: tuple[int, int] | None = None
    styles: tuple[str, ...] = STYLES
    none_fraction: float = 0.1
    two_fraction: float = 0.1
    min_table_fraction: float = 0.3
    max_table_fraction: float = 0.85
    rotation_prob: float = 0.5
    max_rotation_deg: float = 4.0
    distractors: bool = True
    background: Color | None = None
    table_paper: Color | Literal["transparent"] | None = None
    table_ink: Color | None = None
    blur_prob: float = 0.3
    max_blur_radius: float = 1.2
    noise_prob: float = 0.4
    max_noise_sigma: float = 8.0
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 90)

    def __post_init__(self) -> None:
        if not 16 <= self.min_side <= self.max_side:
            raise ValueError("need 16 <= min_side <= max_side")
        if not 0 < self.min_aspect <= self.max_aspect:
            raise ValueError("need 0 < min_aspect <= max_aspect")
        if self.size is not None and (self.size[0] < 16 or self.size[1] < 16):
            raise ValueError("size must be at least 16 x 16")
        if not self.styles or any(s not in STYLES for s in self.styles):
            raise ValueError(f"styles must be a non-empty subset of {STYLES}")
        for name in ("none_fraction", "two_fraction", "rotation_prob", "blur_prob",
                     "noise_prob", "jpeg_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in 0..1")
        if self.none_fraction + self.two_fraction > 1.0 + 1e-9:
            raise ValueError("none_fraction + two_fraction must not exceed 1")
        if not 0 < self.min_table_fraction <= self.max_table_fraction <= 1:
            raise ValueError("need 0 < min_table_fraction <= max_table_fraction <= 1")
        if not 0 <= self.max_rotation_deg <= 30:
            raise ValueError("max_rotation_deg must lie in 0..30")
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise ValueError("jpeg_quality must be (lo, hi) with 1 <= lo <= hi <= 100")


@dataclass
class LabelSample:
    """One generated image with its ground truth.

    ``boxes`` are pixel boxes (ints, pixel-edge coordinates), ``grid_boxes`` the same on the
    0..1000 grid (``services.core.boxes.pixels_to_grid``). ``style`` is ``"us"``, ``"eu"`` or
    ``"none"`` (no table); ``angles`` are the tables' rotations in degrees (counter-clockwise).
    """

    image: Image.Image
    boxes: list[Box]
    grid_boxes: list[Box]
    style: str
    seed: int
    angles: list[float] = field(default_factory=list)

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


# --------------------------------------------------------------------------------------------
# Fonts
# --------------------------------------------------------------------------------------------


def find_dejavu_fonts(
    search_dirs: Sequence[str | os.PathLike[str]] | None = None, use_pil_search: bool = True
) -> dict[str, str]:
    """Paths of the six ``fonts-dejavu-core`` fonts, by role (``sans``, ``sans_bold``, ...).

    Looks in ``$LABEL_FONT_DIR``, then ``search_dirs`` (default: the usual system font folders,
    searched recursively only for ``/usr/share/fonts``), then asks Pillow's own font search.
    Raises :class:`FontsNotFoundError` naming the Debian package when a font is missing.
    """
    dirs: list[Path] = []
    env = os.environ.get(FONT_DIR_ENV)
    if env:
        dirs.append(Path(env))
    dirs.extend(Path(d) for d in (FONT_DIRS if search_dirs is None else search_dirs))
    found: dict[str, str] = {}
    for role, name in FONT_FILES.items():
        for d in dirs:
            p = d / name
            if p.is_file():
                found[role] = str(p)
                break
        if role not in found and search_dirs is None and Path("/usr/share/fonts").is_dir():
            hits = sorted(Path("/usr/share/fonts").rglob(name))
            if hits:
                found[role] = str(hits[0])
        if role not in found and use_pil_search:
            try:  # Pillow searches the platform's font folders (XDG data dirs on Linux)
                found[role] = str(ImageFont.truetype(name, 10).path)
            except OSError:
                pass
    missing = [FONT_FILES[r] for r in FONT_FILES if r not in found]
    if missing:
        raise FontsNotFoundError(
            f"DejaVu fonts not found ({', '.join(missing)}). Install the Debian package "
            f"{FONT_PACKAGE} (apt-get install {FONT_PACKAGE}) or point ${FONT_DIR_ENV} at a "
            "folder holding them; fonts are never downloaded at run time."
        )
    return found


@lru_cache(maxsize=1)
def _fonts() -> dict[str, str]:
    return find_dejavu_fonts()


@lru_cache(maxsize=2048)
def _font(role: str, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: same output with or without libraqm, and faster for Latin text.
    return ImageFont.truetype(_fonts()[role], max(4, int(size)),
                              layout_engine=ImageFont.Layout.BASIC)


@lru_cache(maxsize=65536)
def _text_w(role: str, size: int, text: str) -> int:
    return math.ceil(_font(role, size).getlength(text))


def _line_h(size: int) -> int:
    return round(size * 1.2)


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

_BRAND_A = ("Golden", "Happy", "Green", "Sunny", "Royal", "Little", "Wild", "Crispy", "Old",
            "Blue", "Maple", "Nordic", "Alpine", "Urban", "Pure", "Rustic", "Mighty", "Honey")
_BRAND_B = ("Valley", "Farm", "Harvest", "Oats", "Crunch", "Bakery", "Kitchen", "Meadow",
            "Garden", "Mills", "Orchard", "Dairy", "Bites", "Grove", "Pantry", "Fields")
_PRODUCTS = ("Granola Bars", "Whole Grain Cereal", "Tomato Soup", "Peanut Butter", "Crackers",
             "Muesli", "Oat Cookies", "Fruit Yogurt", "Pasta Sauce", "Rice Cakes", "Chocolate",
             "Potato Chips", "Hummus", "Müsli Crunch", "Biscuits", "Apple Juice", "Pesto")
_SLOGANS = ("NEW RECIPE!", "100% natural", "Rich in fibre", "No added sugar", "Family size",
            "Source of protein", "Gluten free", "Baked, not fried", "Since 1923", "Organic",
            "Now with more crunch!", "Vegan", "Low fat", "Made with real fruit",
            "Sans colorants", "Ohne Zuckerzusatz", "Try me!", "Best before: see top")
_INGREDIENTS = ("wheat flour", "sugar", "palm oil", "whole grain oats", "salt", "glucose syrup",
                "skimmed MILK powder", "cocoa butter", "emulsifier (soy lecithin)",
                "raising agents (sodium bicarbonate)", "natural flavouring", "HAZELNUTS",
                "rice flour", "honey", "dried apples", "citric acid", "sunflower oil",
                "barley malt extract", "EGG", "tomato paste", "onion", "garlic", "spices",
                "corn starch", "vitamin C", "iron", "yeast", "water", "cane sugar", "almonds")
_NOTES = (("Store in a cool,", "dry place."), ("Allergy advice:", "see ingredients in", "BOLD."),
          ("Once opened, keep", "refrigerated and", "consume within 3 days."),
          ("Recycle", "Carton - widely recycled"), ("Best before end:", "see base of pack."))
_WEIGHTS = ("Net Wt 12 oz (340 g)", "500 g ℮", "NET WT 1.5 OZ (42 g)", "250 g", "1 kg ℮",
            "Poids net : 400 g", "Inhalt: 750 ml", "6 x 30 g")

# US rows: (name, unit, bold, indent, has %DV)
_US_ROWS = (
    ("Total Fat", "g", True, 0, True), ("Saturated Fat", "g", False, 1, True),
    ("Trans Fat", "g", False, 1, False), ("Cholesterol", "mg", True, 0, True),
    ("Sodium", "mg", True, 0, True), ("Total Carbohydrate", "g", True, 0, True),
    ("Dietary Fiber", "g", False, 1, True), ("Total Sugars", "g", False, 1, False),
    ("Includes {a} Added Sugars", "g", False, 2, True), ("Protein", "g", True, 0, False),
)
_US_VITAMINS = (("Vitamin D", "mcg"), ("Calcium", "mg"), ("Iron", "mg"), ("Potassium", "mg"),
                ("Vitamin A", "mcg"), ("Vitamin C", "mg"))
_US_FOOTNOTE = ("* The % Daily Value (DV) tells you how much a nutrient in a serving of food "
                "contributes to a daily diet. 2,000 calories a day is used for general "
                "nutrition advice.")

_EU_LANGS: dict[str, dict[str, Any]] = {
    "en": {
        "titles": ("Nutrition declaration", "Nutrition information", "NUTRITION"),
        "head": ("Typical values", "Average values", "Nutrition"),
        "per100": ("per 100 g", "per 100g", "100 g", "per 100 ml"),
        "portion": ("per portion ({p} g)", "per serving ({p}g)", "per {p} g bar"),
        "rows": (("Energy", ""), ("Fat", "g"), ("of which saturates", "g"),
                 ("Carbohydrate", "g"), ("of which sugars", "g"), ("Fibre", "g"),
                 ("Protein", "g"), ("Salt", "g")),
    },
    "de": {
        "titles": ("Nährwertangaben", "Nährwertinformation", "Durchschnittliche Nährwerte"),
        "head": ("Nährwerte", "Durchschnittswerte"),
        "per100": ("pro 100 g", "je 100 g", "100 g"),
        "portion": ("pro Portion ({p} g)", "je Portion ({p}g)"),
        "rows": (("Brennwert", ""), ("Fett", "g"), ("davon gesättigte Fettsäuren", "g"),
                 ("Kohlenhydrate", "g"), ("davon Zucker", "g"), ("Ballaststoffe", "g"),
                 ("Eiweiß", "g"), ("Salz", "g")),
    },
    "fr": {
        "titles": ("Déclaration nutritionnelle", "Valeurs nutritionnelles moyennes"),
        "head": ("Valeurs moyennes", "Informations nutritionnelles"),
        "per100": ("pour 100 g", "100 g"),
        "portion": ("par portion ({p} g)", "pour {p} g"),
        "rows": (("Énergie", ""), ("Matières grasses", "g"), ("dont acides gras saturés", "g"),
                 ("Glucides", "g"), ("dont sucres", "g"), ("Fibres alimentaires", "g"),
                 ("Protéines", "g"), ("Sel", "g")),
    },
}

_PAPERS: tuple[Color, ...] = ((255, 255, 255), (250, 248, 240), (255, 253, 228), (245, 245, 245),
                              (236, 240, 232))
_INKS: tuple[Color, ...] = ((0, 0, 0), (20, 20, 20), (45, 30, 20), (10, 40, 20), (15, 25, 70))


def _pick(rng: np.random.Generator, seq: Sequence):  # type: ignore[no-untyped-def]
    return seq[int(rng.integers(len(seq)))]


def _rand_color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> Color:
    c = rng.integers(lo, hi, size=3)
    return (int(c[0]), int(c[1]), int(c[2]))


def _luma(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _contrast_ink(rng: np.random.Generator, bg: Sequence[float]) -> Color:
    if _luma(bg) > 128:
        return _pick(rng, _INKS)
    return _pick(rng, ((255, 255, 255), (250, 245, 220), (255, 230, 120)))


def _fmt_amount(rng: np.random.Generator, hi: float, unit: str) -> str:
    v = float(rng.uniform(0, hi))
    if v < 1:
        s = f"{v:.1f}".replace(".0", "") if rng.random() < 0.7 else "<0.5"
    elif v < 10 and rng.random() < 0.5:
        s = f"{v:.1f}"
    else:
        s = str(round(v))
    return f"{s}{unit}"


# --------------------------------------------------------------------------------------------
# Table layouts: content is drawn once from the rng, layout is a pure function of the font size
# --------------------------------------------------------------------------------------------

# A draw op: ("rect", x1, y1, x2, y2, colour_key) or ("text", x, y, text, role, size, colour_key,
# anchor); colour keys are "ink" and "paper" (resolved when drawing).
Op = tuple


def _us_content(rng: np.random.Generator) -> dict:
    rows = []
    for name, unit, bold, indent, has_dv in _US_ROWS:
        if indent and rng.random() < 0.15:
            continue
        amount = _fmt_amount(rng, 30 if unit == "g" else 600, unit)
        if "{a}" in name:
            name, amount = name.format(a=amount), ""
        dv = f"{int(rng.integers(0, 60))}%" if has_dv else ""
        rows.append((name, amount, bold, indent, dv))
    vit = [v for v in _US_VITAMINS if rng.random() < 0.6][:4] or [_US_VITAMINS[0]]
    vitamins = [(f"{n} {_fmt_amount(rng, 300, u)}", f"{int(rng.integers(0, 50))}%")
                for n, u in vit]
    return {
        "servings": f"{int(rng.integers(1, 20))} servings per container",
        "serving": _pick(rng, ("2/3 cup (55g)", "1 bar (40g)", "1 cup (240mL)", "3 pieces (28g)",
                               "2 Tbsp (32g)", "1 package (85g)")),
        "calories": str(int(rng.integers(10, 600))),
        "rows": rows,
        "vitamins": vitamins,
        "footnote": rng.random() < 0.8,
        "width_extra": float(rng.uniform(0.0, 0.25)),
    }


def _wrap(text: str, role: str, size: int, width: int) -> list[str]:
    lines: list[str] = []
    cur = ""
    for word in text.split():
        cand = f"{cur} {word}" if cur else word
        if cur and _text_w(role, size, cand) > width:
            lines.append(cur)
            cur = word
        else:
            cur = cand
    if cur:
        lines.append(cur)
    return lines


def _us_layout(c: dict, fs: int) -> tuple[int, int, list[Op]]:
    """Ops of a US "Nutrition Facts" panel at body font size ``fs``; returns (w, h, ops)."""
    fs = max(4, fs)
    pad = max(2, round(fs * 0.45))
    border = max(1, round(fs * 0.12))
    thin = max(1, round(fs * 0.08))
    medium = max(2, round(fs * 0.3))
    thick = max(3, round(fs * 0.75))
    title_sz, big_sz, hdr_sz, small_sz = round(fs * 2.3), round(fs * 2.0), fs + max(1, fs // 8), \
        max(4, round(fs * 0.78))
    indent_px = round(fs * 1.1)
    gap = round(fs * 0.6)

    inner = _text_w("sans_bold", title_sz, "Nutrition Facts")
    for name, amount, bold, indent, dv in c["rows"]:
        w = indent * indent_px + _text_w("sans_bold" if bold else "sans", fs, name) + gap \
            + _text_w("sans", fs, amount) + gap + _text_w("sans_bold", fs, dv or "00%")
        inner = max(inner, w)
    inner = max(inner, _text_w("sans_bold", hdr_sz, "Serving size") + gap
                + _text_w("sans_bold", hdr_sz, c["serving"]))
    inner = int(inner * (1.0 + c["width_extra"]))
    w = inner + 2 * pad + 2 * border
    x0, x1 = border + pad, border + pad + inner
    ops: list[Op] = []
    y = border + pad // 2

    def text(x: int, yy: int, s: str, role: str, size: int, anchor: str = "la") -> None:
        if s:
            ops.append(("text", x, yy, s, role, size, "ink", anchor))

    def rule(th: int) -> None:
        nonlocal y
        ops.append(("rect", x0, y, x1, y + th, "ink"))
        y += th

    text(x0, y, "Nutrition Facts", "sans_bold", title_sz)
    y += _line_h(title_sz)
    rule(thin)
    y += max(1, fs // 6)
    text(x0, y, c["servings"], "sans", fs)
    y += _line_h(fs)
    text(x0, y, "Serving size", "sans_bold", hdr_sz)
    text(x1, y, c["serving"], "sans_bold", hdr_sz, "ra")
    y += _line_h(hdr_sz)
    rule(thick)
    y += max(1, fs // 6)
    text(x0, y, "Amount per serving", "sans_bold", small_sz)
    y += _line_h(small_sz)
    text(x0, y + round(big_sz * 0.15), "Calories", "sans_bold", round(big_sz * 0.8))
    text(x1, y, c["calories"], "sans_bold", big_sz, "ra")
    y += _line_h(big_sz)
    rule(medium)
    y += max(1, fs // 6)
    text(x1, y, "% Daily Value*", "sans_bold", small_sz, "ra")
    y += _line_h(small_sz)
    for name, amount, bold, indent, dv in c["rows"]:
        rule(thin)
        y += max(1, fs // 8)
        xn = x0 + indent * indent_px
        role = "sans_bold" if bold else "sans"
        text(xn, y, name, role, fs)
        if amount:
            text(xn + _text_w(role, fs, name) + round(fs * 0.3), y, amount, "sans", fs)
        text(x1, y, dv, "sans_bold", fs, "ra")
        y += _line_h(fs)
    rule(thick)
    for name, dv in c["vitamins"]:
        y += max(1, fs // 8)
        text(x0, y, name, "sans", fs)
        text(x1, y, dv, "sans", fs, "ra")
        y += _line_h(fs)
        rule(thin)
    y += medium
    rule(medium - thin)
    if c["footnote"]:
        y += max(1, fs // 6)
        for line in _wrap(_US_FOOTNOTE, "sans", small_sz, inner):
            text(x0, y, line, "sans", small_sz)
            y += _line_h(small_sz)
    h = y + pad + border
    # the border frame, drawn first so that text stays on top
    frame = [("rect", 0, 0, w, border, "ink"), ("rect", 0, h - border, w, h, "ink"),
             ("rect", 0, 0, border, h, "ink"), ("rect", w - border, 0, w, h, "ink")]
    return w, h, frame + ops


def _eu_content(rng: np.random.Generator) -> dict:
    lang = _pick(rng, ("en", "en", "en", "de", "fr"))
    L = _EU_LANGS[lang]
    three = bool(rng.random() < 0.55)
    portion = int(rng.integers(15, 80))
    rows = []
    kj = int(rng.integers(100, 2300))
    for name, unit in L["rows"]:
        if name in (L["rows"][5][0],) and rng.random() < 0.4:
            continue  # fibre is optional
        if unit:
            v = float(rng.uniform(0, 60 if "alz" not in name and name not in ("Salt", "Sel")
                                  else 3))
            vals = [f"{v:.1f} g", f"{v * portion / 100:.1f} g"]
            if lang != "en":
                vals = [s.replace(".", ",") for s in vals]
        else:
            k2 = round(kj * portion / 100)
            if rng.random() < 0.5:
                vals = [f"{kj} kJ / {round(kj / 4.184)} kcal",
                        f"{k2} kJ / {round(k2 / 4.184)} kcal"]
            else:
                vals = [f"{kj} kJ", f"{k2} kJ"]
                rows.append((name, vals, False))
                name, vals = "", [f"{round(kj / 4.184)} kcal", f"{round(k2 / 4.184)} kcal"]
        rows.append((name, vals, name.startswith(("of which", "davon", "dont"))))
    return {
        "title": _pick(rng, L["titles"]) if rng.random() < 0.6 else "",
        "header": [_pick(rng, L["head"]), _pick(rng, L["per100"]),
                   _pick(rng, L["portion"]).format(p=portion)][: 3 if three else 2],
        "rows": rows,
        "grid": _pick(rng, ("full", "full", "rows", "frame")),
        "shade_header": bool(rng.random() < 0.4),
        "zebra": bool(rng.random() < 0.2),
        "bold_header": bool(rng.random() < 0.7),
    }


def _eu_layout(c: dict, fs: int) -> tuple[int, int, list[Op]]:
    """Ops of a European column table at body font size ``fs``; returns (w, h, ops)."""
    fs = max(4, fs)
    n = len(c["header"])
    line = max(1, round(fs * 0.09))
    cp = max(2, round(fs * 0.45))  # cell padding, horizontal
    vp = max(1, round(fs * 0.28))  # cell padding, vertical
    indent_px = round(fs * 0.8)
    hrole = "sans_bold" if c["bold_header"] else "sans"
    title_sz = round(fs * 1.3)
    colw = [_text_w(hrole, fs, h) for h in c["header"]]
    for name, vals, indent in c["rows"]:
        colw[0] = max(colw[0], _text_w("sans", fs, name) + (indent_px if indent else 0))
        for i in range(1, n):
            colw[i] = max(colw[i], _text_w("sans", fs, vals[i - 1]))
    colw = [cw + 2 * cp for cw in colw]
    w = sum(colw) + (n + 1) * line
    xs = [0]
    for cw in colw:
        xs.append(xs[-1] + line + cw)
    ops: list[Op] = []
    y = 0
    if c["title"]:
        tw = _text_w("sans_bold", title_sz, c["title"])
        w = max(w, tw)
        ops.append(("text", 0, 0, c["title"], "sans_bold", title_sz, "ink", "la"))
        y = _line_h(title_sz) + vp
    grid_top = y
    row_h = _line_h(fs) + 2 * vp
    all_rows = [(c["header"][0], c["header"][1:], False, True)] + \
        [(nm, vals, ind, False) for nm, vals, ind in c["rows"]]
    right = xs[-1] + line
    hlines = []
    for r, (name, vals, indent, is_head) in enumerate(all_rows):
        top = y
        hlines.append(top)
        cell_top = top + line
        if is_head and c["shade_header"]:
            ops.append(("rect", 0, cell_top, right, cell_top + row_h, "ink"))
        elif c["zebra"] and r % 2 == 0:
            ops.append(("rect", 0, cell_top, right, cell_top + row_h, "zebra"))
        color = "paper" if (is_head and c["shade_header"]) else "ink"
        role = hrole if is_head else "sans"
        tx = xs[0] + line + cp + (indent_px if indent else 0)
        ops.append(("text", tx, cell_top + vp, name, role, fs, color, "la"))
        for i, v in enumerate(vals[: n - 1], start=1):
            ops.append(("text", xs[i + 1] - cp, cell_top + vp, v, role, fs, color, "ra"))
        y = cell_top + row_h
    hlines.append(y)
    h = y + line
    # grid lines
    g = c["grid"]
    for i, yy in enumerate(hlines):
        if g in ("full", "rows") or i in (0, len(hlines) - 1) or (g == "frame" and i == 1):
            ops.append(("rect", 0, yy, right, yy + line, "ink"))
    for i, xx in enumerate(xs):
        if g == "full" or i in (0, len(xs) - 1):
            ops.append(("rect", xx, grid_top, xx + line, h, "ink"))
    return max(w, right), h, ops


def _draw_table(style: str, content: dict, fs: int, paper: Color | None, ink: Color) -> Image.Image:
    """Draw the table on a tight RGBA layer (transparent where nothing was drawn)."""
    w, h, ops = (_us_layout if style == "us" else _eu_layout)(content, fs)
    base = paper if paper is not None else ink
    layer = Image.new("RGBA", (w, h), (*base, 255 if paper is not None else 0))
    d = ImageDraw.Draw(layer)
    zebra = tuple(int(0.88 * p + 0.12 * k) for p, k in zip(paper or ink, ink))
    on_ink = paper or ((0, 0, 0) if _luma(ink) > 128 else (255, 255, 255))
    colors = {"ink": (*ink, 255), "paper": (*on_ink, 255),
              "zebra": (*zebra, 255)}
    for op in ops:
        if op[0] == "rect":
            _, x1, y1, x2, y2, ck = op
            if ck == "zebra" and paper is None:
                continue  # no stripes on a table printed straight on the pack
            if x2 > x1 and y2 > y1:
                d.rectangle((x1, y1, x2 - 1, y2 - 1), fill=colors[ck])
        else:
            _, x, y, s, role, size, ck, anchor = op
            d.text((x, y), s, font=_font(role, size), fill=colors[ck], anchor=anchor)
    return layer


def _est_units(style: str, content: dict) -> float:
    """Rough table height per unit of body font size, for the first layout guess."""
    if style == "us":
        return 14.0 + 1.35 * (len(content["rows"]) + len(content["vitamins"])) + \
            (4.0 if content["footnote"] else 0.0)
    return (1.7 if content["title"] else 0.0) + 1.8 * (len(content["rows"]) + 1)


@dataclass
class _Table:
    style: str
    content: dict
    fs: int
    angle: float
    size: tuple[int, int]  # the rotated layer's full size (reserved on the canvas)
    crop: Rect = (0, 0, 0, 0)  # the drawn pixels' bbox inside the rotated layer
    layer: Image.Image | None = None  # RGB, cropped to ``crop``
    mask: Image.Image | None = None  # L, cropped to ``crop``; the paste mask


def _render_layer(style: str, content: dict, fs: int, angle: float, paper: Color | None,
                  ink: Color) -> Image.Image:
    layer = _draw_table(style, content, fs, paper, ink)
    if angle:
        layer = layer.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True,
                             fillcolor=(*(paper or ink), 0))
    return layer


def _finish(t: _Table, paper: Color | None, ink: Color) -> bool:
    """Draw ``t`` in its final colours; the mask and the crop are taken from this drawing."""
    full = _render_layer(t.style, t.content, t.fs, t.angle, paper, ink)
    mask = full.getchannel("A").point(_ALPHA_LUT)
    crop = mask.getbbox()
    if crop is None or full.size != t.size:
        return False
    t.crop = crop
    t.layer, t.mask = full.crop(crop).convert("RGB"), mask.crop(crop)
    return True


def _make_table(rng: np.random.Generator, cfg: GeneratorConfig, style: str, target_h: float,
                max_w: int, max_h: int) -> _Table | None:
    """Lay out one table about ``target_h`` high that fits ``max_w`` x ``max_h`` when rotated.

    The result has its full rotated size but is not drawn yet (see :func:`_finish`), so that
    its colours can depend on where it lands.
    """
    content = _us_content(rng) if style == "us" else _eu_content(rng)
    angle = 0.0
    if cfg.max_rotation_deg > 0 and rng.random() < cfg.rotation_prob:
        angle = float(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
    layout = _us_layout if style == "us" else _eu_layout
    fs = max(4, int(target_h / _est_units(style, content)))
    w, h, _ = layout(content, fs)
    fs = max(4, int(fs * target_h / h))
    for _ in range(8):
        w, h, _ = layout(content, fs)
        size = _rotated_size(w, h, angle)
        if size[0] <= max_w and size[1] <= max_h:
            return _Table(style, content, fs, angle, size)
        if fs <= 4:
            return None
        fs = max(4, min(fs - 1, int(fs * min(max_w / size[0], max_h / size[1]))))
    return None


def _rotated_size(w: int, h: int, angle: float) -> tuple[int, int]:
    """The size ``Image.rotate(angle, expand=True)`` gives a ``w`` x ``h`` image."""
    if not angle:
        return w, h
    return Image.new("L", (w, h)).rotate(angle, expand=True).size


# --------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------


def _intersects(a: Rect, b: Rect, margin: int = 0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or
                a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _place(rng: np.random.Generator, W: int, H: int, w: int, h: int, taken: list[Rect],
           margin: int, tries: int = 12) -> Rect | None:
    if w > W or h > H:
        return None
    for _ in range(tries):
        x = int(rng.integers(0, W - w + 1))
        y = int(rng.integers(0, H - h + 1))
        r = (x, y, x + w, y + h)
        if not any(_intersects(r, t, margin) for t in taken):
            return r
    return None


def _background(rng: np.random.Generator, W: int, H: int) -> Image.Image:
    c1 = _rand_color(rng, 30, 256)
    if rng.random() < 0.55:
        return Image.new("RGB", (W, H), c1)
    c2 = _rand_color(rng, 30, 256)
    t = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    ramp = (np.array(c1, np.float32) * (1 - t) + np.array(c2, np.float32) * t).astype(np.uint8)
    strip = Image.fromarray(ramp[None, :, :] if rng.random() < 0.5 else ramp[:, None, :])
    return strip.resize((W, H), Image.Resampling.BILINEAR)


def _panels(rng: np.random.Generator, img: Image.Image) -> None:
    d = ImageDraw.Draw(img)
    W, H = img.size
    for _ in range(int(rng.integers(0, 4))):
        w = int(W * rng.uniform(0.2, 1.0))
        h = int(H * rng.uniform(0.1, 0.6))
        x = int(rng.integers(-w // 4, W - w // 2))
        y = int(rng.integers(-h // 4, H - h // 2))
        col = _rand_color(rng, 20, 256)
        if rng.random() < 0.4:
            d.rounded_rectangle((x, y, x + w, y + h), radius=int(min(w, h) * 0.15), fill=col)
        elif rng.random() < 0.3:
            d.ellipse((x, y, x + w, y + h), fill=col)
        else:
            d.rectangle((x, y, x + w, y + h), fill=col)


def _local_bg(img: Image.Image, r: Rect) -> Color:
    x = min(max(0, (r[0] + r[2]) // 2), img.width - 1)
    y = min(max(0, (r[1] + r[3]) // 2), img.height - 1)
    return img.getpixel((x, y))  # type: ignore[return-value]


def _draw_lines(d: ImageDraw.ImageDraw, x: int, y: int, lines: Iterable[str], role: str,
                size: int, fill: Color) -> None:
    for ln in lines:
        d.text((x, y), ln, font=_font(role, size), fill=fill)
        y += _line_h(size)


def _distractors(rng: np.random.Generator, img: Image.Image, taken: list[Rect]) -> None:
    """Brand, product name, slogans, ingredients, logos, barcode, weight and a note box."""
    W, H = img.size
    d = ImageDraw.Draw(img)
    S = min(W, H)
    margin = max(2, S // 80)
    kinds = ["brand", "product", "ingredients", "weight"]
    kinds += ["slogan"] * int(rng.integers(0, 3))
    kinds += ["logo"] * int(rng.integers(0, 3))
    if rng.random() < 0.6:
        kinds.append("barcode")
    if rng.random() < 0.4:
        kinds.append("note")
    order = rng.permutation(len(kinds))
    for k in (kinds[int(i)] for i in order):
        if k in ("brand", "product", "slogan", "weight"):
            if k == "brand":
                text = f"{_pick(rng, _BRAND_A)} {_pick(rng, _BRAND_B)}"
                size = int(S * rng.uniform(0.06, 0.13))
                role = _pick(rng, ("sans_bold", "serif_bold"))
            elif k == "product":
                text = _pick(rng, _PRODUCTS)
                size = int(S * rng.uniform(0.04, 0.08))
                role = _pick(rng, ("sans", "serif", "sans_bold"))
            elif k == "slogan":
                text = _pick(rng, _SLOGANS)
                size = int(S * rng.uniform(0.03, 0.06))
                role = _pick(rng, ("sans_bold", "serif_bold"))
            else:
                text = _pick(rng, _WEIGHTS)
                size, role = int(S * rng.uniform(0.025, 0.045)), "sans"
            size = max(6, size)
            w, h = _text_w(role, size, text), _line_h(size)
            r = _place(rng, W, H, w, h, taken, margin)
            if r is None:
                continue
            badge = k == "slogan" and rng.random() < 0.4
            if badge:
                d.rounded_rectangle((r[0] - margin, r[1] - margin, r[2] + margin, r[3] + margin),
                                    radius=h // 2, fill=_rand_color(rng, 0, 256))
            d.text((r[0], r[1]), text, font=_font(role, size),
                   fill=_contrast_ink(rng, _local_bg(img, r)))
            taken.append(r)
        elif k == "ingredients":
            size = max(5, int(S * rng.uniform(0.014, 0.026)))
            width = int(W * rng.uniform(0.3, 0.6))
            n = int(rng.integers(5, 16))
            items = [_pick(rng, _INGREDIENTS) for _ in range(n)]
            head = _pick(rng, ("Ingredients: ", "INGREDIENTS: ", "Zutaten: "))
            text = head + ", ".join(items) + "."
            lines = _wrap(text, "sans", size, width)
            r = _place(rng, W, H, width, len(lines) * _line_h(size), taken, margin)
            if r is None:
                continue
            _draw_lines(d, r[0], r[1], lines, "sans", size, _contrast_ink(rng, _local_bg(img, r)))
            taken.append(r)
        elif k == "logo":
            s = int(S * rng.uniform(0.08, 0.2))
            r = _place(rng, W, H, s, s, taken, margin)
            if r is None:
                continue
            col = _rand_color(rng)
            shape = int(rng.integers(0, 4))
            if shape == 0:
                d.ellipse(r, fill=col, outline=_rand_color(rng), width=max(1, s // 15))
            elif shape == 1:
                d.regular_polygon((r[0] + s / 2, r[1] + s / 2, s / 2), int(rng.integers(3, 9)),
                                  rotation=float(rng.uniform(0, 360)), fill=col)
            elif shape == 2:
                cx, cy = r[0] + s / 2, r[1] + s / 2
                radii = [s / 2 if i % 2 == 0 else s / 5 for i in range(10)]
                angles = [math.pi * i / 5 - math.pi / 2 for i in range(10)]
                pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip(radii, angles)]
                d.polygon(pts, fill=col)
            else:
                d.rounded_rectangle(r, radius=s // 5, fill=col)
                letter = _pick(rng, "ABCDEFGHKMNPRSTW")
                f = _font("serif_bold", max(6, int(s * 0.6)))
                d.text((r[0] + s // 2, r[1] + s // 2), letter, font=f, anchor="mm",
                       fill=_contrast_ink(rng, col))
            taken.append(r)
        elif k == "barcode":
            mod = max(1, int(S * rng.uniform(0.002, 0.005)))
            bw, bh = 100 * mod, int(mod * rng.uniform(25, 45))
            dsz = max(5, int(mod * 8))
            r = _place(rng, W, H, bw, bh + _line_h(dsz), taken, margin)
            if r is None:
                continue
            d.rectangle(r, fill=(255, 255, 255))
            x = r[0] + 3 * mod
            bars = rng.integers(1, 4, size=60)
            for i, b in enumerate(bars):
                if x + int(b) * mod > r[2] - 3 * mod:
                    break
                if i % 2 == 0:
                    d.rectangle((x, r[1] + mod, x + int(b) * mod - 1, r[1] + bh), fill=(0, 0, 0))
                x += int(b) * mod
            digits = "".join(str(int(v)) for v in rng.integers(0, 10, size=13))
            d.text(((r[0] + r[2]) // 2, r[1] + bh), digits, font=_font("mono", dsz),
                   fill=(0, 0, 0), anchor="ma")
            taken.append(r)
        elif k == "note":
            lines = _pick(rng, _NOTES)
            size = max(5, int(S * rng.uniform(0.016, 0.028)))
            pad = max(2, size // 2)
            w = max(_text_w("sans", size, ln) for ln in lines) + 2 * pad
            h = len(lines) * _line_h(size) + 2 * pad
            r = _place(rng, W, H, w, h, taken, margin)
            if r is None:
                continue
            ink = _contrast_ink(rng, _local_bg(img, r))
            d.rectangle((r[0], r[1], r[2] - 1, r[3] - 1), outline=ink, width=max(1, size // 10))
            _draw_lines(d, r[0] + pad, r[1] + pad, lines, "sans", size, ink)
            taken.append(r)


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _image_size(rng: np.random.Generator, cfg: GeneratorConfig) -> tuple[int, int]:
    if cfg.size is not None:
        return int(cfg.size[0]), int(cfg.size[1])
    aspect = math.exp(rng.uniform(math.log(cfg.min_aspect), math.log(cfg.max_aspect)))
    long_side = int(rng.integers(cfg.min_side, cfg.max_side + 1))
    w, h = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)

    def clamp(v: float) -> int:
        return int(min(cfg.max_side, max(cfg.min_side, round(v))))

    return clamp(w), clamp(h)


def _degrade(rng: np.random.Generator, cfg: GeneratorConfig, img: Image.Image) -> Image.Image:
    if rng.random() < cfg.blur_prob and cfg.max_blur_radius > 0:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, cfg.max_blur_radius))))
    if rng.random() < cfg.noise_prob and cfg.max_noise_sigma > 0:
        sigma = float(rng.uniform(1.0, cfg.max_noise_sigma))
        chans = 3 if rng.random() < 0.5 else 1  # colour or luminance noise
        noise = rng.standard_normal((img.height, img.width, chans), dtype=np.float32)
        noise *= sigma
        arr = np.asarray(img).astype(np.int16)
        arr += np.rint(noise).astype(np.int16)
        np.clip(arr, 0, 255, out=arr)
        img = Image.fromarray(arr.astype(np.uint8), "RGB")
    if rng.random() < cfg.jpeg_prob:
        q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    return img


def generate_label(seed: int, config: GeneratorConfig | None = None) -> LabelSample:
    """Generate one synthetic label image and its nutrition-table boxes from ``seed`` (>= 0)."""
    if seed < 0:
        raise ValueError("seed must be >= 0")
    cfg = config or GeneratorConfig()
    rng = np.random.default_rng(seed)
    W, H = _image_size(rng, cfg)
    u = rng.random()
    n_tables = 0 if u < cfg.none_fraction else 2 if u < cfg.none_fraction + cfg.two_fraction else 1
    style = str(_pick(rng, cfg.styles))

    if cfg.background is not None:
        img = Image.new("RGB", (W, H), tuple(cfg.background))
    else:
        img = _background(rng, W, H)
        if cfg.distractors:
            _panels(rng, img)

    margin = max(1, min(W, H) // 60)
    tables: list[tuple[_Table, Rect]] = []
    if n_tables:
        shrink = 1.0
        for _attempt in range(4):
            tables = []
            for _ in range(n_tables):
                lo, hi = cfg.min_table_fraction, cfg.max_table_fraction
                if n_tables == 2:
                    lo, hi = lo * 0.6, hi * 0.6
                target_h = H * float(rng.uniform(lo, hi)) * shrink
                max_w = W - 2 * margin if n_tables == 1 else int((W - 3 * margin) * 0.98)
                t = _make_table(rng, cfg, style, target_h, max_w, H - 2 * margin)
                if t is None:
                    break
                r = _place(rng, W, H, t.size[0], t.size[1], [r for _, r in tables], margin,
                           tries=30)
                if r is None:
                    break
                tables.append((t, r))
            if len(tables) == n_tables:
                break
            shrink *= 0.7
        else:
            tables = []  # could not fit (tiny image): no table, and style says "none"
        done = []
        for t, r in tables:
            paper, ink = _table_colors(rng, cfg, style, img, r)
            if _finish(t, paper, ink):
                done.append((t, r))
        tables = done

    if cfg.distractors and cfg.background is None:
        _distractors(rng, img, [(r[0] - margin, r[1] - margin, r[2] + margin, r[3] + margin)
                                for _, r in tables])

    boxes: list[Box] = []
    for t, r in tables:
        assert t.layer is not None and t.mask is not None  # set by _finish
        x, y = r[0] + t.crop[0], r[1] + t.crop[1]
        img.paste(t.layer, (x, y), t.mask)
        boxes.append(Box(x, y, x + t.mask.width, y + t.mask.height))
    img = _degrade(rng, cfg, img)
    return LabelSample(
        image=img,
        boxes=boxes,
        grid_boxes=[pixels_to_grid(b, W, H) for b in boxes],
        style=style if boxes else "none",
        seed=seed,
        angles=[t.angle for t, _ in tables],
    )


def _table_colors(rng: np.random.Generator, cfg: GeneratorConfig, style: str,
                  img: Image.Image, r: Rect) -> tuple[Color | None, Color]:
    """(paper, or None when printed straight on the pack, and ink) for a table landing on ``r``.

    Honours the config overrides; a table printed on the pack gets an ink that reads on what
    lies below, and opaque paper when that is too busy.
    """
    if cfg.table_paper == "transparent":
        paper: Color | None = None
    elif cfg.table_paper is not None:
        paper = tuple(cfg.table_paper)  # type: ignore[assignment]
    elif style == "eu" and rng.random() < 0.35:
        paper = None
    else:
        paper = _pick(rng, _PAPERS)
    ink: Color = tuple(cfg.table_ink) if cfg.table_ink is not None else _pick(rng, _INKS)  # type: ignore[assignment]
    if paper is None and cfg.table_ink is None:
        below = np.asarray(img.crop(r).resize((8, 8), Image.Resampling.BOX), dtype=np.float32)
        luma = below @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if float(luma.max() - luma.min()) > 70 and cfg.table_paper is None:
            paper = _pick(rng, _PAPERS)
        else:
            ink = _contrast_ink(rng, below.reshape(-1, 3).mean(axis=0))
    return paper, ink


def sample_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of the data set ``seed`` (a 64-bit hash of both)."""
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be >= 0")
    words = np.random.SeedSequence(entropy=seed, spawn_key=(index,)).generate_state(2, np.uint32)
    return (int(words[0]) << 32) | int(words[1])


def generate_dataset(seed: int, count: int, config: GeneratorConfig | None = None,
                     start: int = 0) -> Iterator[LabelSample]:
    """Yield ``count`` samples, image ``i`` generated from ``sample_seed(seed, start + i)``.

    Data sets with different ``seed`` use unrelated image seeds, so they do not overlap; any
    single sample can be regenerated with ``generate_label(sample.seed, config)``.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    for i in range(start, start + count):
        yield generate_label(sample_seed(seed, i), config)


def write_dataset(folder: str | os.PathLike[str], samples: Iterable[LabelSample], *,
                  image_format: Literal["jpg", "png"] = "jpg", quality: int = 92,
                  names: Sequence[str] | None = None) -> Path:
    """Write images and ``labels.jsonl`` into ``folder``; returns the labels file's path.

    Each line: ``{"file", "width", "height", "boxes": [[x1, y1, x2, y2], ...], "style",
    "seed"}`` with pixel boxes. Files are ``000000.jpg``, ... unless ``names`` gives the
    names without extension. The labels file is written to a temporary name and renamed at the
    end, so a reader never sees half a file.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if image_format not in ("jpg", "png"):
        raise ValueError("image_format must be 'jpg' or 'png'")
    labels = out / "labels.jsonl"
    tmp = out / "labels.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        for i, s in enumerate(samples):
            stem = names[i] if names is not None else f"{i:06d}"
            if "/" in stem or "\\" in stem or stem in ("", ".", ".."):
                raise ValueError(f"bad file name {stem!r}")
            fname = f"{stem}.{image_format}"
            if image_format == "jpg":
                s.image.save(out / fname, format="JPEG", quality=quality)
            else:
                s.image.save(out / fname, format="PNG")
            rec = {"file": fname, "width": s.width, "height": s.height,
                   "boxes": [[int(v) for v in b.as_tuple()] for b in s.boxes],
                   "style": s.style, "seed": s.seed}
            fh.write(json.dumps(rec) + "\n")
    tmp.replace(labels)
    return labels


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def benchmark(count: int = 200, side: int = 512, seed: int = 0) -> dict[str, float]:
    """Time ``count`` images of ``side`` x ``side`` with the default mix; returns ms stats."""
    cfg = GeneratorConfig(size=(side, side))
    generate_label(sample_seed(seed, 10**9), cfg)  # warm font cache
    times = []
    for s in (sample_seed(seed, i) for i in range(count)):
        t0 = time.perf_counter()
        generate_label(s, cfg)
        times.append((time.perf_counter() - t0) * 1000)
    a = np.array(times)
    return {"mean_ms": float(a.mean()), "median_ms": float(np.median(a)),
            "p95_ms": float(np.percentile(a, 95)), "max_ms": float(a.max())}


def main(argv: Sequence[str] | None = None) -> int:
    """``--out DIR --count N [--seed S]`` writes a data set; ``--bench N`` times the generator."""
    p = argparse.ArgumentParser(prog="python -m services.image_sets.generator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder to write images + labels.jsonl into")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--bench", type=int, metavar="N", help="time N images and print stats")
    p.add_argument("--side", type=int, default=512, help="image side for --bench")
    a = p.parse_args(argv)
    if a.bench:
        print(json.dumps(benchmark(a.bench, a.side, a.seed)))
        return 0
    if a.out is None:
        p.error("give --out DIR or --bench N")
    t0 = time.perf_counter()
    labels = write_dataset(a.out, generate_dataset(a.seed, a.count), image_format=a.format)
    print(f"wrote {a.count} images + {labels} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
