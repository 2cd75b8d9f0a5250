"""The embedded Triton model on the real vLLM engine: a decoupled Python-backend model with the
vLLM backend's tensor interface, served by vLLM's V1 async engine (``AsyncLLM``).

Triton's Python-backend stub imports this module through the two-line ``model.py`` that
``services.serving.embedded_triton`` writes into each version folder when the engine is ``vllm``.
The interface and response rules are those of ``services.serving.backend_model`` (the transformers
engine) and of Triton's vLLM backend: inputs ``text_input``, ``image`` (base64), ``stream``,
``sampling_parameters`` (JSON), ``exclude_input_in_output``, the ``return_*`` flags; outputs
``text_output``, ``finish_reason``, ``cumulative_logprob``, ``logprobs``, ``num_input_tokens``,
``num_output_tokens``. A non-streaming request gets one response; a streaming one gets one response
per engine step with the new text and the new token count, the last flagged final.

How it runs: ``initialize`` reads the version's ``model.json`` (the whole JSON becomes vLLM's
``AsyncEngineArgs``, adapted for the CPU where needed: see ``engine_args_for_platform``), starts an
asyncio loop in a thread of its own and creates the engine there. ``execute`` hands every request
to that loop and returns at once, so all requests in flight share the engine's continuous batch.
Each request asks Triton once per engine step whether its client cancelled it, and aborts it in the
engine if so. vLLM's statistics go to Triton's metrics port through ``vllm_metrics`` (the stock
backend's ``vllm:*`` names, labels ``model`` and ``version``).

What each version reports: ``engine_report.json`` in its folder (the model.json as given, what was
adapted for the platform, what vLLM configured: dtype, quantization, KV-cache blocks, prefix
caching; the engine's process ids and shared-memory files) and the gauge
``qwen_engine_ready{model,version,engine="vllm",precision}`` (1 serving, 0 failed or dead).

A version whose engine cannot start does not take the model down: Triton unloads every version of
a model when one fails, so the failure is caught, written to ``engine_report.json`` (``ready``:
false, ``error``) and published as ``qwen_engine_ready{version} 0``, and every request to that
version is answered with an error naming the reason. The same holds once the engine dies (its
EngineCore process killed): the requests in flight and all later ones get an error saying so.
"""

from __future__ import annotations

import locale

# The stub embeds Python with an isolated configuration and the C locale: without a UTF-8 LC_CTYPE,
# files that vLLM and torch read at import are decoded as ASCII and fail. Set it before they load.
for _name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
    try:
        locale.setlocale(locale.LC_CTYPE, _name)
        break
    except locale.Error:
        continue

import asyncio  # noqa: E402
import atexit  # noqa: E402
import base64  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import uuid  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from services.serving import vllm_load_facts  # noqa: E402
from services.serving.model_interface import (  # noqa: E402
    RETURN_FLAGS,
    RequestInputError,
    VersionModel,
    bool_input,
    build_response,
    prompt_input,
    request_options,
)

ENGINE_ARGS_FILE = "model.json"
ENGINE_REPORT_FILE = "engine_report.json"
DEFAULT_CPU_KVCACHE_GIB = "1"
# How often a request asks Triton whether its client cancelled it, at most (each question is a round
# trip to the server process; asking after every step of every request slowed batching down).
CANCEL_CHECK_INTERVAL_S = 0.02


class RequestError(RequestInputError):
    """A mistake in the request: answered as an error response, never logged as a failure."""


def _cancelled(request) -> bool:
    try:
        return bool(request.is_cancelled())
    except Exception:
        return True


