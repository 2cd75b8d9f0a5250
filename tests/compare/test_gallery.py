"""The gallery of the images where the versions disagree most, and the report that shows it."""

from __future__ import annotations

import pytest

from services.bench.stats import RequestRecord
from services.bench.store import RunStore
from services.compare.comparison import compare_run
from services.compare.figures import figures
from services.compare.gallery import gallery
from services.compare.report import report_files, report_html
from services.core.boxes import Box, format_answer
from tests.compare.support import check_self_contained

pytestmark = pytest.mark.timeout(300)


def test_gallery_draws_both_versions_boxes_on_the_regenerated_image(tmp_path):
    """A stored run of a generated set where the versions disagree: the gallery regenerates the
    images from their recorded seeds and draws both answers and the truth on them."""
    from services.image_sets.generator import generate_dataset

    samples = list(generate_dataset(11, 2))
    ids = [f"generated-11-{i:04d}" for i in range(2)]
    with RunStore(tmp_path) as store:
        manifest = {"image_set": {"kind": "generated", "seed": 11, "images": [
            {"id": i, "seed": s.seed, "truth": [b.__dict__ for b in s.grid_boxes]} for i, s in zip(ids, samples)]}}
        rid = store.create_run({"versions": ["1", "2"], "image_set": {"kind": "generated", "seed": 11, "count": 2,
                                                                      "max_side": 1024}}, manifest)
        seq = 0
        for image_id, s in zip(ids, samples):
            truth = s.grid_boxes or [Box(100, 100, 400, 400)]
            shifted = [Box(b.x1 + 50, b.y1, min(1000, b.x2 + 50), b.y2) for b in truth]
            for v, boxes in (("1", truth), ("2", shifted)):
                store.add_request(rid, RequestRecord(seq=seq, version=v, image_id=image_id, latency_ms=10.0 + seq,
                                                     answer=format_answer(boxes)))
                seq += 1
        store.finish_run(rid, "completed")
        c = compare_run(store, rid)
        items = gallery(store, c, k=5)
        assert [it.image.image_id for it in items] == sorted(ids, key=lambda i: next(
            p.iou for p in c.agreement.pairs if p.image_id == i))
        for it, s in zip(sorted(items, key=lambda it: it.image.image_id), samples):
            assert it.image.source == f"regenerated from seed {s.seed}"
            assert it.figure is not None and it.image.note is None
            series = {tr.meta["series"] for tr in it.figure.data if getattr(tr, "meta", None)}
            assert {"1", "2"} <= series
            assert ("truth" in series) == bool(s.grid_boxes)
        files = report_files(store, c, items=items)
        html_text = next(v for k, v in files.items() if k.endswith(".html")).decode()
        check_self_contained(html_text)
        assert html_text.count("data:image/") >= len(items)
        assert "fig-gallery-0" in html_text
        assert set(figures(c)) >= {"memory", "latency_cdf", "ttft_cdf", "tpot_cdf", "accuracy", "agreement", "floor"}
        assert "Where they disagree most" in report_html(c, items)
