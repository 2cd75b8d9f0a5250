"""The comparison's report: its tables, one self-contained HTML file, JSON and CSV, and the command line.

No streamlit here: the Compare page shows the same tables and offers the same files.

* Tables (:func:`memory_rows`, :func:`latency_rows`, :func:`accuracy_rows`, :func:`floor_rows`, with
  their columns), shown by the page and the HTML.
* Files (:func:`report_files`): ``<stem>.html`` (every figure of :mod:`services.compare.figures` and the
  gallery of :mod:`services.compare.gallery`, plotly.js inlined once: opens offline),
  ``<stem>.json`` (the whole comparison, :func:`services.compare.export.comparison_to_dict`),
  ``<stem>_summary.csv`` (one row per compared number) and ``<stem>_pairs.csv`` (one row per
  pair of requests, both sides' raw numbers).

Command line (installed as ``qwen-report``)::

    qwen-report --run RUN_ID --out DIR [--versions 1 2]
    qwen-report --run-a 3 --version-a 1 --run-b 5 --version-b 2 --out DIR
    qwen-report --fresh [--image-set generated --seed 0 --count 8]
        [--requests 16 --warmup 1 --max-tokens 64] [--url host:8000] --out DIR

(or ``python -m services.compare.report ...``). ``--fresh`` first runs a paired benchmark (both
versions interleaved, same images in the same order) through :mod:`services.bench.runner` against
``--url`` (default ``QWEN_TRITON_URL``, else the embedded server), then reports on it.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import plotly.graph_objects as go
import plotly.io as pio

from services.bench.store import RunStore
from services.compare.capacity import SweepResult, sweep_json
from services.compare.capacity_report import capacity_html, recommendation_html, report_decision
from services.compare.comparison import Comparison, build_comparison, compare_run
from services.compare.export import (
    PAIR_CSV_COLUMNS,
    SUMMARY_CSV_COLUMNS,
    comparison_to_dict,
    pair_rows,
    summary_rows,
)
from services.compare.figures import figures
from services.compare.gallery import GALLERY_SIZE, GalleryItem, gallery
from services.compare.recommendation import Recommendation
from services.compare.request_boxes import FOUND_IOU
from services.compare.run_context import context_rows
from services.compare.verdict import identical
from services.core.units import format_bytes


# =========================================================================== tables


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any, nd: int = 2) -> str:
    if v is None:
        return "unknown"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def memory_rows(c: Comparison) -> list[list[str]]:
    """The memory table, one row per quantity, A and B columns; each number with its unit
    (GiB, or MiB / KiB for a small model: :func:`services.core.units.format_bytes`)."""
    def fmt(v: int | None) -> str:
        return "unknown" if v is None else format_bytes(v)

    def kv(side: Any) -> str:  # an engine that reserves no KV room has none, which is not "unknown"
        return "not reserved" if side.kv_room_bytes is None and side.kv_note.startswith("not reserved") \
            else fmt(side.kv_room_bytes)
    a, b = c.memory.a, c.memory.b
    return [
        ["measured", a.source, b.source],
        ["baseline", fmt(a.baseline_bytes), fmt(b.baseline_bytes)],
        ["peak", fmt(a.peak_bytes), fmt(b.peak_bytes)],
        ["delta", fmt(a.delta_bytes), fmt(b.delta_bytes)],
        ["weights", fmt(a.weights_bytes), fmt(b.weights_bytes)],
        ["weights from", a.weights_source, b.weights_source],
        ["decoder linear layers", fmt(a.decoder_linear_bytes), fmt(b.decoder_linear_bytes)],
        ["KV-cache room", kv(a), kv(b)],
        ["KV-cache room: how", a.kv_note, b.kv_note],
        ["rest", fmt(a.rest_bytes), fmt(b.rest_bytes)],
        ["rest: how", a.rest_note, b.rest_note],
    ]


def latency_rows(c: Comparison) -> list[list[str]]:
    """One row per latency metric: both sides' p50/p90/p99/mean, the median difference and its CI."""
    rows = []
    for m in c.latency:
        d = m.difference
        ci = f"[{d.lo:+.2f}, {d.hi:+.2f}]" if d.lo is not None else (d.note or "no interval")
        sig = {True: "yes", False: "no", None: "unknown"}[d.significant]
        rows.append([m.label, m.dist_a.count, m.dist_b.count,
                     f"{_num(m.dist_a.p50)} / {_num(m.dist_a.p90)} / {_num(m.dist_a.p99)}",
                     f"{_num(m.dist_b.p50)} / {_num(m.dist_b.p90)} / {_num(m.dist_b.p99)}",
                     _num(m.dist_a.mean), _num(m.dist_b.mean),
                     "unknown" if d.diff is None else f"{d.diff:+.2f}", ci, sig])
    return rows


