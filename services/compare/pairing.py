"""The two sides of a comparison and how their requests are paired.

Within one run that asked both versions (the benchmark interleaves them: v1 img0, v2 img0,
v1 img1, ...), the k-th measured request of an image to version A is paired with the k-th
measured request of the same image to version B. Two separate runs are paired the same way
when they share image ids (same images, but not interleaved in time: drift between the runs
is not cancelled); without image ids the comparison is unpaired.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from services.bench.stats import RequestRecord
from services.core.versions import VERSION_LABELS


@dataclass
class Side:
    """One side of a comparison: version ``version`` of stored run ``run_id``."""

    run_id: int
    version: str
    label: str

    @property
    def name(self) -> str:
        if not self.version.isdigit():  # a variant's label (services.client.variants)
            return self.version
        return VERSION_LABELS.get(self.version, f"v{self.version}")


@dataclass
class Pair:
    """The same image asked of both sides (``occurrence``: its k-th request per side)."""

    key: str
    image_id: str | None
    occurrence: int
    a: RequestRecord
    b: RequestRecord


def pair_key(image_id: str | None, occurrence: int, index: int) -> str:
    return f"{image_id}#{occurrence}" if image_id is not None else f"#{index}"


def make_pairs(a: Sequence[RequestRecord], b: Sequence[RequestRecord]) -> list[Pair]:
    """Pair measured requests of two sides by (image id, k-th occurrence), in A's order.

    Requests without an image id are paired by their position among those without one.
    Requests present on one side only are left out (the caller counts them).
    """
    def keyed(rs: Sequence[RequestRecord]) -> dict[tuple[str | None, int], RequestRecord]:
        seen: dict[str | None, int] = defaultdict(int)
        out: dict[tuple[str | None, int], RequestRecord] = {}
        for r in rs:
            k = seen[r.image_id]
            seen[r.image_id] += 1
            out[(r.image_id, k)] = r
        return out

    kb = keyed(b)
    pairs = []
    for (image_id, k), ra in keyed(a).items():
        rb = kb.get((image_id, k))
        if rb is not None:
            pairs.append(Pair(pair_key(image_id, k, k), image_id, k, ra, rb))
    return pairs


@dataclass
class Pairing:
    """How the measured requests of two sides were paired (see the module docstring)."""

    matched: list[Pair]  # the same image and repeat on both sides (what the agreement compares)
    paired: bool  # whether the differences resample ``matched`` together
    description: str  # in words
    interleaved: bool  # both sides come from one run
    unpaired_a: int  # requests of A without a counterpart (0 when unpaired)
    unpaired_b: int
    notes: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> list[Pair] | None:
        """The pairs the paired differences use; None when the comparison is unpaired."""
        return self.matched if self.paired else None


def pair_sides(ra: Sequence[RequestRecord], rb: Sequence[RequestRecord], side_a: Side, side_b: Side,
               same_run: bool) -> Pairing:
    """Pair the measured requests of A and B: by image and repeat within one run, or across two runs
    that share image ids; unpaired otherwise."""
    matched = make_pairs(ra, rb)
    has_ids = any(r.image_id is not None for r in ra) and any(r.image_id is not None for r in rb)
    if same_run:
        paired = bool(matched)
        description = ("paired by image and repeat: both versions were asked the same images in the same "
                       "order, interleaved in one run")
    elif has_ids and matched:
        paired = True
        description = ("paired by image and repeat across two runs (same images, but measured at different "
                       "times: drift between the runs is not cancelled)")
    else:
        paired = False
        description = "unpaired: the two runs share no image ids; the sides are resampled independently"
    in_pairs = {id(p.a) for p in matched} | {id(p.b) for p in matched} if paired else set()
    unpaired_a = sum(1 for r in ra if id(r) not in in_pairs) if paired else 0
    unpaired_b = sum(1 for r in rb if id(r) not in in_pairs) if paired else 0
    notes = []
    if paired and (unpaired_a or unpaired_b):
        notes.append(f"{unpaired_a} request(s) of {side_a.label} and {unpaired_b} of {side_b.label} have no "
                     "counterpart: they count in each side's distribution, not in the paired differences.")
    return Pairing(matched, paired, description, same_run, unpaired_a, unpaired_b, notes)
