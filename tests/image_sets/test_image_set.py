"""services.image_sets.image_set: every kind of image set loaded, checked and encoded, with its truth."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.image_sets.dataset_writer import write_dataset
from services.image_sets.generator import generate_dataset
from services.image_sets.image_set import ImageSetSpec, load_image_set


def png(color: tuple[int, int, int]) -> bytes:
    """A 160 x 120 PNG of one colour."""
    buf = io.BytesIO()
    Image.new("RGB", (160, 120), color).save(buf, "PNG")
    return buf.getvalue()


IMAGES = (("red.png", png((220, 60, 60))), ("green.png", png((60, 200, 60))))


def test_image_sets_of_every_kind(tmp_path) -> None:
    uploaded = load_image_set(ImageSetSpec(kind="uploaded", max_side=100,
                                           images=(("a.png", IMAGES[0][1]), ("a.png", IMAGES[1][1]),
                                                   ("broken.jpg", b"\xff\xd8\xff\xe0 not really"))))
    assert [im.id for im in uploaded.images] == ["a.png", "a.png#2"]
    assert uploaded.images[0].truth is None and (uploaded.images[0].width, uploaded.images[0].sent_width) == (160, 100)
    assert len(uploaded.problems) == 1 and "broken.jpg" in uploaded.problems[0]
    with pytest.raises(ValueError, match="no usable image"):
        load_image_set(ImageSetSpec(kind="uploaded", images=(("x.png", b"nope"),)))

    generated = load_image_set(ImageSetSpec(kind="generated", seed=3, count=2, max_side=128))
    expected = list(generate_dataset(3, 2))
    assert [im.seed for im in generated.images] == [s.seed for s in expected]
    assert [list(im.truth) for im in generated.images] == [s.grid_boxes for s in expected]
    assert max(generated.images[0].sent_width, generated.images[0].sent_height) == 128

    samples = load_image_set(ImageSetSpec(kind="samples", max_side=128))
    assert len(samples.images) >= 1 and any(im.truth for im in samples.images)

    write_dataset(tmp_path / "set", expected)
    folder = load_image_set(ImageSetSpec(kind="folder", folder=str(tmp_path / "set"), max_side=128))
    assert [len(im.truth) for im in folder.images] == [len(s.grid_boxes) for s in expected]
    with pytest.raises(ValueError, match="does not exist"):
        load_image_set(ImageSetSpec(kind="folder", folder=str(tmp_path / "missing")))
