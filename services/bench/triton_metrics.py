"""Triton's Prometheus metrics page: fetched, reduced to the series the benchmark keeps, parsed.

Kept: ``nv_gpu_memory_used_bytes``, ``nv_gpu_memory_total_bytes``, ``nv_gpu_utilization``, every
``nv_inference_*``, ``vllm:*`` and ``qwen_*`` series (:func:`keep_series`). The page is fetched with
urllib, bypassing proxies from the environment (a metrics port is reached directly:
:func:`metrics_opener`, :func:`read_metrics_text`), reduced to the kept families by a line
prefilter (:func:`prefilter_metrics`) and parsed with ``prometheus_client``'s parser
(:func:`parse_metrics`). A series is keyed ``name{label="value",...}`` with sorted labels
(:func:`series_key`, :func:`parse_series_key`).
"""

from __future__ import annotations

import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

MAX_METRICS_BYTES = 16 * 1024 * 1024

KEPT_METRIC_NAMES = frozenset(
    {"nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes", "nv_gpu_utilization"}
)
KEPT_METRIC_PREFIXES = ("nv_inference_", "vllm:", "qwen_")

_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_SAMPLE_NAME = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)[{ \t]")


def series_key(name: str, labels: dict[str, str] | None = None) -> str:
    """A canonical key for one Prometheus series: ``name{a="x",b="y"}`` with sorted labels."""
    if not labels:
        return name
    parts = []
    for k in sorted(labels):
        v = str(labels[k]).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{k}="{v}"')
    return name + "{" + ",".join(parts) + "}"


def parse_series_key(key: str) -> tuple[str, dict[str, str]]:
    """The inverse of :func:`series_key`."""
    brace = key.find("{")
    if brace < 0:
        return key, {}
    labels = {}
    for k, v in _LABEL.findall(key[brace + 1 : -1]):
        labels[k] = v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
    return key[:brace], labels


def keep_series(name: str) -> bool:
    """Whether a Prometheus sample name is one the sampler keeps."""
    return name in KEPT_METRIC_NAMES or name.startswith(KEPT_METRIC_PREFIXES)


def _prefilter(text: str) -> tuple[str, set[str]]:
    """:func:`prefilter_metrics`, and the sample names of the lines it kept, as on the wire."""
    kept: list[str] = []
    wire: set[str] = set()
    for line in text.split("\n"):
        s = line.lstrip()
        if not s:
            continue
        if s[0] == "#":
            parts = s.split(None, 3)
            if len(parts) > 2 and parts[1] in ("HELP", "TYPE") and keep_series(parts[2]):
                kept.append(line)
            continue  # another family's HELP/TYPE, or a plain comment: the parser skips those
        m = _SAMPLE_NAME.match(s)
        if m is not None:
            name = m.group(1)
            if not keep_series(name):
                continue
            wire.add(name)
        kept.append(line)  # a kept series, or a line that is no sample: the parser judges it
    return "\n".join(kept) + "\n", wire


def prefilter_metrics(text: str) -> str:
    """Prometheus text reduced to the families the sampler keeps, before prometheus_client parses it.

    Triton's page carries families the sampler drops (``nv_cpu_*``, ``nv_pinned_*`` and, on a
    GPU server, ``nv_gpu_power_*``, ``nv_energy_*``, cache and histogram families...); parsing
    them would cost the sampling thread CPU for nothing. Dropped: sample lines whose metric name (the name at the line's start, followed by
    ``{`` or a blank) is not kept by :func:`keep_series`, ``# HELP``/``# TYPE`` lines naming such a
    family, and other comments. Everything else stays, in order, for the parser to judge, so text
    that is no exposition format (an HTML or JSON page) still fails to parse.
    """
    return _prefilter(text)[0]


def parse_metrics(text: str) -> dict[str, float]:
    """Parse Prometheus text into ``{series_key: value}``, keeping only the series we use.

    The text is first reduced to the kept families (:func:`prefilter_metrics`), then parsed by
    prometheus_client. Series keep the names they have on the wire: prometheus_client's parser
    appends ``_total`` to the samples of a family typed ``counter`` (Triton writes
    ``nv_inference_request_success`` without it); that suffix is taken off again where the text
    did not have it. Raises ValueError on text that is not Prometheus exposition format (lines of
    dropped families are not checked).
    """
    kept, wire = _prefilter(text)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(kept):
        for s in family.samples:
            name = s.name
            if name not in wire and name.endswith("_total") and name[:-6] in wire:
                name = name[:-6]
            if keep_series(name):
                out[series_key(name, s.labels)] = float(s.value)
    return out


def metrics_opener() -> urllib.request.OpenerDirector:
    """A urllib opener that ignores the environment's proxies (a metrics port is reached directly)."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def read_metrics_text(opener: urllib.request.OpenerDirector, url: str, timeout_s: float) -> str:
    """The metrics page at ``url`` as text (at most ``MAX_METRICS_BYTES``)."""
    with opener.open(url, timeout=timeout_s) as resp:
        body = resp.read(MAX_METRICS_BYTES)
    return body.decode("utf-8", "replace")
