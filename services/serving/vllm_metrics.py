"""vLLM's statistics on Triton's metrics port, under the names Triton's stock vLLM backend uses.

A ``StatLoggerBase`` of our own that vLLM's ``AsyncLLM`` calls after each engine step
(``record``). Counters ``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total``; histograms
``vllm:time_to_first_token_seconds``, ``vllm:time_per_output_token_seconds`` (the gaps between a
request's tokens), ``vllm:e2e_request_latency_seconds``, ``vllm:request_prompt_tokens``,
``vllm:request_generation_tokens`` and ``vllm:request_params_n``; each labelled ``model`` and
``version``. Every update of a Triton metric is a message from the stub to the server process, so
``record`` only queues the updates and a thread of this logger sends them: the engine's loop never
waits on the metrics.
"""

from __future__ import annotations

import queue
import threading

import triton_python_backend_utils as pb_utils
from vllm.v1.metrics.loggers import StatLoggerBase

LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0]
TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
N_BUCKETS = [1, 2, 5, 10, 20]

COUNTERS = {
    "prompt_tokens": ("vllm:prompt_tokens_total", "Number of prefill tokens processed."),
    "generation_tokens": ("vllm:generation_tokens_total", "Number of generation tokens processed."),
}
HISTOGRAMS = {
    "ttft": ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
             LATENCY_BUCKETS),
    "tpot": ("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
             LATENCY_BUCKETS),
    "e2e": ("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
            LATENCY_BUCKETS),
    "prompt_len": ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", TOKEN_BUCKETS),
    "gen_len": ("vllm:request_generation_tokens", "Number of generation tokens processed.", TOKEN_BUCKETS),
    "n": ("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS),
}

_FAMILIES: dict[str, object] = {}
_FAMILY_LOCK = threading.Lock()


def _family(name: str, description: str, kind):
    """One MetricFamily per name in this process (a stub serves one version, but stay safe)."""
    with _FAMILY_LOCK:
        if name not in _FAMILIES:
            _FAMILIES[name] = pb_utils.MetricFamily(name=name, description=description, kind=kind)
        return _FAMILIES[name]


class TritonStatLogger(StatLoggerBase):
    """Publishes one engine's statistics as Triton metrics labelled ``labels``."""

    def __init__(self, vllm_config, engine_index: int = 0, labels: dict[str, str] | None = None):
        self.labels = dict(labels or {})
        self.counters = {key: _family(name, doc, pb_utils.MetricFamily.COUNTER).Metric(labels=self.labels)
                         for key, (name, doc) in COUNTERS.items()}
        self.histograms = {key: _family(name, doc, pb_utils.MetricFamily.HISTOGRAM).Metric(labels=self.labels,
                                                                                           buckets=buckets)
                           for key, (name, doc, buckets) in HISTOGRAMS.items()}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="vllm-metrics", daemon=True)
        self._thread.start()

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        if iteration_stats is None:
            return
        updates = []
        if iteration_stats.num_prompt_tokens:
            updates.append((self.counters["prompt_tokens"], "increment", iteration_stats.num_prompt_tokens))
        if iteration_stats.num_generation_tokens:
            updates.append((self.counters["generation_tokens"], "increment", iteration_stats.num_generation_tokens))
        updates += [(self.histograms["ttft"], "observe", v) for v in iteration_stats.time_to_first_tokens_iter]
        updates += [(self.histograms["tpot"], "observe", v) for v in iteration_stats.inter_token_latencies_iter]
        updates += [(self.histograms["n"], "observe", v) for v in iteration_stats.n_params_iter]
        for finished in iteration_stats.finished_requests:
            updates.append((self.histograms["e2e"], "observe", finished.e2e_latency))
            updates.append((self.histograms["prompt_len"], "observe", finished.num_prompt_tokens))
            updates.append((self.histograms["gen_len"], "observe", finished.num_generation_tokens))
        if updates:
            self._queue.put(updates)

    def log_engine_initialized(self):
        pass

    def _drain(self) -> None:
        while True:
            updates = self._queue.get()
            if updates is None:
                return
            for metric, op, value in updates:
                try:
                    getattr(metric, op)(float(value))
                except Exception:  # the server may be going down; a metric must never fail a request
                    pass

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


def triton_stat_logger_factory(labels: dict[str, str], owner=None):
    """A factory for ``AsyncLLM(stat_loggers=[...])``; ``owner.stat_logger`` gets the logger made."""

    def make(vllm_config, engine_index: int = 0) -> TritonStatLogger:
        logger = TritonStatLogger(vllm_config, engine_index, labels)
        if owner is not None:
            owner.stat_logger = logger
        return logger

    return make
