"""Tests of writing generated label sets to a folder and of the generator's command line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from services.core.boxes import Box
from services.image_sets.dataset_writer import main, write_dataset
from services.image_sets.datasets import load_labels_folder
from services.image_sets.generator import GeneratorConfig, generate_dataset

# sha256 of a data set the command line wrote before the generator was split into modules
PINNED_WRITTEN = "797b51256b9c1997130b901b256ca82be0ff683afdb23576c2fc2ef74697a474"


def test_write_dataset_round_trip(tmp_path: Path) -> None:
    cfg = GeneratorConfig(max_side=400, two_fraction=0.3, none_fraction=0.2)
    samples = list(generate_dataset(5, 6, cfg))
    labels = write_dataset(tmp_path, samples, image_format="png")
    lines = [json.loads(x) for x in labels.read_text().splitlines()]
    assert [x["file"] for x in lines] == [f"{i:06d}.png" for i in range(6)]
    records, problems = load_labels_folder(tmp_path)
    assert problems == []
    for s, r, line in zip(samples, records, lines):
        assert (r.width, r.height) == s.image.size == (line["width"], line["height"])
        assert r.boxes == [Box(*map(float, b.as_tuple())) for b in s.boxes]
        assert r.load_image().tobytes() == s.image.tobytes()  # PNG is lossless
        assert line["seed"] == s.seed
    assert not (tmp_path / "labels.jsonl.tmp").exists()


def test_cli_writes_dataset(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--count", "3", "--seed", "4"]) == 0
    records, problems = load_labels_folder(tmp_path)
    assert len(records) == 3 and problems == []


def test_written_dataset_is_pinned(tmp_path: Path) -> None:
    """The files the command line writes are byte-identical to those written before the split."""
    main(["--out", str(tmp_path), "--count", "3", "--seed", "4"])
    files = sorted(p.name for p in tmp_path.iterdir())
    written = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes()
                                      for p in sorted(tmp_path.iterdir()))).hexdigest()
    assert files == ["000000.jpg", "000001.jpg", "000002.jpg", "labels.jsonl"]
    assert written == PINNED_WRITTEN