def server_rows(c: Comparison) -> list[list[str]]:
    """One row per server-side metric (vllm:* histograms): both sides' p50/p90/p99/mean, the median
    difference and its interval (resampled histograms); empty when the server's timings are unknown."""
    rows = []
    for m in c.server.metrics if c.server is not None else []:
        d = m.difference
        ci = f"[{d.lo:+.2f}, {d.hi:+.2f}]" if d.lo is not None else (d.note or "no interval")

        def pcts(t: Any) -> str:
            return "unknown" if t is None else f"{_num(t.p50_ms)} / {_num(t.p90_ms)} / {_num(t.p99_ms)}"

        rows.append([m.label, d.n_a, d.n_b, pcts(m.a), pcts(m.b), _num(m.a.mean_ms if m.a else None),
                     _num(m.b.mean_ms if m.b else None), "unknown" if d.diff is None else f"{d.diff:+.2f}", ci,
                     {True: "yes", False: "no", None: "unknown"}[d.significant]])
    return rows


def server_notes(c: Comparison) -> list[str]:
    """What the server-side table rests on, why it is missing, and whether the client's TTFT/TPOT hold."""
    s = c.server
    if s is None:
        return []
    notes = ["The server's own timings: vllm:* histograms over each run's measured window (bucket counts at its "
             "end minus those at its start); percentiles interpolated inside the buckets as Prometheus' "
             "histogram_quantile does, so their precision is the buckets'; n counts observations (TPOT: one per "
             "token after the first)."]
    if s.reason:
        notes.append(f"Server-side timings: {s.reason}.")
    burst = s.burst_words(c.a.label, c.b.label)
    if s.client_unreliable:
        notes.append(f"The client's TTFT and TPOT are unreliable: {burst}; "
                     + ("the verdict judges them on the server's numbers." if not s.reason else
                        "the server's are unknown, so neither can be trusted."))
    else:
        notes.append(f"{burst[0].upper()}{burst[1:]}: the client's TTFT and TPOT hold.")
    return notes


LATENCY_COLUMNS = ["metric (ms)", "n A", "n B", "A p50 / p90 / p99", "B p50 / p90 / p99", "A mean", "B mean",
                   "median B−A", "98.3% CI (Bonferroni over the 3 timings)", "significant"]


def accuracy_rows(c: Comparison) -> list[list[str]]:
    acc = c.accuracy
    rows = []
    for name, d in (("mean IoU", acc.mean_iou), (f"found at IoU ≥ {FOUND_IOU}", acc.found),
                    ("no box (incl. failures)", acc.no_box)):
        ci = f"[{d.lo:+.3f}, {d.hi:+.3f}]" if d.lo is not None else (d.note or "no interval")
        sig = {True: "yes", False: "no", None: "unknown"}[d.significant]
        if identical(d):
            ci, sig = "none: identical on every image", "no difference"
        rows.append([name, _num(d.a, 3), _num(d.b, 3), "unknown" if d.diff is None else f"{d.diff:+.3f}", ci, sig])
    rows.append(["answers without a box", acc.a.no_box, acc.b.no_box, "", "", ""])
    rows.append(["failed requests", acc.a.failed, acc.b.failed, "", "", ""])
    return rows


ACCURACY_COLUMNS = ["", "A", "B", "B−A", "95% CI", "significant"]


def floor_rows(c: Comparison) -> list[list[str]]:
    rows = []
    for side, f in ((c.a, c.floor_a), (c.b, c.floor_b)):
        bw = "unknown" if f.bandwidth_bytes_per_s is None else f"{f.bandwidth_bytes_per_s / 1e12:.2f} TB/s"
        rows.append([side.label, f.gpu_name or "unknown", f"{bw} ({f.bandwidth_source})",
                     "unknown" if f.weight_bytes is None else format_bytes(f.weight_bytes),
                     _num(f.floor_ms, 3), _num(f.measured_tpot_ms, 3),
                     "unknown" if f.fraction is None else f"{f.fraction * 100:.1f}%", f.reason])
    return rows


