"""``qwen-bench sweep``: each version over load levels until it saturates; capacity, cost, recommendation.

    qwen-bench sweep --versions 1 2 --levels 1 2 4 8 --requests 16 --warmup 2 --images generated \\
        --count 16 --max-tokens 32 --e2e-ms 2000 --price-per-gpu-hour 2.5 [--json]

Levels are concurrencies (``--load closed``, the default) or request rates (``--load open``); see
:mod:`services.bench.sweep` for how a sweep goes and when a version saturates. Prints the sweep table
(one row per level), the capacity table (capacity with its interval where ``--repeats`` > 1, cost per
1,000 images, GPUs needed for ``--demand``, KV-cache room where the engine states it) and the
recommendation (:mod:`services.compare.recommendation`); with ``--json``, only one JSON object on
stdout (:func:`services.compare.capacity.sweep_json`). Ctrl-C cancels (the finished levels are kept);
the exit status is ``qwen-bench``'s.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from services.bench.cli import (
    add_image_server_output_arguments,
    add_request_arguments,
    build_config,
    EXIT_CODES,
    follow_or_quit,
    HelpFormatter,
    prepare_run,
    UsageError,
)
from services.bench.goodput import DEFAULT_TARGETS, LatencyTargets


def build_sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwen-bench sweep",
        description="Measure each version at a series of load levels (each with its own warm-up, the versions "
                    "alternated level by level) until it saturates; report throughput, goodput at the latency "
                    "targets, p50/p90/p99 per level, capacity and cost per version, and which to deploy.",
        epilog="Exit status: 0 completed, 1 failed, 2 bad arguments, 3 partial, 130 cancelled (Ctrl-C).",
        formatter_class=HelpFormatter)
    run = p.add_argument_group("requests (per level and version)")
    add_request_arguments(run)
    sw = p.add_argument_group("levels")
    sw.add_argument("--load", choices=["closed", "open"], default="closed",
                    help="closed: the levels are concurrencies; open: request rates (Poisson arrivals)")
    sw.add_argument("--levels", nargs="+", type=float, default=[1, 2, 4, 8], metavar="L",
                    help="concurrencies (whole numbers) or rates in requests/s")
    sw.add_argument("--repeats", type=int, default=1, help="measure each level this many times (gives capacity an interval)")
    tg = p.add_argument_group("latency targets (0 turns one off)")
    tg.add_argument("--ttft-ms", type=float, default=DEFAULT_TARGETS.ttft_ms, help="time to first token")
    tg.add_argument("--tpot-ms", type=float, default=DEFAULT_TARGETS.tpot_ms, help="time per output token")
    tg.add_argument("--e2e-ms", type=float, default=DEFAULT_TARGETS.e2e_ms, help="end-to-end latency")
    cost = p.add_argument_group("cost and decision")
    cost.add_argument("--price-per-gpu-hour", type=float, default=None,
                      help="dollars per GPU-hour (default: QWEN_GPU_PRICE_PER_HOUR, else cost unknown)")
    cost.add_argument("--demand", type=float, default=None, metavar="IMAGES_PER_S",
                      help="images/s to serve: how many GPUs each version needs")
    cost.add_argument("--accuracy-tolerance", type=float, default=None,
                      help="mean IoU a version may lose before accuracy overrides speed (default 0.02)")
    add_image_server_output_arguments(p, json_help="print only one JSON object: per version its levels, "
                                                   "capacity_rps, cost_per_1k_images, and the recommendation")
    return p


def build_sweep_config(args: argparse.Namespace):
    from services.bench.sweep import SweepConfig, validate_sweep

    bench_args = argparse.Namespace(**{**vars(args), "concurrency": 1, "rate": 1.0})
    bench = build_config(bench_args)
    targets = LatencyTargets(*(v if v else None for v in (args.ttft_ms, args.tpot_ms, args.e2e_ms)))
    levels = tuple(int(v) if args.load == "closed" and float(v).is_integer() else v for v in args.levels)
    try:
        return validate_sweep(SweepConfig(bench=bench, load=args.load, levels=levels, repeats=args.repeats,
                                          targets=targets))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _price(args: argparse.Namespace) -> float | None:
    from services.core import settings

    if args.price_per_gpu_hour is not None:
        if not args.price_per_gpu_hour > 0:
            raise UsageError("--price-per-gpu-hour must be a positive number")
        return args.price_per_gpu_hour
    try:
        return settings.gpu_price_per_hour()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def print_sweep(decision, as_json: bool) -> None:
    from services.compare.capacity import capacity_table, level_table, sweep_json

    rec = decision.recommendation
    if as_json:
        print(json.dumps(sweep_json(decision.sweep, rec.sentence if rec else None), indent=1))
        return
    for title, (columns, rows) in (("levels", level_table(decision.sweep)),
                                   ("capacity", capacity_table(decision.sweep))):
        print(f"{title}:")
        print(text_table(columns, rows))
    print(f"targets: {decision.sweep.targets.describe()}")
    for n in decision.sweep.notes:
        print(f"note: {n}")
    if rec is not None:
        print(f"recommendation: {rec.sentence}")
        for line in rec.decisive:
            print(f"  {line}")
        for line in rec.not_measured:
            print(f"  not measured: {line}")


def text_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    table = [list(columns), *[list(r) for r in rows]]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(columns))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def sweep_main(argv: Sequence[str]) -> int:
    args = build_sweep_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prepared = prepare_run(args, lambda a: (build_sweep_config(a), _price(a)))
    if isinstance(prepared, int):
        return prepared
    args, (config, price), store, target = prepared

    from services.bench.sweep import start_sweep
    from services.compare.recommendation import ACCURACY_TOLERANCE, decide_run

    print(f"server: {target.label}; sweep of {config.load} loop levels {list(config.levels)}; database {store.path}",
          file=sys.stderr, flush=True)
    outcome = follow_or_quit(start_sweep(config, store, target), args, "sweep")
    if outcome is None:
        return EXIT_CODES["cancelled"]
    if args.out and outcome.run_id is not None:
        try:
            store.export_run(outcome.run_id, args.out)
        except Exception as exc:
            print(f"error: could not write the exports into {args.out}: {exc}", file=sys.stderr)
    if outcome.run_id is not None:
        tolerance = ACCURACY_TOLERANCE if args.accuracy_tolerance is None else args.accuracy_tolerance
        decision = decide_run(store, outcome.run_id, price_per_gpu_hour=price, demand_rps=args.demand,
                              tolerance=tolerance)
        print_sweep(decision, args.json)
    status = outcome.status + (f": {outcome.reason}" if outcome.reason else "")
    print(f"run {outcome.run_id}: {status}", file=sys.stderr if args.json else sys.stdout)
    store.close()
    return EXIT_CODES.get(outcome.status, 1)
