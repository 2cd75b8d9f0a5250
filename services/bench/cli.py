"""Command-line benchmark: the same runs as the Benchmark page, with a progress bar.

    qwen-bench --versions 1 2 --requests 64 --warmup 4 --load closed --concurrency 1 \\
        --images generated --count 16 --max-tokens 200 --ignore-eos --out results/

(``qwen-bench`` is this module's console script; ``python -m services.bench.cli`` runs the same.)
``qwen-bench sweep ...`` measures each version over load levels until it saturates: capacity, cost
and a recommendation (:mod:`services.bench.sweep_cli`).

Writes the same database rows as the page (``RunStore``: ``--data-dir``, default ``$QWEN_DATA_DIR``
or ``data/``), and with ``--out`` the run's exports (``RunStore.export_run``: ``latency_vN.json``,
``memory_vN.csv``, ``run_<id>.json`` and the CSVs). Prints the summary table per version, the
memory baseline/peak/delta and the run id.

The server: ``--url`` names an external Triton (``host:port``, ``http://host:port`` or
``grpc://host:port``; gRPC and metrics addresses are derived, or given with ``--grpc-url`` /
``--metrics-url``); without it, ``QWEN_TRITON_URL``, else the embedded server (started here and
stopped at exit; ``--checkpoint`` picks what it serves).

Ctrl-C cancels: no more requests are sent, those in flight finish, the run is stored as
"cancelled" with everything recorded, and the exports are written. A second Ctrl-C quits at once
(the run is then marked "partial" the next time the store is opened).

Exit status: 0 completed, 1 failed (server unreachable, version not ready, every request failed),
2 bad arguments, 3 partial (the server stopped answering mid-run), 130 cancelled.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

EXIT_CODES = {"completed": 0, "failed": 1, "partial": 3, "cancelled": 130}
EXIT_USAGE = 2


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it says something: not for an option whose default is None
    (it has none, or its help text names the real one), nor where the help text already names it, nor for
    an on/off flag that is off by default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwen-bench",
        description="Benchmark the qwen model versions (1 = bf16, 2 = fp8) on Triton: latency, TTFT, TPOT, "
                    "throughput, memory and box IoU, every request recorded.",
        epilog="Exit status: 0 completed, 1 failed, 2 bad arguments, 3 partial, 130 cancelled (Ctrl-C). "
               "`qwen-bench sweep --help`: capacity and cost over load levels.",
        formatter_class=HelpFormatter)
    run = p.add_argument_group("requests")
    add_request_arguments(run)
    run.add_argument("--load", choices=["closed", "open"], default="closed",
                     help="closed loop at --concurrency, or open loop at --rate (Poisson arrivals)")
    run.add_argument("--concurrency", type=int, default=1, help="requests in flight (closed loop, and the warm-up)")
    run.add_argument("--rate", type=float, default=1.0, help="open loop: requests per second, all versions together")
    add_image_server_output_arguments(p)
    return p


def add_request_arguments(run: Any) -> None:
    """What each request asks and how many are sent (shared with ``qwen-bench sweep``)."""
    run.add_argument("--versions", nargs="+", default=None, metavar="V",
                     help="model versions of the Triton model (default 1 2); with several, requests are "
                          "interleaved on the same image order")
    run.add_argument("--variant", action="append", default=None, metavar="SPEC",
                     help="a variant to compare, repeatable, instead of --versions: a Triton version (1) or "
                          "fields, e.g. kind=openai,url=http://127.0.0.1:8100,model=demo,label=bf16-vllm "
                          "(kind triton|openai, url, model, version, label, protocol, grpc_url, metrics_url)")
    run.add_argument("--variants-file", default=None, metavar="FILE",
                     help="variants from a TOML ([[variant]] tables) or JSON file, with the fields of --variant")
    run.add_argument("--requests", type=int, default=20, help="measured requests per version")
    run.add_argument("--warmup", type=int, default=2, help="warm-up requests per version (recorded, not summarized)")
    run.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals (and of sampling when temperature > 0)")
    run.add_argument("--max-tokens", type=int, default=128)
    run.add_argument("--temperature", type=float, default=0.0)
    run.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-tokens tokens (vLLM's ignore_eos)")
    run.add_argument("--sampling", default=None, metavar="JSON",
                     help='more vLLM sampling parameters as a JSON object, e.g. \'{"top_p": 0.9}\'')
    run.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                     help="stream the answer (needed for TTFT, TPOT and ITL)")
    run.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    run.add_argument("--prompt", default=None, help="the full text_input (default: the fine-tune's training prompt)")


def add_image_server_output_arguments(p: argparse.ArgumentParser,
                                      json_help: str = "also print the stored summary as JSON") -> None:
    """The images, the server and the output options (shared with ``qwen-bench sweep``)."""
    img = p.add_argument_group("images")
    img.add_argument("--images", choices=["samples", "generated", "folder", "uploaded"], default="samples",
                     help="the bundled samples, a generated labelled set, a data set folder, or files (--files)")
    img.add_argument("--count", type=int, default=16, help="generated: how many images")
    img.add_argument("--image-seed", type=int, default=0, help="generated: the data set's seed")
    img.add_argument("--folder", help="folder: labels.jsonl folder or OpenFoodFacts parquet")
    img.add_argument("--files", nargs="+", default=[], metavar="FILE", help="uploaded: image files")
    img.add_argument("--max-side", type=int, default=1024, help="longest side sent, in pixels")
    img.add_argument("--image-reuse", action="store_true",
                     help="send the images as they are, repeated (cache hits measured on purpose); default: every "
                          "request pair sends an image the server has not seen in the run, warm-up other ones")
    img.add_argument("--image-size", default=None, metavar="WxH",
                     help="generated: every image exactly W x H pixels (e.g. 1024x768; one number: square), "
                          "written once as a labelled folder under the data folder (image_sets/) and run from there")

    srv = p.add_argument_group("server")
    srv.add_argument("--url", default=None,
                     help="an external Triton (host:port, http://host:port or grpc://host:port); "
                          "default: QWEN_TRITON_URL, else the embedded server")
    srv.add_argument("--protocol", choices=["http", "grpc"], default=None,
                     help="default: the URL's scheme, else QWEN_TRITON_PROTOCOL (http)")
    srv.add_argument("--grpc-url", default=None, help="gRPC host:port of an external server (default: port 8001)")
    srv.add_argument("--metrics-url", default=None, help="metrics URL of an external server (default: http://host:8002/metrics)")
    srv.add_argument("--server-pid", type=int, default=None,
                     help="pid of an external server on this machine, for the host-memory series")
    srv.add_argument("--checkpoint", default=None, help="embedded server: the checkpoint folder it serves")

    out = p.add_argument_group("output")
    out.add_argument("--data-dir", default=None, help="run database folder (default: QWEN_DATA_DIR or data/)")
    out.add_argument("--out", default=None, metavar="DIR", help="write the run's exports into DIR")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--json", action="store_true", help=json_help)
    out.add_argument("-v", "--verbose", action="store_true")


class UsageError(ValueError):
    """A bad argument: reported with exit status 2."""


def parse_image_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> (1024, 768); ``"1024"`` -> (1024, 1024)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        w, h = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise UsageError(f"--image-size must be WxH or one number, not {text!r}") from None
    if len(parts) > 2 or not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise UsageError(f"--image-size must be WxH with sides from 16 to 8192 pixels, not {text!r}")
    return w, h


def sized_image_folder(args: argparse.Namespace) -> argparse.Namespace:
    """With ``--image-size``: the generated set drawn at that size, written once as a labelled folder
    (``labels.jsonl`` + PNGs, ``services.image_sets.dataset_writer.write_dataset``) under the data folder; the
    run then reads that folder (ground truth included). Without it: ``args`` unchanged."""
    if args.image_size is None:
        return args
    if args.images != "generated":
        raise UsageError("--image-size is only used with --images generated")
    w, h = parse_image_size(args.image_size)
    if args.count < 1 or args.image_seed < 0:
        raise UsageError("--count must be >= 1 and --image-seed >= 0")
    from services.core import settings
    from services.image_sets.dataset_writer import write_dataset
    from services.image_sets.generator import GeneratorConfig, generate_dataset

    root = Path(args.data_dir) if args.data_dir else settings.data_dir()
    folder = root / "image_sets" / f"generated-{args.image_seed}-{args.count}-{w}x{h}"
    if not (folder / "labels.jsonl").is_file():  # written last: its presence means the set is complete
        print(f"drawing {args.count} generated labels of {w}x{h} px into {folder}...", file=sys.stderr, flush=True)
        write_dataset(folder, generate_dataset(args.image_seed, args.count, GeneratorConfig(size=(w, h))),
                      image_format="png")
    return argparse.Namespace(**{**vars(args), "images": "folder", "folder": str(folder)})


def build_config(args: argparse.Namespace):
    from services.bench.runner import BenchmarkConfig, validate_config
    from services.client.variants import DEFAULT_VERSIONS
    from services.image_sets.image_set import ImageSetSpec

    extra: dict[str, Any] = {}
    if args.sampling:
        try:
            extra = json.loads(args.sampling)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--sampling is not valid JSON: {exc}") from exc
        if not isinstance(extra, dict):
            raise UsageError("--sampling must be a JSON object")
    if args.ignore_eos:
        extra["ignore_eos"] = True
    files: tuple[tuple[str, bytes], ...] = ()
    if args.images == "uploaded":
        if not args.files:
            raise UsageError("--images uploaded needs --files FILE [FILE ...]")
        try:
            files = tuple((Path(f).name, Path(f).read_bytes()) for f in args.files)
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    elif args.files:
        raise UsageError("--files is only used with --images uploaded")
    if args.images == "folder" and not args.folder:
        raise UsageError("--images folder needs --folder PATH")
    variants = build_variants(args)
    spec = ImageSetSpec(kind=args.images, seed=args.image_seed, count=args.count, folder=args.folder,
                        images=files, max_side=args.max_side, reuse=args.image_reuse)
    config = BenchmarkConfig(
        versions=tuple(args.versions or DEFAULT_VERSIONS), variants=variants, image_set=spec, requests=args.requests,
        warmup=args.warmup,
        load=args.load, concurrency=args.concurrency, rate=args.rate, max_tokens=args.max_tokens,
        temperature=args.temperature, stream=args.stream, timeout_s=args.timeout, protocol=args.protocol,
        seed=args.seed, extra_sampling=extra, prompt=args.prompt)
    try:
        return validate_config(config)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def build_variants(args: argparse.Namespace) -> tuple:
    """The ``--variant`` / ``--variants-file`` variants (services.client.variants); () for ``--versions``."""
    from services.client.variants import variants_from_options

    if not (getattr(args, "variant", None) or getattr(args, "variants_file", None)):
        return ()
    if args.versions:
        raise UsageError("give either --versions or --variant / --variants-file, not both")
    try:
        return variants_from_options(args.variant, args.variants_file)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def build_target(args: argparse.Namespace, variants: Sequence[Any] = ()):
    """The run's server: ``--url``, else QWEN_TRITON_URL, else the embedded one (started here). When
    every variant names its own server, the first one's (nothing embedded is started)."""
    from services.core import settings
    from services.client.server_target import current_target, external_target
    from services.client.triton_client import parse_url
    from services.client.variants import own_target

    if variants and not args.url:
        try:
            own = own_target(variants)
        except ValueError as exc:
            raise UsageError(f"bad server URL of variant {variants[0].label}: {exc}") from exc
        if own is not None:
            return own
    url = args.url or settings.triton_url()
    if url:
        try:
            parse_url(url, None)  # the same checks (scheme, no path) the client will make
            target = external_target(url, args.protocol)
        except ValueError as exc:
            raise UsageError(f"bad server URL: {exc}") from exc
        changes = {k: v for k, v in (("grpc_url", args.grpc_url), ("metrics_url", args.metrics_url),
                                     ("server_pid", args.server_pid)) if v is not None}
        return dataclasses.replace(target, **changes) if changes else target
    if args.checkpoint:
        from services.serving.embedded_triton import shared_server

        shared_server(checkpoint=args.checkpoint)
    print("starting the embedded Triton server...", file=sys.stderr, flush=True)
    return current_target(None, args.protocol)


