"""What the vLLM engine states about its memory at load: weight memory and KV-cache size.

vLLM measures these in its engine processes (``VLLM::EngineCore`` / ``VLLM::Worker``), not in the
process that created the engine, and states them in its log (vLLM 0.32):

- ``Model loading took %s GiB memory and %.6f seconds`` (``GPUModelRunner.load_model``: its
  ``model_memory_usage``, the CUDA memory the weights took; CUDA only: the CPU model runner
  measures nothing and logs no such line);
- ``Available KV cache memory: %s GiB`` (``gpu_worker.determine_available_memory``, CUDA);
  ``Explicitly set (%s/%s) GiB for KV cache`` / ``Auto set (%s/%s) GiB for KV cache`` (the CPU
  worker: ``VLLM_CPU_KVCACHE_SPACE`` or ``kv_cache_memory_bytes``);
- ``%s KV cache size: %s tokens, Maximum concurrency for %s tokens per request: %.2fx``
  (``kv_cache_utils.update_kv_cache_capacity``).

:class:`LoadFactsHandler` is a ``logging.Handler`` that appends each of those records, with its
arguments, to a JSON-lines file. vLLM configures logging anew in each of its processes from the
engine's ``LoggingConfig`` (``configure_logging`` in ``EngineCore.run_engine_core`` and
``MultiprocExecutor.worker_main``; ``dictConfig`` clears the handlers of the ``vllm`` loggers), so a
handler added by hand in the model's process would not survive there: :func:`write_logging_config`
writes vLLM's own default logging configuration plus this handler to a file, and the engine is
given it as ``LoggingConfig(pylogging_config_file=...)`` (vLLM's documented way to configure its
logging). :func:`read_load_facts` turns the records into numbers (bytes and tokens). A number vLLM
did not state stays absent: the caller reports it as unknown.

The handler imports nothing of vLLM; :func:`write_logging_config` reads vLLM's default configuration.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

GiB = 1 << 30
LOGGING_CONFIG_FILE = "vllm_logging.json"
FACTS_FILE = "vllm_load_log.jsonl"

# The message formats above, as vLLM 0.32 writes them (``record.msg`` before formatting).
_WEIGHTS = re.compile(r"^Model loading took %s GiB memory")
_KV_GPU = re.compile(r"^Available KV cache memory: %s GiB")
_KV_CPU = re.compile(r"^(Explicitly|Auto) set \(")
_KV_CPU_VALUE = re.compile(r"^(?:Explicitly|Auto) set \(([0-9.]+)/")
_KV_TOKENS = re.compile(r"KV cache size: %s tokens, Maximum concurrency for %s tokens per request: %.2fx")


class LoadFactsHandler(logging.Handler):
    """Appends vLLM's load-time memory statements to ``path`` (one JSON line each: ``what``,
    ``args`` as strings, ``message``, ``pid``). Every other record is ignored."""

    def __init__(self, path: str) -> None:
        super().__init__(level=logging.INFO)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        if _WEIGHTS.search(msg):
            what = "weights"
        elif _KV_GPU.search(msg):
            what = "kv_cache_gpu"
        elif _KV_CPU.search(msg) and "for KV cache" in msg:
            what = "kv_cache_cpu"
        elif _KV_TOKENS.search(msg):
            what = "kv_cache_tokens"
        else:
            return
        try:
            args = [str(a) for a in (record.args or ())] if isinstance(record.args, tuple) else []
            line = json.dumps({"what": what, "args": args, "message": record.getMessage(), "pid": os.getpid()})
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except Exception:  # a log handler must never break the engine
            self.handleError(record)


def _number(text: str) -> float | None:
    try:
        return float(str(text).replace(",", ""))
    except ValueError:
        return None


def read_load_facts(path: str) -> dict[str, Any]:
    """The numbers vLLM stated at load, from the handler's file: ``weight_bytes`` (``Model
    loading took``), ``kv_cache_bytes`` (the KV-cache memory it sized), ``kv_cache_tokens_logged``
    and ``kv_cache_max_concurrency`` (its capacity line), and ``log_lines`` (the messages as
    written). Absent keys: vLLM did not state that number here."""
    facts: dict[str, Any] = {"log_lines": []}
    try:
        with open(path) as f:
            entries = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return facts
    for e in entries:
        args, what = e.get("args") or [], e.get("what")
        facts["log_lines"].append(e.get("message"))
        if what == "weights" and args and _number(args[0]) is not None:
            facts["weight_bytes"] = int(_number(args[0]) * GiB)
            facts["weight_bytes_precision"] = "vLLM rounds to 0.01 GiB"
        elif what == "kv_cache_gpu" and args and _number(args[0]) is not None:
            facts["kv_cache_bytes"] = int(_number(args[0]) * GiB)
        elif what == "kv_cache_cpu":
            m = _KV_CPU_VALUE.search(str(e.get("message") or ""))
            if m and _number(m.group(1)) is not None:
                facts["kv_cache_bytes"] = int(_number(m.group(1)) * GiB)
        elif what == "kv_cache_tokens" and len(args) >= 4:
            tokens, concurrency = _number(args[1]), _number(args[3])
            if tokens is not None:
                facts["kv_cache_tokens_logged"] = int(tokens)
            if concurrency is not None:
                facts["kv_cache_max_concurrency"] = concurrency
    return facts


def write_logging_config(folder: str) -> tuple[str, str]:
    """Write vLLM's default logging configuration (``vllm.logger.DEFAULT_LOGGING_CONFIG``: its stream
    handler and formatters, unchanged) with :class:`LoadFactsHandler` added to the ``vllm`` logger,
    into ``folder``. Returns ``(config file, facts file)``; the facts file starts empty."""
    import copy

    from vllm.logger import DEFAULT_LOGGING_CONFIG

    config_path = os.path.join(folder, LOGGING_CONFIG_FILE)
    facts_path = os.path.join(folder, FACTS_FILE)
    config = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
    config["handlers"]["qwen_load_facts"] = {"class": f"{__name__}.LoadFactsHandler", "level": "INFO",
                                             "path": facts_path}
    config["loggers"]["vllm"]["handlers"] = [*config["loggers"]["vllm"]["handlers"], "qwen_load_facts"]
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
    try:
        os.remove(facts_path)
    except OSError:
        pass
    return config_path, facts_path
