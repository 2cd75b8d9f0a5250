"""Nutrition tables of the label generator: content, layout and drawing of the two styles.

* ``"us"``: the US "Nutrition Facts" panel (title, servings, thick/medium/thin rules, calories,
  nutrient rows with amounts and %DV, vitamins, footnote);
* ``"eu"``: the European column table ("Nutrition declaration", "per 100 g", optionally
  "per portion"), a grid of two or three columns.

Content is drawn once from the rng; the layout is a pure function of the content and the body
font size (a list of draw ops), so :func:`make_table` can try sizes until the table fits. A table
is drawn on its own RGBA layer (opaque paper, or transparent where nothing was drawn when it is
printed straight on the pack), optionally rotated; :func:`finish_table` takes the paste mask and
its bounding box from that drawing, which is the table's ground-truth box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from services.image_sets.fonts import font, line_height, text_width, wrap_text
from services.image_sets.palette import Color, Rect, luma, pick

ALPHA_THRESHOLD = 16  # layer alpha below this is cleared before pasting (invisible fringe)
_ALPHA_LUT = [0] * ALPHA_THRESHOLD + list(range(ALPHA_THRESHOLD, 256))

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


def _fmt_amount(rng: np.random.Generator, hi: float, unit: str) -> str:
    v = float(rng.uniform(0, hi))
    if v < 1:
        s = f"{v:.1f}".replace(".0", "") if rng.random() < 0.7 else "<0.5"
    elif v < 10 and rng.random() < 0.5:
        s = f"{v:.1f}"
    else:
        s = str(round(v))
    return f"{s}{unit}"


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
        "serving": pick(rng, ("2/3 cup (55g)", "1 bar (40g)", "1 cup (240mL)", "3 pieces (28g)",
                               "2 Tbsp (32g)", "1 package (85g)")),
        "calories": str(int(rng.integers(10, 600))),
        "rows": rows,
        "vitamins": vitamins,
        "footnote": rng.random() < 0.8,
        "width_extra": float(rng.uniform(0.0, 0.25)),
    }


@dataclass(frozen=True)
class _UsSizes:
    """Pixel sizes of a US panel, all derived from the body font size ``fs``."""

    fs: int
    pad: int
    border: int
    thin: int
    medium: int
    thick: int
    title_sz: int
    big_sz: int
    hdr_sz: int
    small_sz: int
    indent_px: int
    gap: int

    @classmethod
    def of(cls, fs: int) -> _UsSizes:
        fs = max(4, fs)
        return cls(fs=fs, pad=max(2, round(fs * 0.45)), border=max(1, round(fs * 0.12)),
                   thin=max(1, round(fs * 0.08)), medium=max(2, round(fs * 0.3)),
                   thick=max(3, round(fs * 0.75)), title_sz=round(fs * 2.3),
                   big_sz=round(fs * 2.0), hdr_sz=fs + max(1, fs // 8),
                   small_sz=max(4, round(fs * 0.78)), indent_px=round(fs * 1.1),
                   gap=round(fs * 0.6))


@dataclass
class _Pen:
    """Appends draw ops between the columns ``x0`` and ``x1``, moving down from ``y``."""

    x0: int
    x1: int
    y: int
    ops: list[Op] = field(default_factory=list)

    def text(self, x: int, yy: int, s: str, role: str, size: int, anchor: str = "la") -> None:
        if s:
            self.ops.append(("text", x, yy, s, role, size, "ink", anchor))

    def rule(self, th: int) -> None:
        self.ops.append(("rect", self.x0, self.y, self.x1, self.y + th, "ink"))
        self.y += th


def _us_inner_width(c: dict, z: _UsSizes) -> int:
    """Width between the paddings: the widest line, widened by the content's ``width_extra``."""
    fs, gap = z.fs, z.gap
    inner = text_width("sans_bold", z.title_sz, "Nutrition Facts")
    for name, amount, bold, indent, dv in c["rows"]:
        w = indent * z.indent_px + text_width("sans_bold" if bold else "sans", fs, name) + gap \
            + text_width("sans", fs, amount) + gap + text_width("sans_bold", fs, dv or "00%")
        inner = max(inner, w)
    inner = max(inner, text_width("sans_bold", z.hdr_sz, "Serving size") + gap
                + text_width("sans_bold", z.hdr_sz, c["serving"]))
    return int(inner * (1.0 + c["width_extra"]))