def has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def engine_args_for_platform(engine_args: dict, cuda: bool) -> tuple[dict, dict]:
    """The engine arguments to give vLLM here, and what was changed for the platform (recorded).

    On CUDA the model.json is taken as it is. On the CPU: ``gpu_memory_utilization`` means nothing
    (vLLM CPU sizes its KV cache from ``VLLM_CPU_KVCACHE_SPACE``, GiB, set to 1 unless already set),
    so it is dropped; ``quantization: fp8`` has no CPU kernel in vLLM and is refused with that reason.
    """
    args = dict(engine_args)
    adapted: dict = {}
    if cuda:
        return args, adapted
    if "gpu_memory_utilization" in args:
        adapted["dropped_gpu_memory_utilization"] = args.pop("gpu_memory_utilization")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
    adapted["VLLM_CPU_KVCACHE_SPACE_GiB"] = os.environ["VLLM_CPU_KVCACHE_SPACE"]
    quant = str(args.get("quantization") or "")
    if quant.startswith("fp8"):
        raise RuntimeError(
            f"quantization {quant!r} cannot run on the CPU: vLLM has no CPU kernel for fp8 "
            "(serve an INT8 W8A8 compressed-tensors checkpoint there instead)"
        )
    return args, adapted


def served_precision(engine_args: dict) -> str:
    """What the engine serves, from its arguments and the checkpoint's own quantization config:
    ``fp8`` (the ``quantization`` argument), ``int8 W8A8`` (a compressed-tensors int8 checkpoint,
    version 2's CPU stand-in), else the dtype."""
    quant = engine_args.get("quantization")
    if quant:
        return str(quant)
    try:
        with open(os.path.join(engine_args.get("model", ""), "config.json")) as f:
            qcfg = json.load(f).get("quantization_config") or {}
    except (OSError, ValueError):
        qcfg = {}
    for group in (qcfg.get("config_groups") or {}).values():
        weights, acts = group.get("weights") or {}, group.get("input_activations") or {}
        if weights.get("type") == "int" and weights.get("num_bits") == 8 and acts.get("num_bits") == 8:
            return "int8 W8A8"
    if qcfg:
        return str(qcfg.get("quant_method", "quantized"))
    return {"bfloat16": "bf16", "float16": "fp16"}.get(str(engine_args.get("dtype", "bfloat16")), "bf16")


def decode_images(tensor) -> list:
    from PIL import Image

    images = []
    for i, item in enumerate(tensor.as_numpy().reshape(-1)):
        raw = item if isinstance(item, (bytes, bytearray)) else str(item).encode()
        try:
            data = base64.b64decode(raw, validate=False)
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as exc:
            raise RequestError(f"image {i} is not a base64-encoded image file ({exc})") from None
        images.append(img.convert("RGB"))
    return images


def memory_split(facts: dict, stated: dict) -> dict:
    """The weights / KV-cache memory of the version as vLLM states it (``engine_report.json`` keys).

    ``kv_cache_tokens``: the KV cache's blocks times their size in tokens (``num_gpu_blocks`` x
    ``block_size``, the configuration vLLM returns from its engine process). ``kv_cache_bytes``:
    the KV-cache memory vLLM was given (``cache_config.kv_cache_memory_bytes``: on the CPU
    ``VLLM_CPU_KVCACHE_SPACE``), else what its log states it sized. ``weight_bytes``: "Model
    loading took X GiB" (CUDA only; vLLM's CPU model runner does not measure its weights).
    ``memory_stated``: where each number came from; a number vLLM did not state is None and says why.
    """
    blocks, block_size = facts.get("num_gpu_blocks"), facts.get("block_size")
    tokens = int(blocks) * int(block_size) if blocks and block_size else None
    kv_bytes, kv_from = facts.get("kv_cache_memory_bytes"), "cache_config.kv_cache_memory_bytes"
    if kv_bytes is None and stated.get("kv_cache_bytes") is not None:
        kv_bytes, kv_from = stated["kv_cache_bytes"], "vLLM's load log (rounded to 0.01 GiB)"
    weights = stated.get("weight_bytes")
    return {
        "weight_bytes": weights,
        "kv_cache_bytes": None if kv_bytes is None else int(kv_bytes),
        "kv_cache_tokens": tokens,
        "kv_cache_max_concurrency": stated.get("kv_cache_max_concurrency"),
        "memory_stated": {
            "weight_bytes": ("vLLM's load log: Model loading took X GiB (rounded to 0.01 GiB)" if weights is not None
                             else "unknown: vLLM stated no weight memory (its CPU model runner does not measure it)"),
            "kv_cache_bytes": kv_from if kv_bytes is not None else "unknown: vLLM stated no KV-cache size",
            "kv_cache_tokens": "num_gpu_blocks x block_size" if tokens is not None else "unknown",
            "log_lines": stated.get("log_lines", []),
        },
    }