# --------------------------------------------------------------------------- output


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def summary_table(summaries: dict[str, Any]) -> str:
    """One line per version: counts, latency (ms), TTFT, TPOT, throughput."""
    from services.core.settings import VERSIONS

    header = ["version", "ok", "failed", "mean", "min", "p50", "p90", "p99", "max", "TTFT p50", "TTFT p99",
              "TPOT", "req/s", "tok/s"]
    rows = [header]
    for v, s in summaries.items():
        name = f"{v} ({VERSIONS[v]})" if v in VERSIONS else v
        rows.append([name, str(s.count), str(s.failures), _ms(s.mean_ms), _ms(s.min_ms), _ms(s.p50_ms),
                     _ms(s.p90_ms), _ms(s.p99_ms), _ms(s.max_ms), _ms(s.ttft_p50_ms), _ms(s.ttft_p99_ms),
                     _ms(s.tpot_mean_ms), _rate(s.requests_per_s), _rate(s.output_tokens_per_s)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n(latency, TTFT and TPOT in ms; warm-up excluded)"


def memory_lines(memory: Sequence[Any]) -> list[str]:
    from services.bench.sample_series import chart_label

    from services.core.units import MIB as mib

    out = []
    for m in memory:
        if not (m.kind in ("device", "gpu", "host")):  # gauges such as qwen_engine_weight_bytes are in the manifest
            continue
        out.append(f"  {m.source:7s} {chart_label(m.kind, m.gpu, m.model, m.version):14s} "
                   f"baseline {m.baseline_bytes / mib:10.1f} MiB  peak {m.peak_bytes / mib:10.1f} MiB  "
                   f"delta {m.delta_bytes / mib:+9.1f} MiB  ({m.samples} samples)")
    return out


def print_outcome(outcome: Any, out_paths: list[Path], as_json: bool) -> None:
    print(summary_table(outcome.summaries))
    from services.core.versions import version_label

    for v, s in outcome.summaries.items():
        for n in s.notes:
            print(f"note: {version_label(v)}: {n}")
    mem = memory_lines(outcome.memory)
    if mem:
        print("memory over the run (baseline before the first request):")
        print("\n".join(mem))
    open_loop = outcome.summary.get("open_loop") if outcome.summary else None
    if open_loop and open_loop.get("late_sends"):
        print(f"note: {open_loop['late_sends']} open-loop requests started more than "
              f"{open_loop['late_threshold_ms']:g} ms after their arrival time (max {open_loop['max_lag_ms']:.1f} ms)")
    if as_json:
        print(json.dumps(outcome.summary, indent=2, default=str))
    status = outcome.status + (f": {outcome.reason}" if outcome.reason else "")
    print(f"run {outcome.run_id}: {status}")
    if out_paths:
        print(f"exports in {out_paths[0].parent}: {', '.join(p.name for p in out_paths)}")


# --------------------------------------------------------------------------- main


def prepare_run(args: argparse.Namespace, build: Callable[[argparse.Namespace], Any]) -> tuple | int:
    """``(args, config, store, target)`` of a run (``build`` makes its config from the arguments), or
    the exit code after saying why not: a usage mistake, or a server or data folder that failed."""
    try:
        args = sized_image_folder(args)
        config = build(args)
        from services.bench.store import RunStore

        store = RunStore(args.data_dir)
        target = build_target(args, getattr(config, "variants", ()) or getattr(getattr(config, "bench", None),
                                                                                  "variants", ()))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # the embedded server could not start, the data folder is not writable...
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_CODES["failed"]
    return args, config, store, target


def follow_or_quit(handle: Any, args: argparse.Namespace, what: str) -> Any:
    """The outcome of a started run or sweep, followed with a progress bar; None when the user quit."""
    try:
        return _follow(handle, show_bar=not args.no_progress)
    except KeyboardInterrupt:
        print(f"quit before the {what} finished: it will be marked partial when the store is next opened",
              file=sys.stderr)
        return None


def _follow(handle: Any, show_bar: bool) -> Any:
    """Show progress until the run ends; Ctrl-C cancels it (a second one quits)."""
    from tqdm import tqdm

    p = handle.progress()
    bar = tqdm(total=p.total, unit="req", dynamic_ncols=True, file=sys.stderr, disable=not show_bar,
               desc="starting")
    try:
        cancelled = False
        shown = None
        while True:
            try:
                outcome = handle.wait(0.2)
                p = handle.progress()
                state = (p.done, p.status, p.failures, p.stopping)
                if state != shown:  # redraw on change only (a log file gets no flood of identical lines)
                    shown = state
                    bar.set_description("stopping" if p.stopping and not p.finished else p.status, refresh=False)
                    bar.set_postfix(failures=p.failures, refresh=False)
                    bar.update(p.done - bar.n)
                    bar.refresh()
                if outcome is not None:
                    return outcome
            except KeyboardInterrupt:
                if cancelled:
                    raise
                cancelled = True
                handle.cancel()
                bar.write("cancelling: no more requests are sent; waiting for those in flight "
                          "(Ctrl-C again to quit at once)", file=sys.stderr)
    finally:
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:  # qwen-bench sweep ...: load levels until saturation (services.bench.sweep_cli)
        from services.bench.sweep_cli import sweep_main

        return sweep_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prepared = prepare_run(args, build_config)
    if isinstance(prepared, int):
        return prepared
    args, config, store, target = prepared

    from services.bench.runner import start_benchmark

    print(f"server: {target.label}, protocol {config.protocol or target.protocol}; database {store.path}",
          file=sys.stderr, flush=True)
    outcome = follow_or_quit(start_benchmark(config, store, target), args, "run")
    if outcome is None:
        return EXIT_CODES["cancelled"]
    paths: list[Path] = []
    if args.out and outcome.run_id is not None:
        try:
            paths = store.export_run(outcome.run_id, args.out)
        except Exception as exc:
            print(f"error: could not write the exports into {args.out}: {exc}", file=sys.stderr)
    print_outcome(outcome, paths, args.json)
    if outcome.status == "failed":
        print(f"error: the run failed: {outcome.reason}", file=sys.stderr)
    store.close()
    return EXIT_CODES.get(outcome.status, 1)


if __name__ == "__main__":
    raise SystemExit(main())
