"""Turn a GPU run's outputs into the results page ``docs/gpu-results.md``.

    python scripts/gpu_results_page.py --results RESULTS_DIR [--out docs/gpu-results.md] [--decode decode.json]

RESULTS_DIR is the folder ``scripts/gpu_run.sh`` fills (it comes back inside ``results.tar.gz``):

| file | written by | gives |
|---|---|---|
| ``env.json`` | ``gpu_stages.py envinfo`` | GPU, driver, Python and package versions |
| ``stages.tsv`` | ``gpu_run.sh`` | each stage's verdict and wall time |
| ``build7b/build7b.json`` | ``gpu_stages.py build7b`` | the checkpoint's parameters and build time |
| ``smoke/smoke.json`` | ``gpu_stages.py smoke`` | the embedded server's first answers |
| ``tests/junit.xml`` | ``pytest -m gpu`` | the GPU tests' outcomes |
| ``decode/decode.json`` | ``scripts/bench_decode.py`` (merged) | decode speed against the floor |
| ``headline/headline.json`` | ``gpu_stages.py headline`` | the exact commands, the run's status |
| ``headline/bench/run_<id>.json`` | ``services.bench.cli --out`` | the run's summary, config and manifest |
| ``headline/report/comparison_run<id>_v1_v2.json`` | ``services.compare.report`` | every compared figure |
| ``headline/memory_after_load.json``, ``memory_after_bench.json`` | ``scripts/gpu_memory_check.py`` | memory checks |

Every figure is copied from those files (nothing is recomputed); what is missing is said to be
missing. Runs on any machine (no GPU needed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent
GB = 1e9
GIB = 2**30
MIB = 2**20


# --------------------------------------------------------------------------- reading


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def first_file(folder: Path, pattern: str) -> Path | None:
    hits = sorted(folder.glob(pattern)) if folder.is_dir() else []
    return hits[-1] if hits else None


def get(d: Any, *path: Any, default: Any = None) -> Any:
    for p in path:
        if isinstance(d, Mapping) and p in d:
            d = d[p]
        elif isinstance(d, list) and isinstance(p, int) and -len(d) <= p < len(d):
            d = d[p]
        else:
            return default
    return d


def junit_summary(path: Path) -> dict[str, Any] | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "cases": []}
    for s in suites:
        for k in ("tests", "failures", "errors", "skipped"):
            out[k] += int(s.get(k, 0) or 0)
        for case in s.iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    message = (el.get("message") or "").splitlines()[0][:160] if el.get("message") else ""
                    break
            out["cases"].append({"name": f"{case.get('classname', '')}::{case.get('name', '')}",
                                 "outcome": outcome, "seconds": float(case.get("time", 0) or 0), "message": message})
    return out


def stages_table(path: Path) -> list[tuple[str, str, str]]:
    rows = []
    try:
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                rows.append((parts[0], parts[1], parts[2]))
    except OSError:
        pass
    return rows


# --------------------------------------------------------------------------- formatting


def num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def gb(v: Any, digits: int = 2) -> str:
    x = num(v)
    return "n/a" if x is None else f"{x / GB:.{digits}f} GB"


def ms(v: Any) -> str:
    x = num(v)
    return "n/a" if x is None else (f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}")


def pct(v: Any, digits: int = 1) -> str:
    x = num(v)
    return "n/a" if x is None else f"{x * 100:.{digits}f} %"


def plain(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return out


def flatten(d: Any, prefix: str = "", limit: int = 80) -> list[tuple[str, Any]]:
    """Scalar leaves of nested data as (dotted key, value); long lists of numbers are summarised."""
    out: list[tuple[str, Any]] = []

    def walk(x: Any, key: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, Mapping):
            for k, v in x.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(x, list):
            if x and all(num(v) is not None for v in x) and len(x) > 4:
                vals = sorted(num(v) for v in x)
                out.append((key, f"{len(vals)} values, median {vals[len(vals) // 2]:.4g}, min {vals[0]:.4g}, "
                                 f"max {vals[-1]:.4g}"))
            else:
                for i, v in enumerate(x[:8]):
                    walk(v, f"{key}[{i}]")
        else:
            out.append((key, x))

    walk(d, prefix)
    return out


# --------------------------------------------------------------------------- sections


def section_environment(env: Mapping[str, Any] | None, manifest: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Machine and software", ""]
    if not env:
        return lines + ["No `env.json` in the results: the environment was not recorded.", ""]
    pk = env.get("packages") or {}
    dev = env.get("device") or {}
    server = get(manifest, "server", "version")
    rows = [
        ("GPU", env.get("gpu_name") or dev.get("name") or "n/a"),
        ("GPU memory", env.get("gpu_memory") or (gb(dev.get("total_memory_bytes")) if dev else "n/a")),
        ("compute capability", dev.get("capability", "n/a")),
        ("NVIDIA driver", env.get("driver", "n/a")),
        ("CUDA (torch build)", env.get("torch_cuda", "n/a")),
        ("Python", env.get("python", "n/a")),
        ("torch", pk.get("torch", "n/a")),
        ("transformers", pk.get("transformers", "n/a")),
        ("torchao", pk.get("torchao", "n/a")),
        ("numpy (Triton's Python stub needs < 2)", pk.get("numpy", "n/a")),
        ("Triton Inference Server", f"{server} (the `tritonserver` of nvidia-pytriton "
                                    f"{get(env, 'bundle', 'nvidia-pytriton', default='0.7.0')})"
         if server else get(env, "bundle", "triton_server", default="n/a")),
        ("tritonclient", pk.get("tritonclient", "n/a")),
        ("plotly", pk.get("plotly", "n/a")),
        ("pandas", pk.get("pandas", "n/a")),
        ("host", f"{env.get('platform', 'n/a')}, {env.get('cpus', '?')} CPUs"),
    ]
    return lines + table(["what", "value"], [(a, plain(b)) for a, b in rows]) + [""]


def section_commands(headline: Mapping[str, Any] | None, stages: list[tuple[str, str, str]]) -> list[str]:
    cmds = (headline or {}).get("commands") or {}
    lines = [
        "## How to rerun it", "",
        "On the development machine, once (builds `carry/gpu/`, about 45 MiB, from PyPI wheels):", "",
        "```bash", ".venv/bin/python scripts/gpu_bundle.py", "```", "",
        "Then one device-tool call per stage group (each fits the 10-minute limit), `carry` = `[\"carry/gpu\"]`:",
        "", "```bash", "bash scripts/gpu_run.sh smoke tests          # embedded Triton on the demo detector, GPU tests",
        "bash scripts/gpu_run.sh build7b decode         # the 7B checkpoint, decode speed against the floor",
        "bash scripts/gpu_run.sh build7b headline       # the 7B checkpoint, memory check, benchmark, report, this page",
        "```", "",
        "What the headline stage ran on the GPU machine (the server is started first by `scripts/gpu_stages.py "
        "headline` with a long ready timeout; the benchmark command line then runs in that process against it):", "",
        "```bash",
    ]
    for key in ("memory_check", "bench", "comparison_report"):
        if key in cmds:
            lines.append(cmds[key])
    if not cmds:
        lines.append("# (no headline.json: the headline stage did not run in this call)")
    lines += ["python scripts/gpu_results_page.py --results <results folder> --out docs/gpu-results.md", "```", ""]
    if stages:
        lines += ["Stages of the call that produced this page:", ""]
        lines += table(["stage", "verdict", "wall time"], stages) + [""]
    return lines


def section_checkpoint(build: Mapping[str, Any] | None) -> list[str]:
    lines = ["## The checkpoint", ""]
    if not build:
        return lines + ["No `build7b/build7b.json`: the checkpoint build was not recorded in this call.", ""]
    spec = build.get("spec") or {}
    lines.append(
        f"Qwen2-VL-7B's exact architecture with **random weights** (no download possible), built on the GPU "
        f"from `{Path(str(build.get('config', 'configs/qwen2-vl-7b.json'))).name}` with the project's tokenizer: "
        f"text hidden {spec.get('hidden_size')}, intermediate {spec.get('intermediate_size')}, "
        f"{spec.get('num_hidden_layers')} layers, {spec.get('num_attention_heads')} heads, "
        f"{spec.get('num_key_value_heads')} KV heads, vocabulary {spec.get('vocab_size')}, mrope "
        f"{spec.get('mrope_section')}, untied lm_head; vision depth {spec.get('vision_depth')}, embed "
        f"{spec.get('vision_embed_dim')}, {spec.get('vision_num_heads')} heads.")
    lines.append("")
    rows = [("parameters", plain(build.get("parameters"))),
            ("of which the vision tower", plain(build.get("vision_parameters"))),
            ("bytes written (bf16 safetensors)", gb(build.get("bytes"))),
            ("build time", "reused (already built)" if build.get("skipped") else f"{build.get('seconds')} s")]
    return lines + table(["what", "value"], rows) + [
        "", "Random weights: the boxes it answers mean nothing (accuracy figures below are not the fine-tune's); "
            "sizes, memory and speed are those of the real architecture.", ""]


def headline_run_line(comparison: Mapping[str, Any], run: Mapping[str, Any] | None) -> str:
    """The sentence saying how the headline run was made (load, requests, tokens, images)."""
    cfg = get(comparison, "runs", 0, "config") or get(run, "config") or {}
    img = cfg.get("image_set") or {}
    status = get(comparison, "runs", 0, "status")
    reason = get(comparison, "runs", 0, "reason")
    return (
        f"Run {get(comparison, 'a', 'run_id')} ({status}{': ' + reason if reason else ''}): closed loop at "
        f"concurrency {cfg.get('concurrency')}, {cfg.get('requests')} measured requests per version after "
        f"{cfg.get('warmup')} warm-up, both versions interleaved on the same images; {cfg.get('max_tokens')} output "
        f"tokens forced (`ignore_eos`: {get(cfg, 'extra_sampling', 'ignore_eos', default=False)}), "
        f"streaming {cfg.get('stream')}, protocol {cfg.get('protocol')}; images: {comparison.get('image_set')}"
        + (f" ({Path(str(img.get('folder'))).name})" if img.get("folder") else "") + ".")


def headline_figures(comparison: Mapping[str, Any], run: Mapping[str, Any] | None,
                     sides: Sequence[tuple[str, str]]) -> list[list[str]]:
    """The rows of the figures table: memory, request counts, latencies, throughput, decode floor."""
    lat = {m.get("metric"): m for m in comparison.get("latency") or []}
    mem = comparison.get("memory") or {}
    thr = comparison.get("throughput") or {}
    summ = get(run, "summary", "versions") or {}

    def dist(metric: str, side: str, q: str) -> str:
        return ms(get(lat, metric, f"dist_{side}", q))

    def row(label: str, f) -> list[str]:
        return [label] + [f(s) for s, _ in sides]

    floor = {s: comparison.get(f"floor_{s}") or {} for s, _ in sides}
    version = {s: str(get(comparison, s, "version")) for s, _ in sides}
    return [
        row("weights (dashboard: server gauge)", lambda s: gb(get(mem, s, "weights_bytes"))),
        row("decoder linear layers' weights", lambda s: gb(get(mem, s, "decoder_linear_bytes"))),
        row("peak memory of the version's processes", lambda s: gb(get(mem, s, "peak_bytes"))
            + f" ({get(mem, s, 'source')})"),
        row("baseline before the first request", lambda s: gb(get(mem, s, "baseline_bytes"))),
        row("rest (peak - weights - KV room)", lambda s: gb(get(mem, s, "rest_bytes"))),
        row("KV-cache room", lambda s: gb(get(mem, s, "kv_room_bytes")) if get(mem, s, "kv_room_bytes") is not None
            else "not reserved"),
        row("measured requests / failed", lambda s: f"{get(summ, version[s], 'count', default='n/a')} / "
                                                    f"{get(summ, version[s], 'failures', default='n/a')}"),
        row("TTFT p50 / p90 / p99 (ms)", lambda s: " / ".join(dist("ttft_ms", s, q) for q in ("p50", "p90", "p99"))),
        row("TPOT median / mean (ms)", lambda s: f"{dist('tpot_ms', s, 'p50')} / {dist('tpot_ms', s, 'mean')}"),
        row("latency p50 / p90 / p99 (ms)", lambda s: " / ".join(dist("latency_ms", s, q) for q in ("p50", "p90", "p99"))),
        row("latency mean / min / max (ms)", lambda s: " / ".join(dist("latency_ms", s, q) for q in ("mean", "min", "max"))),
        row("output tokens per second", lambda s: plain(get(thr, s, "output_tokens_per_s"))),
        row("requests per second", lambda s: plain(get(thr, s, "requests_per_s"))),
        row("decode floor (all weights / bandwidth, ms)", lambda s: ms(floor[s].get("floor_ms"))),
        row("decode floor (decoder linear only, ms)", lambda s: ms(floor[s].get("lower_floor_ms"))),
        row("decode: fraction of the floor (floor / TPOT)", lambda s: pct(floor[s].get("fraction"))
            + f" (decoder linear only: {pct(floor[s].get('lower_fraction'))})"),
    ]


def headline_bandwidth_and_memory(comparison: Mapping[str, Any]) -> list[str]:
    """The bandwidth behind the floor, the memory fp8 saves and each whole GPU's baseline and peak."""
    mem = comparison.get("memory") or {}
    floor_a = comparison.get("floor_a") or {}
    bw = floor_a.get("bandwidth_bytes_per_s")
    lines = ["", f"Bandwidth used for the floor: {plain(None if bw is None else f'{bw / 1e12:.2f} TB/s')} "
                 f"({floor_a.get('bandwidth_source')}); {floor_a.get('reason')}."]
    saved, saved_pct = mem.get("saved_bytes"), mem.get("saved_pct")
    if saved is not None:
        lines += [f"Memory saved by fp8 on {mem.get('basis')}: {gb(saved)} "
                  f"({'n/a' if num(saved_pct) is None else f'{saved_pct:.1f}'} %)."]
    dev = mem.get("device") or []
    for d in dev:
        lines.append(f"Whole GPU {d.get('gpu')}: baseline {gb(d.get('baseline_bytes'))}, peak {gb(d.get('peak_bytes'))} "
                     f"({d.get('source')}; both versions and every process together).")
    return lines


