"""The package scene behind the nutrition tables: background, panels and distractors.

Distractors are what a real pack shows besides its nutrition table: brand and product names,
slogans (some on a badge), an ingredients paragraph, simple logos, a barcode, the net weight and
a bordered storage/allergy note. Each is placed where it overlaps nothing already taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from services.image_sets.fonts import draw_lines, font, line_height, text_width, wrap_text
from services.image_sets.palette import Color, Rect, contrast_ink, pick, rand_color

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


def _intersects(a: Rect, b: Rect, margin: int = 0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or
                a[3] + margin <= b[1] or b[3] + margin <= a[1])


def place(rng: np.random.Generator, W: int, H: int, w: int, h: int, taken: list[Rect],
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


def background(rng: np.random.Generator, W: int, H: int) -> Image.Image:
    c1 = rand_color(rng, 30, 256)
    if rng.random() < 0.55:
        return Image.new("RGB", (W, H), c1)
    c2 = rand_color(rng, 30, 256)
    t = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    ramp = (np.array(c1, np.float32) * (1 - t) + np.array(c2, np.float32) * t).astype(np.uint8)
    strip = Image.fromarray(ramp[None, :, :] if rng.random() < 0.5 else ramp[:, None, :])
    return strip.resize((W, H), Image.Resampling.BILINEAR)


def panels(rng: np.random.Generator, img: Image.Image) -> None:
    d = ImageDraw.Draw(img)
    W, H = img.size
    for _ in range(int(rng.integers(0, 4))):
        w = int(W * rng.uniform(0.2, 1.0))
        h = int(H * rng.uniform(0.1, 0.6))
        x = int(rng.integers(-w // 4, W - w // 2))
        y = int(rng.integers(-h // 4, H - h // 2))
        col = rand_color(rng, 20, 256)
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


@dataclass
class _Pack:
    """The image being decorated, its draw handle, and the rectangles already taken."""

    img: Image.Image
    draw: ImageDraw.ImageDraw
    taken: list[Rect]
    side: int  # the image's shorter side; distractor sizes are fractions of it
    margin: int

    def place(self, rng: np.random.Generator, w: int, h: int) -> Rect | None:
        return place(rng, self.img.width, self.img.height, w, h, self.taken, self.margin)


def _words_style(rng: np.random.Generator, kind: str, S: int) -> tuple[str, int, str]:
    """(text, font size, font role) of a one-line distractor: brand, product, slogan or weight."""
    if kind == "brand":
        text = f"{pick(rng, _BRAND_A)} {pick(rng, _BRAND_B)}"
        size = int(S * rng.uniform(0.06, 0.13))
        role = pick(rng, ("sans_bold", "serif_bold"))
    elif kind == "product":
        text = pick(rng, _PRODUCTS)
        size = int(S * rng.uniform(0.04, 0.08))
        role = pick(rng, ("sans", "serif", "sans_bold"))
    elif kind == "slogan":
        text = pick(rng, _SLOGANS)
        size = int(S * rng.uniform(0.03, 0.06))
        role = pick(rng, ("sans_bold", "serif_bold"))
    else:
        text = pick(rng, _WEIGHTS)
        size, role = int(S * rng.uniform(0.025, 0.045)), "sans"
    return text, max(6, size), role


def _words(rng: np.random.Generator, pack: _Pack, kind: str) -> None:
    """One line of text; a slogan sits on a coloured badge 40% of the time."""
    text, size, role = _words_style(rng, kind, pack.side)
    w, h = text_width(role, size, text), line_height(size)
    r = pack.place(rng, w, h)
    if r is None:
        return
    d, margin = pack.draw, pack.margin
    badge = kind == "slogan" and rng.random() < 0.4
    if badge:
        d.rounded_rectangle((r[0] - margin, r[1] - margin, r[2] + margin, r[3] + margin),
                            radius=h // 2, fill=rand_color(rng, 0, 256))
    d.text((r[0], r[1]), text, font=font(role, size),
           fill=contrast_ink(rng, _local_bg(pack.img, r)))
    pack.taken.append(r)


def _ingredients(rng: np.random.Generator, pack: _Pack) -> None:
    """An "Ingredients: ..." paragraph wrapped to 30-60% of the image width."""
    size = max(5, int(pack.side * rng.uniform(0.014, 0.026)))
    width = int(pack.img.width * rng.uniform(0.3, 0.6))
    n = int(rng.integers(5, 16))
    items = [pick(rng, _INGREDIENTS) for _ in range(n)]
    head = pick(rng, ("Ingredients: ", "INGREDIENTS: ", "Zutaten: "))
    text = head + ", ".join(items) + "."
    lines = wrap_text(text, "sans", size, width)
    r = pack.place(rng, width, len(lines) * line_height(size))
    if r is None:
        return
    draw_lines(pack.draw, r[0], r[1], lines, "sans", size,
               contrast_ink(rng, _local_bg(pack.img, r)))
    pack.taken.append(r)


def _logo(rng: np.random.Generator, pack: _Pack) -> None:
    """A square logo: a ringed disc, a regular polygon, a star or a letter on a rounded square."""
    s = int(pack.side * rng.uniform(0.08, 0.2))
    r = pack.place(rng, s, s)
    if r is None:
        return
    d = pack.draw
    col = rand_color(rng)
    shape = int(rng.integers(0, 4))
    if shape == 0:
        d.ellipse(r, fill=col, outline=rand_color(rng), width=max(1, s // 15))
    elif shape == 1:
        d.regular_polygon((r[0] + s / 2, r[1] + s / 2, s / 2), int(rng.integers(3, 9)),
                          rotation=float(rng.uniform(0, 360)), fill=col)
    elif shape == 2:
        cx, cy = r[0] + s / 2, r[1] + s / 2
        radii = [s / 2 if i % 2 == 0 else s / 5 for i in range(10)]
        angles = [math.pi * i / 5 - math.pi / 2 for i in range(10)]
        pts = [(cx + rad * math.cos(a), cy + rad * math.sin(a)) for rad, a in zip(radii, angles)]
        d.polygon(pts, fill=col)
    else:
        d.rounded_rectangle(r, radius=s // 5, fill=col)
        letter = pick(rng, "ABCDEFGHKMNPRSTW")
        f = font("serif_bold", max(6, int(s * 0.6)))
        d.text((r[0] + s // 2, r[1] + s // 2), letter, font=f, anchor="mm",
               fill=contrast_ink(rng, col))
    pack.taken.append(r)


def _barcode(rng: np.random.Generator, pack: _Pack) -> None:
    """Black bars of random widths on white, with 13 digits below."""
    mod = max(1, int(pack.side * rng.uniform(0.002, 0.005)))
    bw, bh = 100 * mod, int(mod * rng.uniform(25, 45))
    dsz = max(5, int(mod * 8))
    r = pack.place(rng, bw, bh + line_height(dsz))
    if r is None:
        return
    d = pack.draw
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
    d.text(((r[0] + r[2]) // 2, r[1] + bh), digits, font=font("mono", dsz),
           fill=(0, 0, 0), anchor="ma")
    pack.taken.append(r)


def _note(rng: np.random.Generator, pack: _Pack) -> None:
    """A storage or allergy note of a few lines in a thin frame."""
    lines = pick(rng, _NOTES)
    size = max(5, int(pack.side * rng.uniform(0.016, 0.028)))
    pad = max(2, size // 2)
    w = max(text_width("sans", size, ln) for ln in lines) + 2 * pad
    h = len(lines) * line_height(size) + 2 * pad
    r = pack.place(rng, w, h)
    if r is None:
        return
    ink = contrast_ink(rng, _local_bg(pack.img, r))
    pack.draw.rectangle((r[0], r[1], r[2] - 1, r[3] - 1), outline=ink, width=max(1, size // 10))
    draw_lines(pack.draw, r[0] + pad, r[1] + pad, lines, "sans", size, ink)
    pack.taken.append(r)


_DRAW_KIND = {"ingredients": _ingredients, "logo": _logo, "barcode": _barcode, "note": _note}


def distractors(rng: np.random.Generator, img: Image.Image, taken: list[Rect]) -> None:
    """Brand, product name, slogans, ingredients, logos, barcode, weight and a note box.

    They are drawn in a random order, each where it overlaps nothing in ``taken`` (which grows);
    one that finds no room is left out.
    """
    W, H = img.size
    S = min(W, H)
    pack = _Pack(img, ImageDraw.Draw(img), taken, S, max(2, S // 80))
    kinds = ["brand", "product", "ingredients", "weight"]
    kinds += ["slogan"] * int(rng.integers(0, 3))
    kinds += ["logo"] * int(rng.integers(0, 3))
    if rng.random() < 0.6:
        kinds.append("barcode")
    if rng.random() < 0.4:
        kinds.append("note")
    order = rng.permutation(len(kinds))
    for k in (kinds[int(i)] for i in order):
        if k in _DRAW_KIND:
            _DRAW_KIND[k](rng, pack)
        else:
            _words(rng, pack, k)
