"""Cache-aware workloads (issue 14): every request pair of a run sends an image the server has not
seen in the run, a change no person can see; the warm-up other ones; repeats only on purpose. The
images are the bundled samples, loaded as a run loads them; the runs go to the real embedded server."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from services.bench.runner import BenchmarkConfig, run_benchmark
from services.bench.sampler import stop_shared_sampler
from services.bench.store import RunStore
from services.client.server_target import ServerTarget
from services.image_sets.image_set import ImageSetSpec, load_image_set
from services.image_sets.unseen_images import UnseenImages, perturbed, variant_key


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def samples():
    return load_image_set(ImageSetSpec(kind="samples", max_side=512)).images[:3]


def test_each_pair_gets_an_unseen_invisible_variant_shared_by_its_versions(samples) -> None:
    unseen = UnseenImages(seed=7)
    sent: dict[str, tuple[int, bool]] = {}
    for pair in range(12):
        for warmup in (True, False):
            image = samples[pair % len(samples)]
            v1 = unseen.variant(image.id, image.b64, pair, warmup)
            v2 = unseen.variant(image.id, image.b64, pair, warmup)  # the pair's other version
            assert v1 == v2
            assert v1.pixels_sha256 not in sent, "a variant the run had sent already"
            sent[v1.pixels_sha256] = (pair, warmup)
            base, var = _pixels(image.b64), _pixels(v1.b64)
            assert base.shape == var.shape
            diff = np.abs(base - var)
            assert diff.max() > 0
            # invisible: JPEG re-encoding at quality 95 plus one level on a few blocks
            assert diff.mean() < 1.0 and np.percentile(diff, 99.9) <= 6
            assert abs(len(base64.b64decode(v1.b64)) - len(base64.b64decode(image.b64))) < 0.05 * len(
                base64.b64decode(image.b64))
    assert len(sent) == 24 and unseen.collisions == 0
    # reproducible from the image and its key
    data = base64.b64decode(samples[0].b64)
    assert perturbed(data, variant_key(7, 0, False))[0] == perturbed(data, variant_key(7, 0, False))[0]
    assert variant_key(7, 3, True) != variant_key(7, 3, False)


def _target(server) -> ServerTarget:
    return ServerTarget(server.http_url, server.grpc_url, server.metrics_url, "http", embedded=True,
                        checkpoint=None, repository=server.repository, server_pid=server.pid)


@pytest.mark.parametrize("reuse, images", [(False, "unseen"), (True, "repeated")])
def test_the_run_manifest_records_the_workload_and_the_engine_cache(triton_server, tmp_path, reuse, images):
    store = RunStore(tmp_path / "db")
    try:
        cfg = BenchmarkConfig(versions=("1", "2"), requests=3, warmup=1, max_tokens=2,
                              image_set=ImageSetSpec(kind="samples", max_side=256, reuse=reuse),
                              extra_sampling={"ignore_eos": True}, timeout_s=60.0)
        outcome = run_benchmark(cfg, store=store, target=_target(triton_server))
        assert outcome.status == "completed", outcome.reason
        run = store.get_run(outcome.run_id)
        w = run.manifest["workload"]
        assert w["images"] == images and w["image_reuse"] is reuse
        assert run.manifest["image_set"]["reuse"] is reuse and run.config["image_set"]["reuse"] is reuse
        for v in ("1", "2"):  # the embedded transformers engine keeps nothing between requests
            assert w["prefix_caching"][v]["enabled"] is False
        assert all(r.ok for r in store.get_requests(outcome.run_id))
        assert run.manifest["memory_scope"]["kind"] == "server-tree"
    finally:
        store.close()
        stop_shared_sampler()


def _medians(store: RunStore, run_id: int) -> dict[str, float]:
    measured = [r for r in store.get_requests(run_id) if not r.warmup]
    assert measured and all(r.ok for r in measured)
    return {"ttft_ms": float(np.median([(r.first_token_ns - r.send_ns) / 1e6 for r in measured])),
            "latency_ms": float(np.median([(r.recv_ns - r.send_ns) / 1e6 for r in measured]))}


@pytest.mark.vllm
@pytest.mark.server
@pytest.mark.timeout(1200)
def test_repeated_images_hit_the_real_vllm_engines_cache_and_the_manifest_says_so(vllm_server, tmp_path):
    """The real vLLM engine caches prefixes and image encodings: a run that repeats two images (the
    warm-up sends both, every measured request repeats one) answers faster than a run on unseen
    images, side by side on the same server; each manifest records its image mode and the engine's
    prefix-caching setting as vLLM configured it."""
    from services.core import settings

    photos = tuple((p.name, p.read_bytes()) for p in sorted((settings.PROJECT_ROOT / "samples").glob("*.jpg"))[:2])
    store = RunStore(tmp_path / "db")
    medians: dict[str, list[float]] = {}
    try:
        for reuse in (False, True, False, True):  # interleaved: drift of the loaded machine hits both
            cfg = BenchmarkConfig(versions=("1",), requests=8, warmup=2, max_tokens=1, stream=True,
                                  image_set=ImageSetSpec(kind="uploaded", images=photos, max_side=768, reuse=reuse),
                                  extra_sampling={"ignore_eos": True}, timeout_s=120.0)
            outcome = run_benchmark(cfg, store=store, target=_target(vllm_server))
            assert outcome.status == "completed", outcome.reason
            run = store.get_run(outcome.run_id)
            w = run.manifest["workload"]
            assert w["images"] == ("repeated" if reuse else "unseen") and w["image_reuse"] is reuse
            caching = w["prefix_caching"]["1"]
            assert caching["enabled"] is vllm_server.engine_report("1")["enable_prefix_caching"] is True
            assert caching["source"].startswith("the engine's report")
            for key, value in _medians(store, outcome.run_id).items():
                medians.setdefault(f"{'repeated' if reuse else 'unseen'} {key}", []).append(value)
    finally:
        store.close()
        stop_shared_sampler()
    summary = {k: float(np.median(v)) for k, v in medians.items()}
    print("medians of 2 runs x 8 requests, 1 output token: "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in summary.items()))
    assert summary["repeated ttft_ms"] < 0.8 * summary["unseen ttft_ms"]
    assert summary["repeated latency_ms"] < 0.8 * summary["unseen latency_ms"]
