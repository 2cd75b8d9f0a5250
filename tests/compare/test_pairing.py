"""Pairing the requests of two sides by image and repeat."""

from __future__ import annotations

from services.compare.pairing import make_pairs
from tests.compare.support import req


def test_pairs_follow_image_and_repeat():
    a = [req(0, "1", "x", 1), req(2, "1", "y", 1), req(4, "1", "x", 1), req(6, "1", "z", 1)]
    b = [req(1, "2", "x", 1), req(3, "2", "y", 1), req(5, "2", "x", 1)]
    pairs = make_pairs(a, b)
    assert [(p.key, p.a.seq, p.b.seq) for p in pairs] == [("x#0", 0, 1), ("y#0", 2, 3), ("x#1", 4, 5)]
