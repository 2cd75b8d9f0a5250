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

Modules: :mod:`~services.image_sets.fonts` (fonts and text), :mod:`~services.image_sets.palette`
(colours), :mod:`~services.image_sets.nutrition_tables` (the tables),
:mod:`~services.image_sets.pack_scene` (background and distractors), this one (configuration and
the generation of one image or a data set) and :mod:`~services.image_sets.dataset_writer`
(writing a data set to a folder; the command line).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

from services.core.boxes import Box, pixels_to_grid
from services.image_sets.nutrition_tables import Table, finish_table, make_table
from services.image_sets.pack_scene import background, distractors, panels, place
from services.image_sets.palette import INKS, PAPERS, Color, Rect, contrast_ink, pick

STYLES: tuple[str, ...] = ("us", "eu")


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
    style = str(pick(rng, cfg.styles))

    if cfg.background is not None:
        img = Image.new("RGB", (W, H), tuple(cfg.background))
    else:
        img = background(rng, W, H)
        if cfg.distractors:
            panels(rng, img)

    margin = max(1, min(W, H) // 60)
    tables: list[tuple[Table, Rect]] = []
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
                t = make_table(rng, style, target_h, max_w, H - 2 * margin, cfg.rotation_prob,
                               cfg.max_rotation_deg)
                if t is None:
                    break
                r = place(rng, W, H, t.size[0], t.size[1], [r for _, r in tables], margin,
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
            if finish_table(t, paper, ink):
                done.append((t, r))
        tables = done

    if cfg.distractors and cfg.background is None:
        distractors(rng, img, [(r[0] - margin, r[1] - margin, r[2] + margin, r[3] + margin)
                                for _, r in tables])

    boxes: list[Box] = []
    for t, r in tables:
        assert t.layer is not None and t.mask is not None  # set by finish_table
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
        paper = pick(rng, PAPERS)
    ink: Color = tuple(cfg.table_ink) if cfg.table_ink is not None else pick(rng, INKS)  # type: ignore[assignment]
    if paper is None and cfg.table_ink is None:
        below = np.asarray(img.crop(r).resize((8, 8), Image.Resampling.BOX), dtype=np.float32)
        luma = below @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if float(luma.max() - luma.min()) > 70 and cfg.table_paper is None:
            paper = pick(rng, PAPERS)
        else:
            ink = contrast_ink(rng, below.reshape(-1, 3).mean(axis=0))
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
