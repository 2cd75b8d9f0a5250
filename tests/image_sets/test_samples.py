"""Tests of the bundled sample images."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from services.core.boxes import Box
from services.image_sets.samples import (
    SAMPLE_SPECS,
    SAMPLES_DIR,
    generate_samples,
    list_samples,
)


def test_bundled_samples() -> None:
    samples = list_samples()
    assert len(samples) == len(SAMPLE_SPECS) >= 8
    total = sum(s.path.stat().st_size for s in samples)
    assert total < 1.5 * 1024 * 1024
    assert {len(s.boxes) for s in samples} == {0, 1, 2}
    assert {s.style for s in samples} >= {"us", "eu", "none"}
    for s in samples:
        assert s.path.suffix == ".jpg" and s.path.parent == SAMPLES_DIR
        with Image.open(s.path) as im:
            assert im.format == "JPEG" and im.size == (s.width, s.height)
        assert max(s.width, s.height) <= 1024
        for b in s.boxes:
            assert 0 <= b.x1 < b.x2 <= s.width and 0 <= b.y1 < b.y2 <= s.height


def test_bundled_samples_match_their_specs() -> None:
    """The committed labels are what the generator makes from the specs (deterministic)."""
    listed = {s.name: s for s in list_samples()}
    for spec, gen in zip(SAMPLE_SPECS, generate_samples()):
        s = listed[spec.name]
        assert s.boxes == [Box(*map(float, b.as_tuple())) for b in gen.boxes]
        assert (s.width, s.height) == gen.image.size == spec.size
        assert len(gen.boxes) == spec.tables


def test_write_samples_is_deterministic(tmp_path: Path) -> None:
    from services.image_sets.samples import write_samples

    (tmp_path / "a").mkdir()
    write_samples(tmp_path / "a", SAMPLE_SPECS[:2])
    write_samples(tmp_path / "b", SAMPLE_SPECS[:2])
    for spec in SAMPLE_SPECS[:2]:
        name = f"{spec.name}.jpg"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "labels.jsonl").read_text() == \
        (tmp_path / "b" / "labels.jsonl").read_text()
    # rewriting with fewer specs removes the images it no longer lists, and nothing else
    (tmp_path / "a" / "mine.jpg").write_bytes(b"not ours")
    write_samples(tmp_path / "a", SAMPLE_SPECS[:1])
    assert not (tmp_path / "a" / f"{SAMPLE_SPECS[1].name}.jpg").exists()
    assert (tmp_path / "a" / "mine.jpg").exists()