class TritonPythonModel(VersionModel):
    # ------------------------------------------------------------------ load

    def initialize(self, args):
        self.read_args(args)
        self.engine = None
        self.precision = "unknown"
        self.load_error: str | None = None
        self.engine_dead: str | None = None
        self.loop = asyncio.new_event_loop()
        self.loop_thread = threading.Thread(target=self._run_loop, name=f"vllm-loop-v{self.version}", daemon=True)
        self.loop_thread.start()
        self.in_flight: set = set()
        # Messages to the server process (responses, cancellation questions) go through one thread
        # of their own, in order, so that the engine's loop never waits on them; decoding images
        # and parsing requests use the loop's default pool.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"triton-io-v{self.version}")
        t0 = time.monotonic()
        report: dict = {"engine": "vllm", "version": self.version}
        try:
            with open(os.path.join(self.version_dir, ENGINE_ARGS_FILE)) as f:
                engine_args = json.load(f)
            report["model_json"] = engine_args
            report["precision"] = self.precision = served_precision(engine_args)
            engine_args, adapted = engine_args_for_platform(engine_args, has_cuda())
            report["adapted_for_platform"] = adapted
            load_log = None
            if "logging_config" not in engine_args and "log_config_file" not in engine_args:
                # vLLM's own logging, plus a handler keeping what it states at load (memory_split)
                config_file, load_log = vllm_load_facts.write_logging_config(self.version_dir)
                report["logging_config_file"] = config_file
                from vllm.config.logging import LoggingConfig

                engine_args = {**engine_args, "logging_config": LoggingConfig(pylogging_config_file=config_file)}
            self.engine = asyncio.run_coroutine_threadsafe(self._make_engine(engine_args), self.loop).result()
            report.update(self._engine_facts())
            stated = vllm_load_facts.read_load_facts(load_log) if load_log else {
                "log_lines": [], "why": "the model.json configures vLLM's logging itself"}
            report.update(memory_split(report, stated))
            report["ready"] = True
            self._engine_procs = self._descendants()
            report["engine_pids"] = [p.pid for p in self._engine_procs]
            self._engine_shm = self._shm_files(self._engine_procs)
            report["shm_files"] = self._engine_shm
        except Exception as exc:  # contained: the other versions stay up (see the module's doc)
            self.load_error = f"{type(exc).__name__}: {exc}"
            self.logger.log_error(f"[qwen] version {self.version}: the vLLM engine did not start: "
                                  f"{traceback.format_exc()}")
            report.update(ready=False, error=self.load_error)
        report["load_seconds"] = round(time.monotonic() - t0, 3)
        with open(os.path.join(self.version_dir, ENGINE_REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2, default=str)
        self.logger.log_info(f"[qwen] version {self.version} engine: {json.dumps(report, default=str)}")
        self._ready_gauge = None
        try:
            # The family must outlive initialize(): Triton drops a family's metrics when it is freed.
            self._ready_family = pb_utils.MetricFamily(
                name="qwen_engine_ready", description="1 when the version's engine serves, 0 when it failed",
                kind=pb_utils.MetricFamily.GAUGE)
            self._ready_gauge = self._ready_family.Metric(labels={"model": self.model_name, "version": self.version,
                                                                  "engine": "vllm", "precision": self.precision})
            self._ready_gauge.set(0.0 if self.load_error else 1.0)
        except Exception as exc:
            self.logger.log_warn(f"[qwen] could not publish qwen_engine_ready: {exc}")
        self._publish_memory_split(report)

    def _publish_memory_split(self, report: dict) -> None:
        """What vLLM stated at load as gauges (the ones it stated only): ``qwen_engine_weight_bytes
        {part="model"}``, ``qwen_engine_kv_cache_bytes``, ``qwen_engine_kv_cache_tokens`` and
        ``qwen_engine_kv_cache_max_concurrency``, labelled model, version, engine, precision. The
        families are kept on the model: Triton drops a family's metrics when it is freed."""
        labels = {"model": self.model_name, "version": self.version, "engine": "vllm", "precision": self.precision}
        gauges = (("qwen_engine_weight_bytes", "weight_bytes", {"part": "model"}, "Weight bytes of the served model "
                   "version, as the engine states them"),
                  ("qwen_engine_kv_cache_bytes", "kv_cache_bytes", {}, "KV-cache memory the engine reserved"),
                  ("qwen_engine_kv_cache_tokens", "kv_cache_tokens", {}, "KV-cache size in tokens"),
                  ("qwen_engine_kv_cache_max_concurrency", "kv_cache_max_concurrency", {},
                   "Requests of the maximum model length the KV cache holds at once, as vLLM states it"))
        self._split_gauges: list = []
        for name, key, extra, description in gauges:
            if report.get(key) is None:
                continue
            try:
                family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.GAUGE)
                metric = family.Metric(labels={**labels, **extra})
                metric.set(float(report[key]))
                self._split_gauges.append((family, metric))
            except Exception as exc:
                self.logger.log_warn(f"[qwen] could not publish {name}: {exc}")

    @staticmethod
    def _descendants() -> list:
        """The engine's processes (EngineCore, Worker): this process's descendants except Python's
        resource tracker, which belongs to the stub and unlinks what it registered when the stub ends."""
        import psutil

        return [p for p in psutil.Process().children(recursive=True) if not _is_resource_tracker(p)]

    @staticmethod
    def _shm_files(procs) -> list[str]:
        """vLLM's shared-memory files (``psm_*``, ``sem.*``) that this process and the engine's
        processes have mapped: written to the engine report, so that the server can remove them
        even after a crash, and removed here when the engine dies."""
        import psutil

        found: set[str] = set()
        for proc in [psutil.Process(), *procs]:
            try:
                with open(f"/proc/{proc.pid}/maps") as f:
                    for line in f:
                        path = line.rsplit(None, 1)[-1] if "/dev/shm/" in line else ""
                        name = os.path.basename(path)
                        if path.startswith("/dev/shm/") and name.startswith(("psm_", "sem.")):
                            found.add(path)
            except OSError:
                pass
        return sorted(found)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _make_engine(self, engine_args: dict):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        loggers = None
        self.stat_logger = None
        report_metrics = str(self.model_config.get("parameters", {}).get("REPORT_CUSTOM_METRICS", {})
                             .get("string_value", "")).lower() in ("true", "yes", "1")
        if report_metrics and not engine_args.get("disable_log_stats", True):
            from services.serving.vllm_metrics import triton_stat_logger_factory

            loggers = [triton_stat_logger_factory({"model": self.model_name, "version": self.version}, self)]
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args), stat_loggers=loggers)

    def _engine_facts(self) -> dict:
        cfg = self.engine.vllm_config
        facts = {
            "model": cfg.model_config.model,
            "dtype": str(cfg.model_config.dtype),
            "quantization": cfg.model_config.quantization,
            "max_model_len": cfg.model_config.max_model_len,
            "device": str(cfg.device_config.device),
        }
        for name in ("num_gpu_blocks", "block_size", "cache_dtype", "enable_prefix_caching",
                     "kv_cache_memory_bytes"):
            facts[name] = getattr(cfg.cache_config, name, None)
        return facts

    # ------------------------------------------------------------------ requests

    def execute(self, requests):
        for request in requests:
            fut = asyncio.run_coroutine_threadsafe(self._serve(request), self.loop)
            self.in_flight.add(fut)
            fut.add_done_callback(self.in_flight.discard)
        return None

    async def _serve(self, request) -> None:
        try:
            sender = request.get_response_sender()
        except Exception:
            self.logger.log_error(f"[qwen] no response sender: {traceback.format_exc()}")
            return
        try:
            await self._handle(request, sender)
        except asyncio.CancelledError:
            self._send_error(request, sender, "the model version is shutting down")
        except RequestInputError as exc:
            self._send_error(request, sender, str(exc))
        except Exception as exc:
            message = self._engine_failure(exc)
            if message is None:
                self.logger.log_error(f"[qwen] error: {traceback.format_exc()}")
                message = f"Error generating stream: {exc}"
            self._send_error(request, sender, message)

    def _engine_failure(self, exc: BaseException) -> str | None:
        """A clear message when the engine itself is dead (its EngineCore process gone)."""
        from vllm.v1.engine.exceptions import EngineDeadError

        if isinstance(exc, EngineDeadError) or (self.engine is not None and self.engine.errored):
            if self.engine_dead is None:
                self.engine_dead = (f"the vLLM engine of version {self.version} died (its EngineCore process "
                                    "exited); the version cannot serve until the server restarts")
                self.logger.log_error(f"[qwen] {self.engine_dead}")
                self._clean_up_dead_engine()
                if self._ready_gauge is not None:
                    try:
                        self._ready_gauge.set(0.0)
                    except Exception:
                        pass
            return self.engine_dead
        return None

    def _clean_up_dead_engine(self) -> None:
        """The engine's remaining processes (a Worker outlives a killed EngineCore) and its
        shared-memory files go at once, not when the server stops."""
        import psutil

        alive = [p for p in getattr(self, "_engine_procs", []) if p.is_running()]
        # Files made since the load count too (read before the processes that map them go).
        shm = set(getattr(self, "_engine_shm", [])) | set(self._shm_files(alive))
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        for path in shm:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.logger.log_info(f"[qwen] version {self.version}: ended {len(alive)} engine process(es) and removed "
                             "its shared-memory files")

    def _send_error(self, request, sender, message: str) -> None:
        if _cancelled(request):
            self._close(sender)
            return
        out = pb_utils.Tensor("text_output", np.asarray(["N/A"], dtype=self.output_dtype))
        try:
            sender.send(pb_utils.InferenceResponse(output_tensors=[out], error=pb_utils.TritonError(message)),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:
            self.logger.log_warn(f"[qwen] could not send the error response ({exc}): {message}")

    @staticmethod
    def _close(sender) -> None:
        try:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception:
            pass

    def _parse(self, request):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        inputs = {tensor.name(): tensor for tensor in request.inputs()}
        prompt = prompt_input(inputs)
        if prompt is None:
            raise RequestError("the input 'text_input' (the prompt) is required")
        images = decode_images(inputs["image"]) if "image" in inputs else []
        stream, prepend_input, raw = request_options(inputs, request)
        try:
            params = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            raise RequestError(f"sampling_parameters is not valid JSON: {exc}") from None
        if not isinstance(params, dict):
            raise RequestError("sampling_parameters must be a JSON object")
        params.pop("output_kind", None)
        flags = {name: bool(bool_input(inputs, name)) for name in RETURN_FLAGS}
        try:
            sampling = SamplingParams(**params, output_kind=RequestOutputKind.DELTA)
        except TypeError as exc:
            raise RequestError(f"sampling_parameters: {exc}") from None
        except ValueError as exc:
            raise RequestError(f"sampling_parameters: {exc}") from None
        engine_prompt: dict = {"prompt": prompt}
        if images:
            engine_prompt["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
        return engine_prompt, prompt, sampling, stream, prepend_input, flags

    async def _handle(self, request, sender) -> None:
        if self.load_error is not None:
            raise RequestError(f"version {self.version} is not serving: its vLLM engine failed to load: "
                               f"{self.load_error}")
        if self.engine_dead is not None:
            raise RequestError(self.engine_dead)
        loop = asyncio.get_running_loop()
        engine_prompt, prompt, sampling, stream, prepend_input, flags = await loop.run_in_executor(
            None, self._parse, request)
        if await loop.run_in_executor(self._io, _cancelled, request):
            self._close(sender)
            return
        last_check = time.monotonic()
        request_id = uuid.uuid4().hex
        text_parts: list[str] = []
        n_out = 0
        n_in = 0
        cum_logprob = None
        logprobs_all: list = []
        finish_reason = None
        try:
            async for output in self.engine.generate(engine_prompt, sampling, request_id):
                if not output.finished and time.monotonic() - last_check >= CANCEL_CHECK_INTERVAL_S:
                    if await loop.run_in_executor(self._io, _cancelled, request):
                        await self.engine.abort(request_id)
                        self._close(sender)
                        return
                    last_check = time.monotonic()
                completion = output.outputs[0]
                n_in = len(output.prompt_token_ids or ())
                new_tokens = len(completion.token_ids)
                n_out += new_tokens
                cum_logprob = completion.cumulative_logprob
                step_logprobs = self._logprobs(completion.logprobs) if flags["return_logprobs"] else None
                finish_reason = completion.finish_reason
                if stream:
                    response = self._response(flags, completion.text, finish_reason, cum_logprob, step_logprobs,
                                              n_in, new_tokens)
                    await loop.run_in_executor(self._io, self._send, sender, response, output.finished)
                else:
                    text_parts.append(completion.text)
                    if step_logprobs:
                        logprobs_all.extend(step_logprobs)
                if output.finished:
                    break
        except BaseException:
            if not (self.engine is not None and self.engine.errored):
                try:
                    await self.engine.abort(request_id)
                except Exception:
                    pass
            raise
        if not stream:
            text = (prompt if prepend_input else "") + "".join(text_parts)
            response = self._response(flags, text, finish_reason, cum_logprob,
                                      logprobs_all if flags["return_logprobs"] else None, n_in, n_out)
            await loop.run_in_executor(self._io, self._send, sender, response, True)

    @staticmethod
    def _send(sender, response, final: bool) -> None:
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0)

    @staticmethod
    def _logprobs(step) -> list | None:
        if step is None:
            return None
        out = []
        for position in step:
            out.append({str(tok): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.decoded_token}
                        for tok, lp in position.items()})
        return out

    def _response(self, flags, text, finish_reason, cumulative_logprob, logprobs, n_input, n_output):
        return build_response(self.output_dtype, flags, text, finish_reason, cumulative_logprob, logprobs,
                              n_input, n_output)

    # ------------------------------------------------------------------ unload

    def finalize(self):
        self.logger.log_info(f"[qwen] version {self.version}: stopping the vLLM engine")
        for fut in list(self.in_flight):
            fut.cancel()
        if self.engine is not None:
            try:
                self.engine.shutdown()
            except Exception as exc:
                self.logger.log_warn(f"[qwen] vLLM shutdown: {exc}")
        stat_logger = getattr(self, "stat_logger", None)
        if stat_logger is not None:
            stat_logger.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.loop_thread.join(timeout=10)
        self._io.shutdown(wait=False, cancel_futures=True)
        self.logger.log_info(f"[qwen] version {self.version} finalized")
        # The stub's interpreter teardown (Py_FinalizeEx clearing modules) crashes once vLLM's native
        # extensions are loaded, and the crash handler of one of them (tvm_ffi) then takes a minute
        # printing a backtrace while Triton waits for the model to unload. Everything this version
        # owns is released by now: end the process as soon as the interpreter starts its teardown.
        atexit.register(_exit_now)


def _is_resource_tracker(proc) -> bool:
    try:
        return "resource_tracker" in " ".join(proc.cmdline())
    except Exception:
        return False


def _exit_now() -> None:
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0)