FLOOR_COLUMNS = ["version", "GPU", "bandwidth", "weight bytes", "floor ms/token", "measured TPOT ms (median)",
                 "floor / measured", "note"]


# =========================================================================== files


def report_stem(c: Comparison) -> str:
    if c.a.run_id == c.b.run_id:
        return f"comparison_run{c.a.run_id}_v{c.a.version}_v{c.b.version}"
    return f"comparison_run{c.a.run_id}v{c.a.version}_run{c.b.run_id}v{c.b.version}"


def _csv(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue().encode()


def report_json(c: Comparison, decision: tuple[SweepResult | None, Recommendation] | None = None) -> dict[str, Any]:
    """The JSON report: the comparison's data plus when and by what it was made; with ``decision``,
    the recommendation and the sweep (``services.compare.capacity.sweep_json``)."""
    out = {"schema": "qwen-compare/1",
           "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "comparison": comparison_to_dict(c)}
    if decision is not None:
        out["recommendation"] = decision[1].to_dict()
        out["sweep"] = None if decision[0] is None else sweep_json(decision[0], decision[1].sentence)
    return out


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#212529}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #dee2e6;padding-bottom:4px}
.verdict{background:#f1f3f5;border-left:4px solid #364fc7;padding:10px 16px}
.verdict li{margin:6px 0}.caveat{color:#862e9c}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}td,th{border:1px solid #dee2e6;padding:4px 8px;text-align:left}
th{background:#f8f9fa}.note{color:#495057;font-size:.9em}
td{max-width:640px;overflow-wrap:anywhere;vertical-align:top}
.context{width:100%}.context th{width:210px;white-space:nowrap}
"""


def context_html(c: Comparison) -> str:
    """What the numbers were measured on (:func:`services.compare.run_context.context_rows`): the
    report's first lines, so that no figure below reads as a claim about another model or machine."""
    rows = "".join(f"<tr><th scope='row'>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in context_rows(c))
    return ("<p class='note'>Measured on (from the runs' manifests; \"unknown\" where a run did not record it):</p>"
            f"<table class='context' id='context'>{rows}</table>")


def report_html(c: Comparison, items: Sequence[GalleryItem] | None = None,
                decision: tuple[SweepResult | None, Recommendation] | None = None) -> str:
    """The self-contained HTML report: the recommendation (``decision``: the sweep and the recommendation
    of :func:`services.compare.capacity_report.report_decision`), verdict, tables and every figure,
    the sweep's capacity and cost; plotly.js inlined once."""
    figs = figures(c)
    first = [True]

    def fig_html(fig: go.Figure, div_id: str) -> str:
        include: Any = "inline" if first[0] else False
        first[0] = False
        return pio.to_html(fig, include_plotlyjs=include, full_html=False, div_id=div_id,
                           config={"displaylogo": False, "responsive": True})

    runs = "; ".join(f"run {r['id']} ({r['status']}, {r['created_at'][:19]})" for r in c.runs)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_esc(c.b.label)} vs {_esc(c.a.label)}: comparison report</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>What {_esc(c.b.label)} buys over {_esc(c.a.label)}, and what it costs</h1>",
        context_html(c),
        f"<p class='note'>{_esc(runs)} · {_esc(c.image_set)} · {c.measured_a} / {c.measured_b} measured requests · "
        f"{_esc(c.pairing)} · generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}</p>",
        *(recommendation_html(decision[1]) if decision else []),
        "<h2>Verdict</h2><div class='verdict' id='verdict'><ul>",
        *(f"<li>{_esc(line)}</li>" for line in c.verdict.lines),
        *(f"<li class='caveat'>{_esc(line)}</li>" for line in c.verdict.caveats),
        "</ul></div>",
        fig_html(figs["change"], "fig-change"),
        *(capacity_html(decision[0], fig_html) if decision else []),
        "<h2>Memory</h2>", _table(["", c.a.label, c.b.label], memory_rows(c)),
        *(f"<p class='note'>{_esc(n)}</p>" for n in c.memory.notes),
        fig_html(figs["memory"], "fig-memory"),
        "<h2>Latency</h2>", _table(LATENCY_COLUMNS, latency_rows(c)),
        fig_html(figs["latency_cdf"], "fig-latency"), fig_html(figs["ttft_cdf"], "fig-ttft"),
        fig_html(figs["tpot_cdf"], "fig-tpot"),
        "<h3 id='server-timings'>As the server measured it</h3>",
        *([_table(LATENCY_COLUMNS, server_rows(c))] if server_rows(c) else []),
        *(f"<p class='note'>{_esc(n)}</p>" for n in server_notes(c)),
        "<h2>Throughput</h2>", *(f"<p class='note'>{_esc(n)}</p>" for n in c.throughput.notes),
        fig_html(figs["throughput"], "fig-throughput"),
        "<h2>Accuracy</h2>", _table(ACCURACY_COLUMNS, accuracy_rows(c)),
        *(f"<p class='note'>{_esc(n)}</p>" for n in c.accuracy.notes),
        fig_html(figs["accuracy"], "fig-accuracy"),
        "<h2>Agreement between the versions</h2>", f"<p>{_esc(c.verdict.agreement)}</p>",
        fig_html(figs["agreement"], "fig-agreement"),
    ]
    if items:
        parts.append("<h3>Where they disagree most</h3>")
        for i, it in enumerate(items):
            if it.figure is not None:
                parts.append(fig_html(it.figure, f"fig-gallery-{i}"))
            else:
                parts.append(f"<p class='note'>{_esc(it.caption)}: image not available "
                             f"({_esc(it.image.note or it.image.source)})</p>")
    parts += [
        "<h2>Decode against the memory-bandwidth floor</h2>", _table(FLOOR_COLUMNS, floor_rows(c)),
        "<p class='note'>Floor = weight bytes read per decode step / the GPU's memory bandwidth; the fraction "
        "floor / measured says how close the serving stack gets to the hardware (100% = the limit).</p>",
        fig_html(figs["floor"], "fig-floor"),
    ]
    if c.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_esc(n)}</li>" for n in c.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def html_bytes(store: RunStore, c: Comparison, items: Sequence[GalleryItem] | None = None,
               gallery_size: int = GALLERY_SIZE) -> bytes:
    """The HTML report (the gallery is drawn here unless ``items`` are given)."""
    if items is None:
        items = gallery(store, c, gallery_size) if gallery_size > 0 else []
    return report_html(c, items, report_decision(store, c)).encode()


def json_bytes(c: Comparison, decision: tuple[SweepResult | None, Recommendation] | None = None) -> bytes:
    return (json.dumps(report_json(c, decision), indent=1, ensure_ascii=False) + "\n").encode()


def summary_csv(c: Comparison) -> bytes:
    return _csv(SUMMARY_CSV_COLUMNS, summary_rows(c))


def pairs_csv(store: RunStore, c: Comparison) -> bytes:
    return _csv(PAIR_CSV_COLUMNS, pair_rows(store, c))


def report_files(store: RunStore, c: Comparison, *, gallery_size: int = GALLERY_SIZE,
                 items: Sequence[GalleryItem] | None = None) -> dict[str, bytes]:
    """``{file name: bytes}``: the HTML report, the JSON, the summary CSV and the pairs CSV."""
    stem = report_stem(c)
    return {
        f"{stem}.html": html_bytes(store, c, items, gallery_size),
        f"{stem}.json": json_bytes(c, report_decision(store, c)),
        f"{stem}_summary.csv": summary_csv(c),
        f"{stem}_pairs.csv": pairs_csv(store, c),
    }


def cli_command(c: Comparison) -> str:
    """The command line that writes this comparison's report."""
    if c.a.run_id == c.b.run_id:
        return (f"python -m services.compare.report --run {c.a.run_id} --versions {c.a.version} {c.b.version} "
                "--out DIR")
    return (f"python -m services.compare.report --run-a {c.a.run_id} --version-a {c.a.version} "
            f"--run-b {c.b.run_id} --version-b {c.b.version} --out DIR")


def write_report(store: RunStore, c: Comparison, out: str | Path, **kwargs: Any) -> list[Path]:
    """Write :func:`report_files` into ``out`` (created); returns the paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in report_files(store, c, **kwargs).items():
        p = folder / name
        p.write_bytes(data)
        paths.append(p)
    return paths


# =========================================================================== command line


def fresh_run(store: RunStore, args: argparse.Namespace) -> int:
    """Run a paired benchmark (both versions interleaved) and return its run id."""
    from services.bench.runner import BenchmarkConfig, run_benchmark
    from services.image_sets.image_set import ImageSetSpec
    from services.client.server_target import current_target

    spec = ImageSetSpec(kind=args.image_set, seed=args.seed, count=args.count, folder=args.folder,
                        max_side=args.max_side)
    from services.client.variants import own_target, variants_from_options

    variants = variants_from_options(args.variant, args.variants_file) if args.variant or args.variants_file else ()
    config = BenchmarkConfig(versions=tuple(args.versions), variants=variants, image_set=spec, requests=args.requests,
                             warmup=args.warmup, max_tokens=args.max_tokens, concurrency=args.concurrency)
    target = (None if args.url else own_target(variants)) or current_target(args.url, args.protocol)

    def progress(p: Any) -> None:
        print(f"\r{p.status}: {p.done}/{p.total} requests, {p.failures} failed", end="", file=sys.stderr)

    outcome = run_benchmark(config, store, target, on_progress=progress)
    print(f"\nrun {outcome.run_id}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""),
          file=sys.stderr)
    return outcome.run_id


def main(argv: Sequence[str] | None = None) -> int:
    from services.bench.cli import HelpFormatter  # an option's default, shown once and only where it says something

    p = argparse.ArgumentParser(prog="qwen-report", formatter_class=HelpFormatter,
                                description="Compare two model versions from stored runs: HTML, JSON and CSV report.")
    p.add_argument("--run", type=int, help="a stored paired run (both versions)")
    p.add_argument("--versions", nargs=2, default=None, metavar=("A", "B"),
                   help="the two versions to compare, A then B (default: the run's first two; fresh runs: 1 2)")
    p.add_argument("--run-a", type=int, help="two stored runs: run of side A")
    p.add_argument("--version-a", help="two stored runs: version of side A")
    p.add_argument("--run-b", type=int, help="two stored runs: run of side B")
    p.add_argument("--version-b", help="two stored runs: version of side B")
    p.add_argument("--fresh", action="store_true", help="run a fresh paired benchmark first, then report on it")
    p.add_argument("--variant", action="append", metavar="SPEC", help="fresh run: a variant, as qwen-bench --variant")
    p.add_argument("--variants-file", metavar="FILE", help="fresh run: variants, as qwen-bench --variants-file")
    p.add_argument("--image-set", choices=["samples", "generated", "folder"], default="generated",
                   help="images of a fresh run")
    p.add_argument("--seed", type=int, default=0, help="seed of a generated image set")
    p.add_argument("--count", type=int, default=8, help="images of a generated set")
    p.add_argument("--folder", help="dataset folder (--image-set folder)")
    p.add_argument("--max-side", type=int, default=1024, help="longest image side sent (px)")
    p.add_argument("--requests", type=int, default=16, help="measured requests per version")
    p.add_argument("--warmup", type=int, default=1, help="warm-up requests per version")
    p.add_argument("--max-tokens", type=int, default=128, help="most output tokens per answer")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    p.add_argument("--url", help="Triton server (default: QWEN_TRITON_URL, else the embedded server)")
    p.add_argument("--protocol", choices=["http", "grpc"], help="default: the URL's scheme, else QWEN_TRITON_PROTOCOL (http)")
    p.add_argument("--data-dir", help="where the run store lives (default: QWEN_DATA_DIR, else data/)")
    p.add_argument("--gallery", type=int, default=GALLERY_SIZE, help="images in the disagreement gallery")
    p.add_argument("--out", required=True, help="folder to write the report into")
    args = p.parse_args(argv)

    with RunStore(args.data_dir) as store:
        if args.fresh:
            args.versions = args.versions or ["1", "2"]
            try:
                run_id = fresh_run(store, args)  # on variants: compared in their order
            except ValueError as exc:  # a variant spec or file that does not parse
                p.error(str(exc))
            c = compare_run(store, run_id, None if args.variant or args.variants_file else args.versions)
        elif args.run is not None:
            c = compare_run(store, args.run, args.versions)
        elif None not in (args.run_a, args.version_a, args.run_b, args.version_b):
            c = build_comparison(store, (args.run_a, args.version_a), (args.run_b, args.version_b))
        else:
            p.error("give --run, or --run-a/--version-a/--run-b/--version-b, or --fresh")
        paths = write_report(store, c, args.out, gallery_size=args.gallery)
        print(report_decision(store, c)[1].sentence)
    for line in c.verdict.lines:
        print(line)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
