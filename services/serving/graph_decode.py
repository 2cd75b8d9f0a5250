"""Fast batch-1 decode: a static KV cache and one decode step replayed as a CUDA graph.

Plain transformers ``generate()`` spends most of a decode step launching kernels on the GPU (a 7B
step is several hundred small launches, each paid from Python). This module runs the same model
modules differently:

* **prefill** is the model's own forward pass (images included) with transformers' dynamic cache,
  exactly as ``generate()`` does it; its keys and values are then copied into
* a **static KV cache**: one fixed-size key and value buffer per decoder layer
  (``max_len`` positions), written at a position held in a device tensor, with an additive
  attention mask of the same length that opens one more slot per step;
* a **decode step** (embed one token, the decoder's layers through the model's own modules, final
  norm, ``lm_head``) reads and writes only those fixed buffers, so on CUDA it is compiled with
  ``torch.compile`` (which fuses the small element-wise kernels), captured once in a
  ``torch.cuda.CUDAGraph`` and replayed: one launch per token instead of hundreds.

Everything else (choosing the next token, stop rules, streaming) stays on the host with the
engine's own code: see ``services.serving.engine.Engine.generate``. The same step runs eagerly where there
is no CUDA (or when capture is refused), which is how the CPU tests check that this path and
``generate()`` produce the same greedy tokens.

On CUDA (unless ``QWEN_DECODE_KERNELS=0``; or ``kernels=True/False``) the step uses the project's Triton kernels (``services.serving.decode_kernels``): the
matrix products of each layer as matrix-vector
kernels that stream each weight once (q, k and v fused into one product, gate and up into one
kernel with the SiLU and the product in its epilogue), fp8 (``Fp8Linear``) and bf16 alike; and
the attention as split-sequence (flash-decoding) attention that reads only the cache positions
written so far. Elsewhere, or for layers the kernels do not cover, the step calls the modules
(torchao's fp8 ones included) and transformers' eager attention arithmetic.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class StaticKVCache:
    """Per-layer key/value buffers of a fixed length, written at ``position`` (a device tensor).

    It offers the one method transformers' attention calls on a cache, ``update``, which stores the
    step's keys and values and returns the full buffers (the mask hides the unwritten slots).
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_len: int, dtype, device) -> None:
        import torch

        shape = (1, n_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.max_len = max_len

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def update(self, key_states, value_states, layer_idx: int, *args: Any, **kwargs: Any):
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys.index_copy_(2, self.position, key_states)
        values.index_copy_(2, self.position, value_states)
        return keys, values

    def load_prefix(self, cache, length: int) -> None:
        """Copy the first ``length`` positions of a transformers dynamic cache into the buffers."""
        for i in range(len(self.keys)):
            k, v = _layer_kv(cache, i)
            if k.shape[2] != length:
                raise RuntimeError(f"prefill cache of layer {i} holds {k.shape[2]} positions, expected {length}")
            self.keys[i][:, :, :length].copy_(k)
            self.values[i][:, :, :length].copy_(v)


def _rotate_half(x):
    """RoPE's rotation of the two halves of the last dimension (as in transformers' Qwen2-VL)."""
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _layer_kv(cache, i: int):
    """Keys and values of layer ``i`` of a transformers cache (``layers`` API, or the older lists)."""
    if hasattr(cache, "layers"):
        layer = cache.layers[i]
        return layer.keys, layer.values
    return cache.key_cache[i], cache.value_cache[i]


class GraphDecoder:
    """Batch-1 decode over a static KV cache for one Qwen2-VL model, replayed as a CUDA graph on GPU.

    Use: ``prefill(inputs)`` returns the last position's logits and loads the cache; then
    ``step(token)`` feeds one token and returns the next logits (a float32 ``(1, vocab)`` tensor
    that the next ``step`` overwrites). One request at a time; the engine's lock guarantees that.
    """

    def __init__(self, model, max_len: int, use_graph: bool | None = None, compile: bool | None = None,
                 kernels: bool | None = None) -> None:
        import torch

        self.model = model
        self.lm = model.model.language_model
        cfg = self.lm.config
        if getattr(cfg, "use_sliding_window", False):
            raise RuntimeError("the static decode path does not implement sliding-window attention")
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        embed = self.lm.embed_tokens.weight
        self.device = embed.device
        self.dtype = embed.dtype
        self.max_len = max_len
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, head_dim
        self.scaling = head_dim**-0.5
        rotary = self.lm.rotary_emb
        self.inv_freq = rotary.inv_freq.to(self.device, torch.float32)
        self.rope_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        with torch.inference_mode():
            self.cache = StaticKVCache(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim, max_len,
                                       self.dtype, self.device)
            self.closed = torch.finfo(self.dtype).min
            self.mask = torch.full((1, 1, 1, max_len), self.closed, dtype=self.dtype, device=self.device)
            self.input_ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
            self.rope_delta = torch.zeros(1, dtype=torch.long, device=self.device)
            vocab = model.lm_head.weight.shape[0]
            self.bias = torch.zeros((1, vocab), dtype=torch.float32, device=self.device)  # -inf: suppressed
            self.greedy_token = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.graph = None
        self.logits = None
        self.capture_seconds: float | None = None
        self.capture_error: str | None = None
        self.compile_seconds: float | None = None
        self.compile_error: str | None = None
        self.kernels = kernels_default(self.device.type) if kernels is None else bool(kernels)
        self.plans: list = [None] * len(self.lm.layers)
        self.gemv_tuning: dict[str, Any] | None = None
        self.kernel_attention = False
        self.kernel_layers = 0
        if self.kernels:
            from services.serving.decode_kernels import attention_supported
            from services.serving.fp8_linear import prepare_decode_plan

            self.plans = [prepare_decode_plan(layer) for layer in self.lm.layers]
            self.kernel_layers = sum(p is not None for p in self.plans)
            self.kernel_attention = attention_supported(self.n_heads, self.n_kv_heads, head_dim)
            if self.device.type == "cuda" and self.kernel_layers:
                from services.serving.fp8_linear import tune_plans

                t0 = time.perf_counter()
                try:
                    with torch.inference_mode():
                        self.gemv_tuning = tune_plans(self.plans)
                except Exception as exc:  # noqa: BLE001 - keep the default block shapes
                    self.gemv_tuning = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                self.gemv_tuning["seconds"] = round(time.perf_counter() - t0, 1)
                log.info("decode gemv block shapes: %s", self.gemv_tuning)
        want_graph = self.device.type == "cuda" if use_graph is None else use_graph
        self.compiled = compile_default(self.device.type) if compile is None else bool(compile)
        self._body = self._step_body
        if want_graph:
            self._capture()
        elif self.compiled:
            self.compiled = False
            self.compile_error = "compilation is only used with a CUDA graph"
        self.mode = "cuda_graph" if self.graph is not None else "static_eager"

    # ------------------------------------------------------------------ the step

    def _step_body(self):
        """One decode step on the fixed buffers; every tensor it touches keeps its address.

        The decoder's own modules (norms, q/k/v/o projections, MLP, ``lm_head``; fp8 ones included)
        in the order of transformers' Qwen2-VL decoder layer. Two things are written out here
        because the step needs them in a capturable, compile-friendly form: M-RoPE, which for a
        generated token (the same position on the temporal, height and width axes) is plain RoPE
        at ``position + rope_delta``; and attention over the static cache as transformers' eager
        attention computes it (fp32 softmax), with the query heads of each key/value head packed
        together: grouped-query attention without copying the cache for every query head (which
        transformers does when compiled), and without the fused SDPA kernels, which are slow for
        a handful of query rows against a long masked cache (measured on the H100: 2.3 ms a step).
        """
        import torch
        import torch.nn.functional as F

        position = self.cache.position
        self.mask.index_fill_(-1, position, 0.0)
        freqs = (position + self.rope_delta).float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scaling).to(self.dtype).view(1, 1, 1, -1)
        sin = (emb.sin() * self.rope_scaling).to(self.dtype).view(1, 1, 1, -1)
        nh, nkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        if self.kernels:
            from services.serving.decode_kernels import decode_attention
            from services.serving.fp8_linear import plan_linear
        x = self.lm.embed_tokens(self.input_ids)
        for i, layer in enumerate(self.lm.layers):
            attn = layer.self_attn
            plan = self.plans[i]
            h = layer.input_layernorm(x)
            if plan is not None:  # one matrix-vector kernel for q, k and v
                q, k, v = plan_linear(h, plan["qkv"], plan["fp8"]).split(plan["qkv"]["splits"], dim=-1)
            else:
                q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
            q = q.view(1, 1, nh, hd).transpose(1, 2)
            k = k.view(1, 1, nkv, hd).transpose(1, 2)
            v = v.view(1, 1, nkv, hd).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys, values = self.cache.update(k, v, i)
            if self.kernel_attention:
                out = decode_attention(q, keys, values, position, self.scaling)
            else:
                # transformers' eager attention (fp32 softmax), query heads packed per key/value head
                scores = torch.matmul(q.reshape(1, nkv, nh // nkv, hd), keys.transpose(2, 3)) * self.scaling
                probs = F.softmax(scores + self.mask, dim=-1, dtype=torch.float32).to(self.dtype)
                out = torch.matmul(probs, values).reshape(1, 1, nh * hd)
            if plan is not None:
                x = x + plan_linear(out, plan["o"], plan["fp8"]).view(1, 1, -1)
                h = layer.post_attention_layernorm(x)
                a = plan_linear(h, plan["gate"], plan["fp8"], w2=plan["up"])  # silu(gate) * up, one kernel
                x = x + plan_linear(a, plan["down"], plan["fp8"]).view(1, 1, -1)
            else:
                x = x + attn.o_proj(out.reshape(1, 1, nh * hd))
                x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = self.lm.norm(x)
        logits = self.model.lm_head(x[:, -1, :]).float()
        position.add_(1)
        return logits

    def _full_step(self):
        """The step, then its greedy choice (argmax of logits + bias) fed back as the next input.

        Feeding the choice back on the device lets greedy decoding queue the next step before the
        host has read this one's token (``greedy_tokens``); sampled decoding overwrites
        ``input_ids`` from the host before each replay instead (``step``).
        """
        import torch

        logits = self._body()
        token = torch.argmax(logits + self.bias, dim=-1, keepdim=True)
        self.greedy_token.copy_(token)
        self.input_ids.copy_(token)
        return logits

    def _capture(self) -> None:
        import torch

        if self.compiled:
            self._compile()
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                self._reset(1)
                side = torch.cuda.Stream(device=self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(3):  # warm-up: lazy inits, cuBLAS handles and workspaces
                        self._full_step()
                torch.cuda.current_stream(self.device).wait_stream(side)
                self._reset(1)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self.logits = self._full_step()
                torch.cuda.synchronize(self.device)
            self.graph = graph
            self.capture_seconds = time.perf_counter() - t0
            log.info("decode step captured in a CUDA graph in %.2f s (static cache of %d positions, %.1f MB)",
                     self.capture_seconds, self.max_len, self.cache.nbytes / 1e6)
        except Exception as exc:  # noqa: BLE001 - capture refused: serve eagerly and say why
            self.graph, self.logits = None, None
            self.capture_error = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture of the decode step failed, decoding eagerly over the static "
                        "cache instead: %s", self.capture_error)

    def _compile(self) -> None:
        """Fuse the step's small kernels (norms, rotary, activations, fp8 scaling) with torch.compile.

        A decode step at batch 1 is several hundred kernels; most of them are tiny element-wise ones
        whose fixed cost adds up even inside a CUDA graph. Inductor fuses them; the matrix products
        stay cuBLAS (or torchao's fp8 kernels). Compiled once here, before the graph is captured;
        if compilation fails the uncompiled step is captured instead, and ``compile_error`` says why.
        """
        import torch

        t0 = time.perf_counter()
        try:
            compiled = torch.compile(self._step_body, dynamic=False, fullgraph=False)
            with torch.inference_mode():
                self._reset(1)
                for _ in range(2):
                    compiled()
                torch.cuda.synchronize(self.device)
            self._body = compiled
            self.compile_seconds = time.perf_counter() - t0
            log.info("decode step compiled in %.1f s", self.compile_seconds)
        except Exception as exc:  # noqa: BLE001 - serve uncompiled and say why
            self.compiled = False
            self._body = self._step_body
            self.compile_error = f"{type(exc).__name__}: {exc}"[:2000]
            log.warning("torch.compile of the decode step failed; capturing it uncompiled: %s", self.compile_error)

    # ------------------------------------------------------------------ requests

    def _reset(self, length: int) -> None:
        self.mask.fill_(self.closed)
        self.mask[..., :length] = 0.0
        self.cache.position.fill_(length)

    def prefill(self, inputs: dict[str, Any]):
        """Run the prompt (images included) through the model; returns the last position's logits."""
        n = int(inputs["input_ids"].shape[1])
        if n >= self.max_len:
            raise ValueError(f"the prompt ({n} tokens) leaves no room in the {self.max_len}-position cache")
        inner = self.model.model
        inner.rope_deltas = None  # never reuse the previous request's M-RoPE offset
        out = self.model(**inputs, use_cache=True, logits_to_keep=1)
        delta = getattr(inner, "rope_deltas", None)
        if delta is None:
            self.rope_delta.zero_()
        else:
            self.rope_delta.copy_(delta.reshape(-1)[:1].to(self.rope_delta))
        self.cache.load_prefix(out.past_key_values, n)
        self._reset(n)
        return out.logits[:, -1, :].float()

    def step(self, token: int):
        """Feed one token; returns the logits of the next position."""
        self.input_ids.fill_(token)
        if self.graph is not None:
            self.graph.replay()
            return self.logits
        return self._full_step()

    def greedy_tokens(self, first: int, count: int, suppress: list[int] | None = None, suppress_below: int = 0):
        """Yield the ``count`` greedy tokens that follow ``first``, keeping one step queued ahead.

        The answer's token ``k`` (``first`` is token 0) has the ids in ``suppress`` excluded while
        ``k < suppress_below`` (min_tokens, ignore_eos). On CUDA the next graph replay is queued
        before this token is read back (through pinned memory and an event), so the GPU never
        waits for the host. Closing the generator early leaves at most one step computed in vain.
        """
        import torch

        self.bias.zero_()
        if suppress and suppress_below > 1:
            self.bias[0, suppress] = float("-inf")
        self.input_ids.fill_(first)
        if self.graph is None:
            for j in range(count):
                if j + 1 == suppress_below:
                    self.bias.zero_()
                self._full_step()
                yield int(self.greedy_token)
            return
        host = torch.empty(count, dtype=torch.long, pin_memory=True)
        events = []

        def enqueue(j: int) -> None:
            if j + 1 == suppress_below:
                self.bias.zero_()
            self.graph.replay()
            host[j].copy_(self.greedy_token[0, 0], non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            events.append(event)

        try:
            if count > 0:
                enqueue(0)
            for j in range(count):
                if j + 1 < count:
                    enqueue(j + 1)
                events[j].synchronize()
                yield int(host[j])
        finally:
            self.bias.zero_()

    def describe(self) -> dict[str, Any]:
        return {
            "decode_mode": self.mode,
            "static_cache_positions": self.max_len,
            "static_cache_bytes": self.cache.nbytes,
            "capture_seconds": None if self.capture_seconds is None else round(self.capture_seconds, 3),
            "capture_error": self.capture_error,
            "compiled": self.compiled,
            "compile_seconds": None if self.compile_seconds is None else round(self.compile_seconds, 1),
            "compile_error": self.compile_error,
            "kernels": self.kernels,
            "kernel_layers": self.kernel_layers,
            "kernel_attention": self.kernel_attention,
            "gemv_tuning": self.gemv_tuning,
        }


def kernels_default(device_type: str) -> bool:
    """Whether the step uses the project's Triton kernels: on CUDA unless ``QWEN_DECODE_KERNELS=0``.

    On by default since an H100 run measured them faster for bf16 (5.40 against 6.59 ms/token on
    the 7B shape) and fp8 (3.84 against 6.08) (issue 17, docs/gpu-results.md); never on other devices.
    """
    import os

    if os.environ.get("QWEN_DECODE_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return device_type == "cuda"


def compile_default(device_type: str) -> bool:
    """Whether the decode step is compiled before capture: on CUDA unless ``QWEN_COMPILE_DECODE=0``."""
    import os

    if os.environ.get("QWEN_COMPILE_DECODE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return device_type == "cuda"


# Two decode paths that run different kernels agree to rounding, not to the bit: where the model's
# top two candidates are closer than this (in log-probability, nats), either may legitimately win.
NEAR_TIE_NATS = 0.25


def greedy_agreement(plain, fast) -> dict[str, Any]:
    """Compare the greedy tokens of two decode paths on the same input.

    ``plain`` must carry per-token logprobs with at least the top 2 (``SamplingParams(logprobs=2)``)
    so a difference can be judged: ``equal`` when the tokens are identical; else
    ``first_difference`` (index), the reference's top-2 ``margin`` (nats) there, and
    ``near_tie``: the other path chose the reference's runner-up where the margin is at most
    ``NEAR_TIE_NATS`` (a rounding-level tie, after which the answers legitimately diverge).
    """
    a, b = list(plain.token_ids), list(fast.token_ids)
    if a == b:
        return {"equal": True, "first_difference": None, "margin": None, "near_tie": None, "tokens": len(a)}
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    margin, runner_up = None, None
    if plain.logprobs and i < len(plain.logprobs):
        ranked = sorted(plain.logprobs[i].items(), key=lambda kv: kv[1]["rank"])
        if len(ranked) >= 2:
            margin = ranked[0][1]["logprob"] - ranked[1][1]["logprob"]
            runner_up = ranked[1][0]
    near = bool(margin is not None and i < len(b) and b[i] == runner_up and margin <= NEAR_TIE_NATS)
    return {"equal": False, "first_difference": i, "margin": margin, "near_tie": near, "tokens": len(a)}
