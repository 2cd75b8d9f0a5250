"""A standalone vLLM server's ``/metrics``: what Triton's vLLM backend does not publish.

``vllm serve`` (vLLM 0.32) exposes, per engine and labelled ``model_name``:

* ``vllm:kv_cache_usage_perc``: the fraction (0 to 1, despite the name) of KV-cache blocks in use
  (``vllm:gpu_cache_usage_perc`` in vLLM before 0.10, read where the new name is absent);
* ``vllm:num_requests_running`` / ``vllm:num_requests_waiting``: the engine's batch and queue;
* ``vllm:cache_config_info``: a gauge of value 1 whose labels carry the cache configuration,
  ``num_gpu_blocks`` (the KV blocks allocated, on the CPU too), ``block_size`` (tokens per block)
  and ``kv_cache_max_concurrency`` (how many requests of ``max_model_len`` tokens fit).

The benchmark's sampler keeps every ``vllm:*`` series of whatever metrics URL it is given, so a
``Sample.metrics`` of a vLLM server's page reads the same way (``vllm_metrics_from_series``);
``cache_facts`` gives the KV room under the keys Compare's capacity reads from a run manifest.

``read_vllm_metrics`` fetches the page and parses it with the benchmark's helpers
(services.bench.triton_metrics: prometheus_client's parser, proxies bypassed) into a
``VllmServerMetrics``; ``kv_tokens`` = ``num_gpu_blocks`` x ``block_size`` is the KV room in tokens,
the number capacity needs. Anything the page lacks stays ``None`` (unknown), never zero.

Example::

    m = read_vllm_metrics("http://127.0.0.1:8100/metrics", model_name="demo-detector-bf16")
    print(m.kv_tokens, m.kv_cache_usage, m.requests_running, m.requests_waiting)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.bench.triton_metrics import metrics_opener, parse_metrics, parse_series_key, read_metrics_text

KV_USAGE_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
CACHE_CONFIG = "vllm:cache_config_info"


class MetricsUnreadable(RuntimeError):
    """The metrics page could not be fetched, or is not Prometheus text (the message says which)."""


@dataclass
class VllmServerMetrics:
    """One reading of a vLLM server's metrics (``None``: the page does not carry it)."""

    url: str
    kv_cache_usage: float | None = None  # fraction of the KV blocks in use, 0 to 1
    requests_running: float | None = None
    requests_waiting: float | None = None
    num_gpu_blocks: int | None = None  # KV-cache blocks (on the CPU too: vLLM's name)
    block_size: int | None = None  # tokens per block
    max_concurrency: float | None = None  # vLLM's own bound: requests of max_model_len the KV cache holds
    series: dict[str, float] = field(default_factory=dict, repr=False)  # every vllm:* series read

    @property
    def kv_tokens(self) -> int | None:
        """The KV cache's room in tokens: blocks x block size."""
        if self.num_gpu_blocks is None or self.block_size is None:
            return None
        return self.num_gpu_blocks * self.block_size

    def cache_facts(self) -> dict[str, float | int]:
        """The KV-cache room under the keys Compare's capacity reads from a run manifest's version
        entry (``services.compare.capacity.KV_TOKENS_KEYS`` / ``KV_CONCURRENCY_KEYS``); unknown ones left out."""
        facts = {"kv_cache_tokens": self.kv_tokens, "num_gpu_blocks": self.num_gpu_blocks,
                 "block_size": self.block_size, "kv_cache_max_concurrency": self.max_concurrency}
        return {k: v for k, v in facts.items() if v is not None}

    @property
    def kv_tokens_used(self) -> float | None:
        if self.kv_tokens is None or self.kv_cache_usage is None:
            return None
        return self.kv_tokens * self.kv_cache_usage


def _matching(series: dict[str, float], name: str, model_name: str | None) -> list[tuple[dict[str, str], float]]:
    found = []
    for key, value in series.items():
        sample, labels = parse_series_key(key)
        if sample == name and (model_name is None or labels.get("model_name", model_name) == model_name):
            found.append((labels, value))
    return found


def _number_label(labels: dict[str, str], name: str) -> float | None:
    try:
        return float(labels[name])
    except (KeyError, ValueError):  # absent, or "None"
        return None


def _int_label(labels: dict[str, str], name: str) -> int | None:
    value = _number_label(labels, name)
    return None if value is None else int(value)


def vllm_metrics_from_series(series: dict[str, float], url: str = "",
                             model_name: str | None = None) -> VllmServerMetrics:
    """A reading from parsed series (``parse_metrics``); ``model_name`` keeps that model's series
    (label ``model_name``) where the page serves several. Engines (data parallel) are summed:
    running, waiting and KV blocks add up; the usage is the block-weighted mean where known."""
    out = VllmServerMetrics(url=url, series={k: v for k, v in series.items() if k.startswith("vllm:")})
    running = _matching(series, RUNNING, model_name)
    waiting = _matching(series, WAITING, model_name)
    out.requests_running = sum(v for _, v in running) if running else None
    out.requests_waiting = sum(v for _, v in waiting) if waiting else None
    configs = [labels for labels, _ in _matching(series, CACHE_CONFIG, None)]
    blocks = [_int_label(c, "num_gpu_blocks") for c in configs]
    sizes = {_int_label(c, "block_size") for c in configs} - {None}
    if configs and None not in blocks:
        out.num_gpu_blocks = sum(b for b in blocks if b is not None)
    if len(sizes) == 1:
        out.block_size = sizes.pop()
    bounds = [_number_label(c, "kv_cache_max_concurrency") for c in configs]
    if configs and None not in bounds:
        out.max_concurrency = sum(b for b in bounds if b is not None)
    for name in KV_USAGE_NAMES:
        usage = _matching(series, name, model_name)
        if usage:
            out.kv_cache_usage = sum(v for _, v in usage) / len(usage)
            break
    return out


def read_vllm_metrics(metrics_url: str, timeout_s: float = 5.0, model_name: str | None = None) -> VllmServerMetrics:
    """Fetch and parse a vLLM server's ``/metrics`` (``http://host:port/metrics``; a base URL gets
    ``/metrics`` added)."""
    url = metrics_url.rstrip("/")
    if not url.endswith("/metrics"):
        url = (url[:-3] if url.endswith("/v1") else url) + "/metrics"
    if "://" not in url:
        url = f"http://{url}"
    try:
        text = read_metrics_text(metrics_opener(), url, timeout_s)
    except OSError as exc:  # URLError, refused, timeout
        raise MetricsUnreadable(f"The metrics of the vLLM server at {url} could not be read: "
                                f"{getattr(exc, 'reason', exc)}") from exc
    try:
        series = parse_metrics(text)
    except ValueError as exc:
        raise MetricsUnreadable(f"The page at {url} is not Prometheus metrics: {exc}") from exc
    if not any(k.startswith("vllm:") for k in series):
        raise MetricsUnreadable(f"The metrics page at {url} carries no vllm:* series: not a vLLM server")
    return vllm_metrics_from_series(series, url, model_name)
