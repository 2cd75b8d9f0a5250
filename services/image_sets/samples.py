"""The bundled sample images of the app (``samples/``) and the command that regenerates them.

``samples/`` holds a few synthetic label photos from :mod:`services.image_sets.generator` with their
ground truth in ``samples/labels.jsonl`` (pixel boxes, the format of ``write_dataset``). They are
fixed: each comes from a named spec (seed, style, number of tables, size) below, so::

    python -m services.image_sets.samples --write samples/

rewrites the same set (byte-identical with the same Pillow, FreeType, libjpeg and fonts).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.core.boxes import Box, pixels_to_grid
from services.image_sets.datasets import LABELS_FILE, load_labels_folder
from services.image_sets.dataset_writer import write_dataset
from services.image_sets.generator import GeneratorConfig, LabelSample, generate_label

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "samples"
SAMPLE_JPEG_QUALITY = 85


@dataclass(frozen=True)
class SampleSpec:
    """How one bundled sample is made: ``generate_label(seed, config())``."""

    name: str
    seed: int
    style: str  # "us" or "eu"
    tables: int  # 0, 1 or 2
    size: tuple[int, int]  # width, height
    rotate: bool = False
    degrade: bool = True

    def config(self) -> GeneratorConfig:
        """The generator config that pins this sample's style, table count and size."""
        return GeneratorConfig(
            size=self.size,
            styles=(self.style,),
            none_fraction=1.0 if self.tables == 0 else 0.0,
            two_fraction=1.0 if self.tables == 2 else 0.0,
            rotation_prob=1.0 if self.rotate else 0.0,
            blur_prob=0.5 if self.degrade else 0.0,
            noise_prob=0.5 if self.degrade else 0.0,
            jpeg_prob=0.0,  # the files are JPEG already
        )


SAMPLE_SPECS: tuple[SampleSpec, ...] = (
    SampleSpec("us_portrait", 101, "us", 1, (768, 1024)),
    SampleSpec("us_rotated", 102, "us", 1, (900, 700), rotate=True),
    SampleSpec("us_small", 103, "us", 1, (480, 640), degrade=True),
    SampleSpec("eu_landscape", 104, "eu", 1, (1024, 683)),
    SampleSpec("eu_rotated", 105, "eu", 1, (800, 800), rotate=True),
    SampleSpec("eu_square", 106, "eu", 1, (640, 640)),
    SampleSpec("two_tables", 107, "eu", 2, (1024, 768)),
    SampleSpec("no_table", 108, "us", 0, (800, 600)),
)


@dataclass
class SampleImage:
    """A bundled sample: file ``path``, size, ground-truth pixel ``boxes`` and grid boxes."""

    name: str
    path: Path
    width: int
    height: int
    boxes: list[Box]
    style: str

    @property
    def grid_boxes(self) -> list[Box]:
        """The ground truth on the model's 0..1000 grid."""
        return [pixels_to_grid(b, self.width, self.height) for b in self.boxes]


def list_samples(folder: str | os.PathLike[str] = SAMPLES_DIR) -> list[SampleImage]:
    """The samples listed in ``folder/labels.jsonl`` (in file order) with their boxes.

    Entries that do not load (missing or broken file, bad box) are logged and left out.
    """
    folder = Path(folder)
    if not (folder / LABELS_FILE).is_file():
        log.warning("no %s in %s", LABELS_FILE, folder)
        return []
    records, _problems = load_labels_folder(folder, verify_images=False)
    return [
        SampleImage(name=Path(r.id).stem, path=r.path, width=r.width, height=r.height,  # type: ignore[arg-type]
                    boxes=r.boxes, style=str(r.source_row.get("style", "")))
        for r in records
    ]


def generate_samples(specs: Sequence[SampleSpec] = SAMPLE_SPECS) -> list[LabelSample]:
    """Generate the samples of ``specs`` (deterministic)."""
    return [generate_label(s.seed, s.config()) for s in specs]


def write_samples(folder: str | os.PathLike[str] = SAMPLES_DIR,
                  specs: Sequence[SampleSpec] = SAMPLE_SPECS) -> Path:
    """(Re)write the sample set into ``folder``; returns the labels file.

    Images that the folder's previous ``labels.jsonl`` listed and the new set does not are
    removed; no other file is touched.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    previous = {r.path for r in load_labels_folder(folder, verify_images=False).records} \
        if (folder / LABELS_FILE).is_file() else set()
    labels = write_dataset(folder, generate_samples(specs), image_format="jpg",
                           quality=SAMPLE_JPEG_QUALITY, names=[s.name for s in specs])
    keep = {(folder / f"{s.name}.jpg").resolve() for s in specs}
    for old in previous:
        if old is not None and old.resolve() not in keep and old.is_file():
            old.unlink()
    return labels


def main(argv: Sequence[str] | None = None) -> int:
    """``--write DIR`` regenerates the samples; ``--list`` prints the bundled ones."""
    p = argparse.ArgumentParser(prog="python -m services.image_sets.samples", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", type=Path, metavar="DIR", help="write the sample set into DIR")
    p.add_argument("--list", action="store_true", help="list the samples in samples/")
    a = p.parse_args(argv)
    if a.write is None and not a.list:
        p.error("give --write DIR or --list")
    if a.write is not None:
        labels = write_samples(a.write)
        total = sum(f.stat().st_size for f in a.write.glob("*.jpg"))
        print(f"wrote {len(SAMPLE_SPECS)} samples ({total / 1024:.0f} KiB) and {labels}")
    if a.list:
        for s in list_samples():
            print(f"{s.path.name}\t{s.width}x{s.height}\t{s.style}\t"
                  f"{[list(map(int, b.as_tuple())) for b in s.boxes]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