def _us_head(pen: _Pen, c: dict, z: _UsSizes) -> None:
    """Title, servings, serving size, calories and the "% Daily Value*" heading."""
    fs, x0, x1 = z.fs, pen.x0, pen.x1
    pen.text(x0, pen.y, "Nutrition Facts", "sans_bold", z.title_sz)
    pen.y += line_height(z.title_sz)
    pen.rule(z.thin)
    pen.y += max(1, fs // 6)
    pen.text(x0, pen.y, c["servings"], "sans", fs)
    pen.y += line_height(fs)
    pen.text(x0, pen.y, "Serving size", "sans_bold", z.hdr_sz)
    pen.text(x1, pen.y, c["serving"], "sans_bold", z.hdr_sz, "ra")
    pen.y += line_height(z.hdr_sz)
    pen.rule(z.thick)
    pen.y += max(1, fs // 6)
    pen.text(x0, pen.y, "Amount per serving", "sans_bold", z.small_sz)
    pen.y += line_height(z.small_sz)
    pen.text(x0, pen.y + round(z.big_sz * 0.15), "Calories", "sans_bold", round(z.big_sz * 0.8))
    pen.text(x1, pen.y, c["calories"], "sans_bold", z.big_sz, "ra")
    pen.y += line_height(z.big_sz)
    pen.rule(z.medium)
    pen.y += max(1, fs // 6)
    pen.text(x1, pen.y, "% Daily Value*", "sans_bold", z.small_sz, "ra")
    pen.y += line_height(z.small_sz)


def _us_nutrients(pen: _Pen, c: dict, z: _UsSizes) -> None:
    """The nutrient rows (name, amount, %DV), each under a thin rule, closed by a thick one."""
    fs = z.fs
    for name, amount, bold, indent, dv in c["rows"]:
        pen.rule(z.thin)
        pen.y += max(1, fs // 8)
        xn = pen.x0 + indent * z.indent_px
        role = "sans_bold" if bold else "sans"
        pen.text(xn, pen.y, name, role, fs)
        if amount:
            pen.text(xn + text_width(role, fs, name) + round(fs * 0.3), pen.y, amount, "sans", fs)
        pen.text(pen.x1, pen.y, dv, "sans_bold", fs, "ra")
        pen.y += line_height(fs)
    pen.rule(z.thick)


def _us_vitamins_and_footnote(pen: _Pen, c: dict, z: _UsSizes, inner: int) -> None:
    """The vitamin rows, the closing rule and the optional footnote wrapped to ``inner``."""
    fs = z.fs
    for name, dv in c["vitamins"]:
        pen.y += max(1, fs // 8)
        pen.text(pen.x0, pen.y, name, "sans", fs)
        pen.text(pen.x1, pen.y, dv, "sans", fs, "ra")
        pen.y += line_height(fs)
        pen.rule(z.thin)
    pen.y += z.medium
    pen.rule(z.medium - z.thin)
    if c["footnote"]:
        pen.y += max(1, fs // 6)
        for line in wrap_text(_US_FOOTNOTE, "sans", z.small_sz, inner):
            pen.text(pen.x0, pen.y, line, "sans", z.small_sz)
            pen.y += line_height(z.small_sz)


def _us_layout(c: dict, fs: int) -> tuple[int, int, list[Op]]:
    """Ops of a US "Nutrition Facts" panel at body font size ``fs``; returns (w, h, ops)."""
    z = _UsSizes.of(fs)
    inner = _us_inner_width(c, z)
    w = inner + 2 * z.pad + 2 * z.border
    pen = _Pen(x0=z.border + z.pad, x1=z.border + z.pad + inner, y=z.border + z.pad // 2)
    _us_head(pen, c, z)
    _us_nutrients(pen, c, z)
    _us_vitamins_and_footnote(pen, c, z, inner)
    h = pen.y + z.pad + z.border
    # the border frame, drawn first so that text stays on top
    b = z.border
    frame = [("rect", 0, 0, w, b, "ink"), ("rect", 0, h - b, w, h, "ink"),
             ("rect", 0, 0, b, h, "ink"), ("rect", w - b, 0, w, h, "ink")]
    return w, h, frame + pen.ops


def _eu_content(rng: np.random.Generator) -> dict:
    lang = pick(rng, ("en", "en", "en", "de", "fr"))
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
        "title": pick(rng, L["titles"]) if rng.random() < 0.6 else "",
        "header": [pick(rng, L["head"]), pick(rng, L["per100"]),
                   pick(rng, L["portion"]).format(p=portion)][: 3 if three else 2],
        "rows": rows,
        "grid": pick(rng, ("full", "full", "rows", "frame")),
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
    colw = [text_width(hrole, fs, h) for h in c["header"]]
    for name, vals, indent in c["rows"]:
        colw[0] = max(colw[0], text_width("sans", fs, name) + (indent_px if indent else 0))
        for i in range(1, n):
            colw[i] = max(colw[i], text_width("sans", fs, vals[i - 1]))
    colw = [cw + 2 * cp for cw in colw]
    w = sum(colw) + (n + 1) * line
    xs = [0]
    for cw in colw:
        xs.append(xs[-1] + line + cw)
    ops: list[Op] = []
    y = 0
    if c["title"]:
        tw = text_width("sans_bold", title_sz, c["title"])
        w = max(w, tw)
        ops.append(("text", 0, 0, c["title"], "sans_bold", title_sz, "ink", "la"))
        y = line_height(title_sz) + vp
    grid_top = y
    row_h = line_height(fs) + 2 * vp
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
    on_ink = paper or ((0, 0, 0) if luma(ink) > 128 else (255, 255, 255))
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
            d.text((x, y), s, font=font(role, size), fill=colors[ck], anchor=anchor)
    return layer


def _est_units(style: str, content: dict) -> float:
    """Rough table height per unit of body font size, for the first layout guess."""
    if style == "us":
        return 14.0 + 1.35 * (len(content["rows"]) + len(content["vitamins"])) + \
            (4.0 if content["footnote"] else 0.0)
    return (1.7 if content["title"] else 0.0) + 1.8 * (len(content["rows"]) + 1)


@dataclass
class Table:
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


def finish_table(t: Table, paper: Color | None, ink: Color) -> bool:
    """Draw ``t`` in its final colours; the mask and the crop are taken from this drawing."""
    full = _render_layer(t.style, t.content, t.fs, t.angle, paper, ink)
    mask = full.getchannel("A").point(_ALPHA_LUT)
    crop = mask.getbbox()
    if crop is None or full.size != t.size:
        return False
    t.crop = crop
    t.layer, t.mask = full.crop(crop).convert("RGB"), mask.crop(crop)
    return True


def make_table(rng: np.random.Generator, style: str, target_h: float, max_w: int, max_h: int,
               rotation_prob: float, max_rotation_deg: float) -> Table | None:
    """Lay out one table about ``target_h`` high that fits ``max_w`` x ``max_h`` when rotated.

    With probability ``rotation_prob`` it is rotated by up to ``max_rotation_deg`` degrees
    either way. The result has its full rotated size but is not drawn yet (see :func:`finish_table`), so that
    its colours can depend on where it lands.
    """
    content = _us_content(rng) if style == "us" else _eu_content(rng)
    angle = 0.0
    if max_rotation_deg > 0 and rng.random() < rotation_prob:
        angle = float(rng.uniform(-max_rotation_deg, max_rotation_deg))
    layout = _us_layout if style == "us" else _eu_layout
    fs = max(4, int(target_h / _est_units(style, content)))
    w, h, _ = layout(content, fs)
    fs = max(4, int(fs * target_h / h))
    for _ in range(8):
        w, h, _ = layout(content, fs)
        size = _rotated_size(w, h, angle)
        if size[0] <= max_w and size[1] <= max_h:
            return Table(style, content, fs, angle, size)
        if fs <= 4:
            return None
        fs = max(4, min(fs - 1, int(fs * min(max_w / size[0], max_h / size[1]))))
    return None


def _rotated_size(w: int, h: int, angle: float) -> tuple[int, int]:
    """The size ``Image.rotate(angle, expand=True)`` gives a ``w`` x ``h`` image."""
    if not angle:
        return w, h
    return Image.new("L", (w, h)).rotate(angle, expand=True).size
