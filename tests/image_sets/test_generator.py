"""Tests of the synthetic label generator: exact boxes, determinism, seeds, table counts."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from services.core.boxes import GRID, pixels_to_grid
from services.image_sets.generator import (
    GeneratorConfig,
    LabelSample,
    generate_dataset,
    generate_label,
    sample_seed,
)

WHITE = (255, 255, 255)
MAGENTA = (255, 0, 255)
GREEN = (0, 150, 0)


def _plain(style: str, *, paper: object = MAGENTA, ink: tuple[int, int, int] = GREEN,
           rotation: float = 0.0, two: float = 0.0, **kw: object) -> GeneratorConfig:
    """A config that draws only tables, in known colours, on a plain white background."""
    return GeneratorConfig(background=WHITE, table_paper=paper, table_ink=ink,  # type: ignore[arg-type]
                           styles=(style,), none_fraction=0.0, two_fraction=two,
                           rotation_prob=rotation, max_rotation_deg=6.0,
                           blur_prob=0.0, noise_prob=0.0, jpeg_prob=0.0, **kw)  # type: ignore[arg-type]


def _drawn(sample: LabelSample) -> np.ndarray:
    """Mask of the pixels that differ from the plain background."""
    return (np.asarray(sample.image) != np.array(WHITE, np.uint8)).any(axis=2)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _check_boxes_exact(sample: LabelSample) -> None:
    mask = _drawn(sample)
    covered = np.zeros_like(mask)
    for b in sample.boxes:
        x1, y1, x2, y2 = (int(v) for v in b.as_tuple())
        assert (x1, y1, x2, y2) == b.as_tuple()
        sub = np.zeros_like(mask)
        sub[y1:y2, x1:x2] = mask[y1:y2, x1:x2]
        assert sub.any()
        assert _bbox(sub) == (x1, y1, x2, y2)  # tight: every edge of the box touches the table
        covered[y1:y2, x1:x2] = True
    assert not (mask & ~covered).any(), "drawn pixels outside every box"


# ------------------------------------------------------------------ boxes are what was drawn


@pytest.mark.parametrize("style", ["us", "eu"])
@pytest.mark.parametrize("seed", range(8))
def test_box_is_bbox_of_drawn_pixels_unrotated(style: str, seed: int) -> None:
    s = generate_label(seed, _plain(style))
    assert len(s.boxes) == 1 and s.angles == [0.0]
    _check_boxes_exact(s)


@pytest.mark.parametrize("style", ["us", "eu"])
@pytest.mark.parametrize("seed", range(8))
def test_box_is_bbox_of_drawn_pixels_rotated(style: str, seed: int) -> None:
    s = generate_label(seed, _plain(style, rotation=1.0))
    assert len(s.boxes) == 1 and s.angles[0] != 0.0
    _check_boxes_exact(s)  # pixel-exact: the box comes from the pasted alpha mask


@pytest.mark.parametrize("rotation", [0.0, 1.0])
@pytest.mark.parametrize("seed", range(6))
def test_box_exact_for_table_printed_on_pack(rotation: float, seed: int) -> None:
    """EU table without paper: only lines and text are drawn, the box hugs them."""
    s = generate_label(seed, _plain("eu", paper="transparent", ink=MAGENTA, rotation=rotation))
    _check_boxes_exact(s)


@pytest.mark.parametrize("style", ["us", "eu"])
@pytest.mark.parametrize("seed", range(5))
def test_two_tables_each_box_exact_and_disjoint(style: str, seed: int) -> None:
    s = generate_label(seed, _plain(style, rotation=0.5, two=1.0))
    assert len(s.boxes) == 2
    a, b = s.boxes
    assert a.x2 <= b.x1 or b.x2 <= a.x1 or a.y2 <= b.y1 or b.y2 <= a.y1
    _check_boxes_exact(s)


def test_fixed_size_and_size_ranges() -> None:
    s = generate_label(3, GeneratorConfig(size=(512, 384)))
    assert s.image.size == (512, 384) and s.image.mode == "RGB"
    cfg = GeneratorConfig()
    sizes = [generate_label(sample_seed(9, i), cfg).image.size for i in range(30)]
    for w, h in sizes:
        assert 320 <= w <= 1024 and 320 <= h <= 1024
        assert 0.3 <= w / h <= 3.2
    assert len(set(sizes)) > 20
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)


# ------------------------------------------------------------------ determinism and seeds


def test_same_seed_same_bytes_different_seed_differs() -> None:
    a, b, c = generate_label(42), generate_label(42), generate_label(43)
    assert a.image.tobytes() == b.image.tobytes() and a.boxes == b.boxes
    assert a.image.size != c.image.size or a.image.tobytes() != c.image.tobytes()


def test_dataset_seeds_are_reproducible_and_disjoint() -> None:
    cfg = GeneratorConfig(max_side=400)
    one = list(generate_dataset(1, 6, cfg))
    again = list(generate_dataset(1, 6, cfg))
    other = list(generate_dataset(2, 6, cfg))
    assert [s.image.tobytes() for s in one] == [s.image.tobytes() for s in again]
    assert [s.seed for s in one] == [sample_seed(1, i) for i in range(6)]
    assert not {s.seed for s in one} & {s.seed for s in other}
    assert not {s.image.tobytes() for s in one} & {s.image.tobytes() for s in other}
    # any sample can be regenerated alone, and start= continues a set
    assert generate_label(one[4].seed, cfg).image.tobytes() == one[4].image.tobytes()
    assert [s.seed for s in generate_dataset(1, 2, cfg, start=4)] == [one[4].seed, one[5].seed]
    seeds = {sample_seed(s, i) for s in range(20) for i in range(50)}
    assert len(seeds) == 1000


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate_label(-1)
    with pytest.raises(ValueError):
        GeneratorConfig(none_fraction=0.7, two_fraction=0.5)
    with pytest.raises(ValueError):
        GeneratorConfig(styles=("jp",))
    with pytest.raises(ValueError):
        GeneratorConfig(min_side=800, max_side=400)


# ------------------------------------------------------------------ table counts and grid


def test_none_and_two_table_fractions() -> None:
    cfg = GeneratorConfig(max_side=360, none_fraction=0.2, two_fraction=0.3, blur_prob=0,
                          noise_prob=0, jpeg_prob=0)
    n = 300
    counts = [len(s.boxes) for s in generate_dataset(7, n, cfg)]
    none, two = counts.count(0) / n, counts.count(2) / n
    # binomial sd is about 0.025; allow 4 sd
    assert abs(none - 0.2) < 0.1 and abs(two - 0.3) < 0.1
    assert set(counts) <= {0, 1, 2}
    for none_f, two_f, want in ((1.0, 0.0, 0), (0.0, 1.0, 2), (0.0, 0.0, 1)):
        c = GeneratorConfig(max_side=400, none_fraction=none_f, two_fraction=two_f)
        assert all(len(s.boxes) == want for s in generate_dataset(3, 15, c))


def test_style_field_and_grid_boxes() -> None:
    for s in generate_dataset(11, 40, GeneratorConfig(max_side=480, two_fraction=0.3)):
        W, H = s.image.size
        assert s.style in ("us", "eu", "none") and (s.style == "none") == (not s.boxes)
        assert len(s.grid_boxes) == len(s.boxes) == len(s.angles)
        for b, g in zip(s.boxes, s.grid_boxes):
            assert 0 <= b.x1 < b.x2 <= W and 0 <= b.y1 < b.y2 <= H
            assert g == pixels_to_grid(b, W, H)
            assert all(isinstance(v, int) and 0 <= v <= GRID for v in g.as_tuple())
            assert g.x1 < g.x2 and g.y1 < g.y2


def test_boxes_survive_degradations() -> None:
    """Blur/noise/JPEG come after the box: same seed with and without gives the same boxes."""
    base = GeneratorConfig(styles=("us",), none_fraction=0.0, two_fraction=0.0, size=(512, 512))
    clean = generate_label(5, replace(base, blur_prob=0, noise_prob=0, jpeg_prob=0))
    dirty = generate_label(5, replace(base, blur_prob=1, noise_prob=1, jpeg_prob=1))
    assert clean.boxes == dirty.boxes
    assert clean.image.tobytes() != dirty.image.tobytes()


# ------------------------------------------------------------------ pinned output

PINNED_MIX = "7e69d836045944a9919031f1c44646fdb30d4cd3745711b68cb4612327dc05f1"
PINNED_PLAIN = "113b7ac2e921518ef7cbad53a2c6af7b861400c053f261577b909354ed1d0280"


def _digest(samples: list[LabelSample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(repr((s.image.size, s.image.mode, [b.as_tuple() for b in s.boxes], s.style,
                       s.seed, s.angles)).encode())
        h.update(s.image.tobytes())
    return h.hexdigest()


def test_generated_images_are_pinned() -> None:
    """Hashes of images made before the generator was split into modules: a restructuring of
    the generator must not change one pixel (same Pillow, FreeType, libjpeg and DejaVu fonts)."""
    mix = list(generate_dataset(12, 10, GeneratorConfig(max_side=512, none_fraction=0.2,
                                                        two_fraction=0.3)))
    assert {s.style for s in mix} == {"us", "eu", "none"} and {len(s.boxes) for s in mix} == {0, 1, 2}
    assert _digest(mix) == PINNED_MIX
    plain = [generate_label(i, _plain(style, rotation=1.0, size=(384, 448)))
             for style in ("us", "eu") for i in range(3)]
    assert _digest(plain) == PINNED_PLAIN
