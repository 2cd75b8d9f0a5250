"""Write generated label samples to a folder, and the generator's command line.

Command line::

    python -m services.image_sets.dataset_writer --out DIR --count N [--seed S]   # write a data set
    python -m services.image_sets.dataset_writer --bench 200 [--side 512]         # time the generator
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from services.image_sets.generator import (
    GeneratorConfig,
    LabelSample,
    generate_dataset,
    generate_label,
    sample_seed,
)

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
    p = argparse.ArgumentParser(prog="python -m services.image_sets.dataset_writer", description=__doc__,
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