def headline_differences(comparison: Mapping[str, Any]) -> list[str]:
    """The B - A differences table, then the report's verdict and notes."""
    lines = ["", "Differences (B - A, medians, 95 % bootstrap interval over the pairs):", ""]
    drows = []
    for m in comparison.get("latency") or []:
        d = m.get("difference") or {}
        drows.append([m.get("label") or m.get("metric"), ms(d.get("a")), ms(d.get("b")), ms(d.get("diff")),
                      pct(d.get("rel")), f"[{ms(d.get('lo'))}, {ms(d.get('hi'))}]",
                      {True: "yes", False: "no", None: "n/a"}[d.get("significant")]])
    lines += table(["metric (ms)", "A", "B", "B - A", "relative", "95 % CI", "significant"], drows)
    verdict = get(comparison, "verdict", "lines") or []
    if verdict:
        lines += ["", "The report's verdict:", ""] + [f"- {v}" for v in verdict]
    notes = comparison.get("notes") or []
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return lines


def section_headline(comparison: Mapping[str, Any] | None, run: Mapping[str, Any] | None,
                     headline: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Headline figures: bf16 (version 1) against fp8 (version 2)", ""]
    if not comparison:
        status = get(headline, "run")
        error = get(headline, "error")
        return lines + [f"No comparison report in the results (run: {status}"
                        + (f"; {error}" if error else "") + ").", ""]
    sides = [("a", get(comparison, "a", "label", default="A")), ("b", get(comparison, "b", "label", default="B"))]
    lines += [headline_run_line(comparison, run), ""]
    lines += table(["figure", *[label for _, label in sides]], headline_figures(comparison, run, sides))
    lines += headline_bandwidth_and_memory(comparison)
    lines += headline_differences(comparison)
    return lines + [""]


def section_memory(checks: Sequence[tuple[str, Mapping[str, Any] | None]]) -> list[str]:
    lines = ["## Memory: the sampler against nvidia-smi and torch", ""]
    if not any(c for _, c in checks):
        return lines + ["No memory check in the results.", ""]
    for title, c in checks:
        if not c:
            lines += [f"### {title}", "", "Not recorded.", ""]
            continue
        lines += [f"### {title}", ""]
        lines += table(["check", "verdict", "detail"],
                       [(ch["name"], {True: "PASS", False: "FAIL", None: "n/a"}[ch["pass"]], plain(ch["detail"]))
                        for ch in c.get("checks") or []])
        rows = []
        for v, vc in sorted((c.get("versions") or {}).items()):
            w, r, d = vc.get("weights_vs_allocated") or {}, vc.get("process_vs_reserved") or {}, vc.get("dashboard") or {}
            rows.append([f"v{v}", gb(w.get("weights_bytes"), 3), gb(w.get("torch_allocated_bytes"), 3),
                         "n/a" if w.get("excess_bytes") is None else f"{w['excess_bytes'] / MIB:+,.0f} MiB",
                         gb(r.get("nvml_process_bytes"), 3), gb(r.get("torch_reserved_bytes"), 3),
                         "n/a" if r.get("outside_torch_bytes") is None else f"{r['outside_torch_bytes'] / MIB:+,.0f} MiB",
                         gb(d.get("rest_bytes"), 3)])
        if rows:
            lines += ["", *table(["version", "weights (dashboard)", "torch allocated", "allocated - weights",
                                  "NVML process", "torch reserved", "NVML - reserved", "rest (dashboard)"], rows)]
        dev = c.get("device") or {}
        if dev.get("explanation"):
            lines += ["", f"Why the device totals differ: {dev['explanation']}."]
        notes = c.get("notes") or []
        if notes:
            lines += ["", *[f"- {n}" for n in notes]]
        lines.append("")
    return lines


def section_decode(decode: Any) -> list[str]:
    lines = ["## Decode speed against the memory-bandwidth floor (`scripts/bench_decode.py`)", ""]
    if not decode:
        return lines + ["Not run in the call that produced these results (no `decode/decode.json`).", ""]
    for name, part in (decode.items() if isinstance(decode, Mapping) else [("decode", decode)]):
        lines += [f"### {name}", ""]
        if isinstance(part, Mapping) and "missing" in part and len(part) == 1:
            lines += [f"Missing: {part['missing']}.", ""]
            continue
        results = part.get("results") if isinstance(part, Mapping) else None
        if not results:  # not bench_decode's layout: show what is there
            lines += table(["figure", "value"], [(k, plain(v)) for k, v in flatten(part)]) + [""]
            continue
        lines += decode_table(part) + [""]
    return lines


def _agreement(entries: Sequence[Mapping[str, Any]]) -> str:
    words = []
    for e in entries:
        if e.get("equal"):
            words.append(f"equal ({e.get('tokens')} tokens)")
        else:
            margin = e.get("margin")
            words.append(f"differs at token {e.get('first_difference')}"
                         + (f", top-2 margin {margin:.3f} nats" if margin is not None else "")
                         + (" (near tie)" if e.get("near_tie") else " (NOT a near tie)"))
    return "; ".join(words) or "n/a"


def decode_table(part: Mapping[str, Any]) -> list[str]:
    """bench_decode.py's figures per precision, side by side."""
    env = part.get("environment") or {}
    results = list(part["results"])
    bw = num(env.get("copy_bandwidth_bytes_per_s"))

    def row(label: str, f) -> list[str]:
        return [label] + [f(r) for r in results]

    def mode(r):
        d = r.get("decode") or {}
        text = str(d.get("decode_mode"))
        if d.get("compiled"):
            text += f", torch.compile'd ({d.get('compile_seconds')} s)"
        if d.get("capture_error") or d.get("compile_error"):
            text += f"; error: {d.get('capture_error') or d.get('compile_error')}"
        return text

    rows = [
        row("decode path", mode),
        row("weight bytes read per step", lambda r: gb(get(r, "step_weight_bytes", "total"))),
        row("KV cache read per step (static, masked)", lambda r: gb(r.get("kv_cache_bytes_read_per_step"), 3)),
        row("floor = weights read / copy bandwidth (ms)", lambda r: ms(num(r.get("floor_s")) * 1e3)),
        row("fast path TPOT, median (ms)", lambda r: ms(num(r.get("tpot_fast_s")) * 1e3)),
        row("fast path TPOT / floor", lambda r: f"{num(r.get('fast_over_floor')):.2f}x"),
        row("plain generate() TPOT (ms)", lambda r: ms(num(r.get("tpot_plain_s")) * 1e3)
            if r.get("tpot_plain_s") else "n/a"),
        row("speed-up over plain", lambda r: f"{num(r.get('speedup_over_plain')):.1f}x"
            if r.get("speedup_over_plain") else "n/a"),
        row("prefill, median (ms)", lambda r: ms(num(r.get("prefill_s_median")) * 1e3)),
        row("kernels per step / GPU time per step (ms)",
            lambda r: f"{get(r, 'profile', 'kernels_per_step'):.0f} / {get(r, 'profile', 'gpu_ms_per_step'):.2f}"
            if r.get("profile") else "n/a"),
        row("torch allocated after load", lambda r: gb(r.get("allocated_bytes_after_load"))),
        row("greedy tokens, fast vs plain", lambda r: _agreement(r.get("greedy_equality") or [])),
    ]
    header = ["figure"] + [str(r.get("precision")) for r in results]
    lines = [f"Measured copy bandwidth {bw / 1e12:.2f} TB/s (bytes read + written); "
             f"{get(results[0], 'fast_runs', 0, 'output_tokens')} forced tokens per request, "
             f"{get(results[0], 'fast_runs', 0, 'input_tokens')} input tokens (a 1024x1024 label)."
             if bw else "", ""]
    lines += table(header, rows)
    verdict = part.get("verdict") or {}
    if verdict:
        lines += ["", "Targets: " + ", ".join(f"{k}: {plain(v)}" for k, v in verdict.items()) + "."]
    return lines


def tests_stage_note(stages: list[tuple[str, str, str]]) -> str:
    """What ``stages.tsv`` says of the tests stage when it did not pass: junit.xml holds only the
    tests that finished, so a stage cut off at its deadline must not read as a clean run."""
    for name, verdict, seconds in stages:
        if name == "tests" and verdict != "PASS":
            return (f" The tests stage ended {verdict} after {seconds}: the tests below are those that finished; "
                    "the rest of the collected GPU tests did not run.")
    return ""


def section_smoke_tests(smoke: Mapping[str, Any] | None, junit: Mapping[str, Any] | None,
                        stage_note: str = "") -> list[str]:
    lines = ["## Smoke run and GPU tests", ""]
    if smoke:
        lines.append(f"Embedded Triton on `{Path(str(smoke.get('checkpoint'))).name}` ({smoke.get('device')}), "
                     f"versions 1 and 2 loaded together, ready in {smoke.get('ready_s')} s: "
                     + ("every request answered." if smoke.get("ok") else "problems: " + "; ".join(smoke.get("problems") or [])))
        lines += [""] + table(["protocol", "version", "ok", "output tokens", "latency ms", "TTFT ms", "answer"],
                              [(r.get("protocol"), r.get("version"), r.get("ok"), r.get("output_tokens"),
                                ms(r.get("latency_ms")), ms(r.get("ttft_ms")), plain(r.get("text") or r.get("error")))
                               for r in smoke.get("requests") or []])
        for v, rep in sorted((smoke.get("reports") or {}).items()):
            if rep:
                lines.append(f"- v{v}: {rep.get('precision')}, mode {rep.get('mode')}, "
                             f"{rep.get('layers_quantized')} of {rep.get('decoder_linear_layers')} decoder linear "
                             f"layers quantized, weights {gb(rep.get('model_weight_bytes_after'), 4)}")
        lines.append("")
    else:
        lines += ["Smoke stage not run in this call.", ""]
    if junit:
        lines.append(f"`pytest -m gpu`: {junit['tests']} tests, {junit['failures']} failed, {junit['errors']} errors, "
                     f"{junit['skipped']} skipped." + stage_note)
        lines += [""] + table(["test", "outcome", "seconds", "message"],
                              [(c["name"], c["outcome"], f"{c['seconds']:.1f}", plain(c["message"]))
                               for c in junit["cases"]]) + [""]
    else:
        lines += ["GPU tests not run in this call.", ""]
    return lines


def build_page(results: Path, decode_path: Path | None = None, earlier: str | None = None) -> str:
    """The page; ``earlier`` names an earlier page that holds the stages this call did not run."""
    env = read_json(results / "env.json")
    headline = read_json(results / "headline" / "headline.json")
    run_file = first_file(results / "headline" / "bench", "run_*.json")
    run = get(read_json(run_file), "run") if run_file else None
    comp_file = first_file(results / "headline" / "report", "comparison_run*_v1_v2.json") or \
        first_file(results / "headline" / "report", "comparison_*.json")
    comparison = get(read_json(comp_file), "comparison") if comp_file else None
    manifest = get(comparison, "runs", 0, "manifest") or get(run, "manifest")
    decode = read_json(decode_path) if decode_path else read_json(results / "decode" / "decode.json")
    lines = [
        "# GPU results: Qwen2-VL-7B architecture, bf16 against fp8, through the embedded Triton", "",
        f"Generated by `scripts/gpu_results_page.py` from the outputs of `scripts/gpu_run.sh` "
        f"(recorded {get(manifest, 'created_at', default=get(env, 'recorded_at', default='at an unknown time'))}). "
        "Every figure below is copied from those outputs; none is typed by hand.", "",
    ]
    if earlier:
        lines += [f"The stages this call did not run (said below where they are missing) were last run in an "
                  f"earlier call, on the code of that time: see [{Path(earlier).name}]({Path(earlier).name}).", ""]
    lines += section_environment(env, manifest)
    lines += section_checkpoint(read_json(results / "build7b" / "build7b.json"))
    lines += section_headline(comparison, run, headline)
    lines += section_memory([("After load, before any request", read_json(results / "headline" / "memory_after_load.json")),
                             ("After the benchmark (with the report's figures)",
                              read_json(results / "headline" / "memory_after_bench.json"))])
    lines += section_decode(decode)
    stages = stages_table(results / "stages.tsv")
    lines += section_smoke_tests(read_json(results / "smoke" / "smoke.json"),
                                 junit_summary(results / "tests" / "junit.xml"), tests_stage_note(stages))
    lines += section_commands(headline, stages)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True, type=Path, help="the results folder of scripts/gpu_run.sh")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "gpu-results.md")
    p.add_argument("--decode", type=Path, help="decode.json from another call (default: RESULTS/decode/decode.json)")
    p.add_argument("--earlier", help="an earlier results page (kept beside --out) with the stages this call did not run")
    args = p.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: {args.results} is not a folder", file=sys.stderr)
        return 2
    page = build_page(args.results, args.decode, args.earlier)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"wrote {args.out} ({len(page.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
