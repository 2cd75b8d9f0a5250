"""The comparison as plain data: the JSON-ready dict and the summary CSV's rows."""

from __future__ import annotations

from services.compare.comparison import compare_run
from services.compare.export import comparison_to_dict, summary_rows
from tests.compare.support import store_paired_run, truth_of


def test_plain_data_of_a_stored_run(store):
    c = compare_run(store, store_paired_run(store), truth=truth_of)
    data = comparison_to_dict(c)
    assert data["verdict"]["lines"] == c.verdict.lines
    assert data["latency"][0]["difference"]["significant"] is True
    rows = summary_rows(c)
    assert {"latency", "memory", "accuracy", "floor"} <= {r["section"] for r in rows}
