"""Memory per version that holds (issue 14): attribution through the process tree, shared pages
counted once, only the measured server's processes, against real processes and the real embedded
tritonserver.

The process trees here are real processes started by the test, with command lines like Triton's:
a root, two stub-like children naming ``<repo>/qwen/<v>/model.py``, and under each an engine-like
grandchild whose command line names no model (as vLLM's ``VLLM::EngineCore`` does) and which holds
most of the memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from services.bench.memory_scope import SERVER_TREE, WHOLE_GPU, memory_scope
from services.client.address_check import is_local_host, listening_pid
from services.bench.sampler import SOURCE_HOST, Sampler
from services.client.server_target import ServerTarget
from tests.bench.sampler_fixtures import wait_for

ENGINE_MB = 48

# an engine-like process: holds ENGINE_MB of touched private memory, names no model
ENGINE = textwrap.dedent(f"""
    import sys, time
    block = bytearray({ENGINE_MB} * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    open(sys.argv[1], "w").close()
    time.sleep(60)
""")
# a stub-like process: starts one engine and waits
STUB = textwrap.dedent("""
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], "VLLM::EngineCore"])
    time.sleep(60)
""")
ROOT = textwrap.dedent("""
    import subprocess, sys, time
    for v in ("1", "2"):
        subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3] + v,
                          sys.argv[4] + "/qwen/" + v + "/model.py"])
    time.sleep(60)
""")


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in [*family]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.kill()
    proc.wait(10)
    psutil.wait_procs(family, timeout=10)


@pytest.fixture
def served_tree(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A root with two stub-like children (qwen 1 and 2), each with an engine-like child that
    holds ENGINE_MB; returns when both engines hold their memory."""
    ready = tmp_path / "engine-ready-"
    root = subprocess.Popen([sys.executable, "-c", ROOT, STUB, ENGINE, str(ready), str(tmp_path / "repo")])
    try:
        if not wait_for(lambda: all((tmp_path / f"engine-ready-{v}").exists() for v in "12"), timeout=30):
            pytest.fail("the engine-like processes did not start")
        yield root
    finally:
        _kill_tree(root)


def test_engine_processes_below_a_stub_are_charged_to_its_version(served_tree: subprocess.Popen,
                                                                    tmp_path: Path) -> None:
    # another server's stub on this machine, outside the tree: never counted
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              str(tmp_path / "other" / "qwen" / "1" / "model.py")])
    try:
        sampler = Sampler(nvml=False, root_pid=served_tree.pid, process_names=())
        s = sampler.sample_once()
        assert SOURCE_HOST not in s.source_errors
        assert other.pid not in {p.pid for p in s.processes}
        engines = [p for p in s.processes if "VLLM::EngineCore" in psutil.Process(p.pid).cmdline()]
        assert sorted(p.version for p in engines) == ["1", "2"]
        for e in engines:
            assert e.model == "qwen" and e.measure == "pss"
            assert e.memory_bytes > ENGINE_MB * 2**20  # the engine's memory, charged to its version
            parent = psutil.Process(e.pid).parent()
            assert any(f"/qwen/{e.version}/model.py" in a for a in parent.cmdline())
        unattributed = [p for p in s.processes if p.version is None and p.model != "server"]
        assert unattributed == []
    finally:
        other.kill()
        other.wait(10)


def test_pages_shared_by_a_forked_engine_count_once() -> None:
    """A parent touches 64 MiB and forks a child that only reads it: both resident set sizes count
    the 64 MiB, their proportional set sizes share it."""
    code = textwrap.dedent("""
        import os, time
        block = bytearray(64 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        if os.fork() == 0:
            time.sleep(60)
        print("ready", flush=True)
        time.sleep(60)
    """)
    root = subprocess.Popen([sys.executable, "-c", code, "/tmp/x/qwen/1/model.py"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert root.stdout.readline().strip() == "ready"
        family = [psutil.Process(root.pid), *psutil.Process(root.pid).children()]
        assert len(family) == 2
        rss_sum = sum(p.memory_info().rss for p in family)
        s = Sampler(nvml=False, root_pid=root.pid, process_names=()).sample_once()
        readings = {p.pid: p for p in s.processes}
        assert set(readings) == {p.pid for p in family}
        assert all(r.measure == "pss" for r in readings.values())
        counted = sum(r.memory_bytes for r in readings.values())
        assert rss_sum > 2 * 64 * 2**20  # RSS counts the shared block twice
        assert 64 * 2**20 < counted < rss_sum - 48 * 2**20  # PSS counts it once
        child = [r for r in readings.values() if r.pid != root.pid][0]
        assert child.version == "1"  # the fork shows its parent's stub command line
    finally:
        _kill_tree(root)


def test_a_process_named_tritonserver_of_another_server_is_not_summed(tmp_path: Path) -> None:
    """With a remote URL, nothing on this machine is the server's: the old default summed every
    process named tritonserver."""
    other = subprocess.Popen(["tritonserver", "-c", "import time; time.sleep(60)"], executable=sys.executable)
    try:
        assert wait_for(lambda: psutil.Process(other.pid).cmdline()[:1] == ["tritonserver"])
        legacy = Sampler(nvml=False, process_names=("tritonserver",)).sample_once()
        assert other.pid in {p.pid for p in legacy.processes}
        target = ServerTarget("192.0.2.10:8000", "192.0.2.10:8001", "http://192.0.2.10:8002/metrics", "http",
                              embedded=False, checkpoint=None, repository=None, server_pid=None)
        scope = memory_scope(target)
        assert (scope.kind, scope.local, scope.root_pid) == (WHOLE_GPU, False, None)
        assert scope.describe()["per_version"] == "unknown"
        sampler = Sampler()
        sampler.configure(**scope.sampler_config())
        s = sampler.sample_once()
        assert s.processes == () and SOURCE_HOST not in s.source_errors
    finally:
        other.kill()
        other.wait(10)


def test_a_local_url_is_the_process_listening_on_its_port() -> None:
    code = ("import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
            " print(s.getsockname()[1], flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        assert listening_pid(port) == proc.pid
        assert is_local_host("127.0.0.1") and is_local_host("localhost")
        assert not is_local_host("192.0.2.10") and not is_local_host("no-such-host.invalid")
        target = ServerTarget(f"localhost:{port}", f"localhost:{port + 1}", "", "http", embedded=False,
                              checkpoint=None, repository=None, server_pid=None)
        scope = memory_scope(target)
        assert (scope.kind, scope.root_pid, scope.local) == (SERVER_TREE, proc.pid, True)
    finally:
        proc.kill()
        proc.wait(10)
    assert listening_pid(port) is None


def _versions_share(server) -> tuple[float, list]:
    """The real tritonserver, reached by its URL alone: the listener must be found and its whole tree
    read, nothing below tritonserver left unattributed. Returns the share of the serving processes'
    memory (every process of the tree but tritonserver's own front end, labelled "server") that is
    attributed to versions 1 and 2, and the processes read; prints the figures."""
    target = ServerTarget(server.http_url, server.grpc_url, server.metrics_url, "http",
                          embedded=False, checkpoint=None, repository=None, server_pid=None)
    scope = memory_scope(target)
    assert (scope.kind, scope.root_pid) == (SERVER_TREE, server.pid)
    sampler = Sampler()
    sampler.configure(**{**scope.sampler_config(), "nvml": False})
    s = sampler.sample_once()
    assert SOURCE_HOST not in s.source_errors
    tree = {server.pid, *(p.pid for p in psutil.Process(server.pid).children(recursive=True))}
    assert {p.pid for p in s.processes} == tree
    serving = [p for p in s.processes if p.pid != server.pid]
    assert all(p.version is not None for p in serving)  # nothing below tritonserver left unattributed
    by_version: dict[str, int] = {}
    for p in serving:
        if p.version is not None:
            by_version[p.version] = by_version.get(p.version, 0) + p.memory_bytes
    total = sum(p.memory_bytes for p in serving)
    assert set(by_version) == {"1", "2"}
    share = sum(by_version.values()) / total
    front = sum(p.memory_bytes for p in s.processes if p.pid == server.pid)
    print(f"versions {', '.join(f'v{v} {b / 2**20:.0f} MiB' for v, b in sorted(by_version.items()))}; "
          f"serving processes {total / 2**20:.0f} MiB in {len(serving)} processes; attributed {share:.1%}; "
          f"tritonserver {front / 2**20:.0f} MiB; versions' share of the whole tree "
          f"{sum(by_version.values()) / (total + front):.1%}")
    return share, serving


def test_real_embedded_server_versions_hold_the_serving_processes_memory(triton_server) -> None:
    """The transformers engine: the versions' attributed memory accounts for at least 95% of the
    serving processes' memory. (tritonserver itself holds 15-45 MiB here, 2-6% of the tree with the
    tiny CPU model; the whole-tree share is printed.)"""
    share, _ = _versions_share(triton_server)
    assert share >= 0.95


@pytest.mark.vllm
@pytest.mark.server
@pytest.mark.timeout(1200)
def test_real_vllm_engine_versions_hold_the_serving_processes_memory(vllm_server) -> None:
    """The real vLLM engine: the weights and KV cache live in each version's ``VLLM::EngineCore`` /
    ``VLLM::Worker`` processes, below its stub; the versions' attributed memory accounts for at least
    95% of the serving processes' memory, those engine processes included."""
    share, serving = _versions_share(vllm_server)
    engines = {}
    for p in serving:
        try:
            title = " ".join(psutil.Process(p.pid).cmdline())
        except psutil.Error:
            continue
        if "VLLM::" in title:
            engines.setdefault(p.version, []).append((title.split()[0], p.memory_bytes))
    print(f"engine processes per version: {engines}")
    assert set(engines) == {"1", "2"}, "each version's vLLM engine processes are charged to it"
    assert share >= 0.95


def test_memory_allocated_between_full_pss_reads_shows_at_once() -> None:
    """The PSS is read in full every few seconds (it costs a page-table walk); in between, the RSS
    moves the reading: an allocation shows at the next tick."""
    from services.bench.memory_readings import SharedPages

    code = ("import sys, time; print('ready', flush=True); sys.stdin.readline();"
            " block = bytearray(32 * 2**20); block[::4096] = b'x' * len(block[::4096]);"
            " print('grown', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        p = psutil.Process(proc.pid)
        pages = SharedPages(interval_s=60.0)
        before, measure = pages.read(p, now=0.0)
        assert measure == "pss" and abs(before - p.memory_full_info().pss) < 2 * 2**20
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "grown"
        between, _ = pages.read(p, now=1.0)  # no full read: RSS less the shared part measured before
        assert between - before > 30 * 2**20
        assert abs(between - p.memory_full_info().pss) < 4 * 2**20
    finally:
        proc.kill()
        proc.wait(10)


# --------------------------------------------------------------------------- variants (issue 18)

# a vllm-serve-like server: /metrics in vLLM's labelling (model_name, engine), and an engine-like child
VLLM_PAGE = "\n".join([
    "# TYPE vllm:num_requests_running gauge",
    'vllm:num_requests_running{engine="0",model_name="demo"} 2.0',
    "# TYPE vllm:num_requests_waiting gauge",
    'vllm:num_requests_waiting{engine="0",model_name="demo"} 1.0',
    "# TYPE vllm:kv_cache_usage_perc gauge",
    'vllm:kv_cache_usage_perc{engine="0",model_name="demo"} 0.25',
    'vllm:kv_cache_usage_perc{engine="0",model_name="other"} 0.75',
    "# TYPE vllm:cache_config_info gauge",
    'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="100"} 1.0', ""])
OPENAI_SERVER = textwrap.dedent("""
    import http.server, subprocess, sys
    page = sys.argv[3].encode()
    subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], "VLLM::EngineCore"])
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Type", "text/plain"); self.end_headers()
            self.wfile.write(page)
        def log_message(self, *a): pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Page)
    print(server.server_address[1], flush=True)
    server.serve_forever()
""")


@pytest.fixture
def openai_like(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """A real local process serving a vLLM-labelled /metrics, with an engine-like child holding ENGINE_MB."""
    ready = tmp_path / "engine-ready"
    proc = subprocess.Popen([sys.executable, "-c", OPENAI_SERVER, ENGINE, str(ready), VLLM_PAGE],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        if not wait_for(ready.exists, timeout=30):
            pytest.fail("the engine-like child did not start")
        yield proc, port
    finally:
        _kill_tree(proc)


def _variants(*specs: str):
    from services.client.variants import parse_variant_spec, resolve_variants

    return resolve_variants([parse_variant_spec(s) for s in specs])


def test_a_remote_variant_is_whole_gpu_with_its_share_unknown() -> None:
    from services.bench.memory_scope import run_watch
    from services.client.variants import variant_target

    variants = _variants("kind=openai,url=http://192.0.2.10:8100,model=demo,label=far")
    targets = {v.key: variant_target(v, None) for v in variants}
    watch = run_watch(variants, targets, targets["far"])
    (server,) = watch.servers
    assert (server.key, server.scope.kind, server.scope.local) == ("far", WHOLE_GPU, False)
    described = watch.describe()["far"]
    assert described["per_version"] == "unknown" and "whole GPU" in described["memory"]
    config = watch.sampler_config()
    assert config["host_memory"] is False and config["nvml"] is False and config["root_pid"] is None
    sampler = Sampler(metrics_timeout_s=0.2)
    sampler.configure(**config)
    s = sampler.sample_once()
    assert s.processes == ()  # nothing of this machine is summed in its place
    assert "variant_metrics:far" in s.source_errors and s.metrics == {}
    # Compare says so for that variant, never another server's numbers in its place
    import pandas as pd

    from services.compare.memory import memory_side

    side = memory_side(pd.DataFrame(), {"memory_scopes": watch.describe()}, "far", model="demo")
    assert side.source == "unknown" and side.peak_bytes is None
    assert any("per version is unknown" in n and "192.0.2.10 is not this machine" in n for n in side.notes)


def test_a_local_variant_server_is_read_through_its_own_tree_and_metrics(openai_like, served_tree) -> None:
    """A Triton-like tree (versions 1, 2) beside a vllm-serve-like server: each variant's memory is its own
    tree's, under its key; the server's vllm:* series are labelled with its key."""
    from services.bench.memory_scope import run_watch
    from services.bench.sample_series import sample_rows
    from services.client.server_target import ServerTarget
    from services.client.variants import variant_target

    proc, port = openai_like
    main = ServerTarget("127.0.0.1:1", "127.0.0.1:2", "", "http", embedded=True, checkpoint=None,
                        repository=None, server_pid=served_tree.pid)
    variants = _variants("version=1,label=bf16-triton", f"kind=openai,url=http://127.0.0.1:{port},model=demo,"
                         "label=bf16-vllm")
    targets = {v.key: variant_target(v, main) for v in variants}
    watch = run_watch(variants, targets, main)
    assert watch.version_keys == {"1": "bf16-triton"}
    assert watch.servers[0].scope.root_pid == proc.pid
    assert watch.describe()["bf16-vllm"]["per_version"] == "attributed through the process tree"
    sampler = Sampler()
    sampler.configure(**{**watch.sampler_config(), "nvml": False})  # this machine has no GPU
    s = sampler.sample_once()
    assert not s.source_errors, s.source_errors
    by_key: dict = {}
    for p in s.processes:
        by_key.setdefault(p.version, set()).add(p.pid)
    vllm_tree = {proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))}
    assert by_key["bf16-vllm"] == vllm_tree and len(vllm_tree) == 2
    assert not by_key["bf16-vllm"] & (by_key["bf16-triton"] | by_key["2"])  # no process counted twice
    engine = [p for p in s.processes if p.version == "bf16-vllm" and p.pid != proc.pid][0]
    assert engine.memory_bytes >= ENGINE_MB * 2**20 * 0.9
    rows = [r for r in sample_rows(s) if r.value is not None]
    got = {(r.kind, r.version): r.value for r in rows}
    assert got[("vllm:kv_cache_usage_perc", "bf16-vllm")] == 0.25  # the other model's series left out
    assert got[("vllm:num_requests_running", "bf16-vllm")] == 2.0
    assert not any(k.startswith("vllm:cache_config_info") for k, _ in got)


def test_two_variants_of_one_local_server_are_read_once_with_the_split_unknown(openai_like) -> None:
    from services.bench.memory_scope import SHARED_TREE, run_watch
    from services.client.variants import variant_target

    proc, port = openai_like
    url = f"http://127.0.0.1:{port}"
    variants = _variants(f"kind=openai,url={url},model=demo,label=a", f"kind=openai,url={url},model=demo,label=b")
    targets = {v.key: variant_target(v, None) for v in variants}
    watch = run_watch(variants, targets, targets["a"])
    first, second = watch.servers
    assert (first.scope.kind, first.memory_version, second.scope.kind) == (SERVER_TREE, "a + b", SHARED_TREE)
    described = watch.describe()
    assert described["a"]["per_version"].startswith("unknown") and described["b"]["per_version"] == "unknown"
    assert described["a"]["stored_as"] == described["b"]["stored_as"] == "a + b"
    sampler = Sampler()
    sampler.configure(**{**watch.sampler_config(), "nvml": False})
    s = sampler.sample_once()
    assert not s.source_errors, s.source_errors
    assert {p.version for p in s.processes} == {"a + b"} and len(s.processes) == 2  # each process once
    # one model under two labels: its series cannot tell their requests apart; read once, stored jointly
    assert s.metric("vllm:num_requests_running", model="demo", version="a + b") == 2.0
    assert s.metric("vllm:num_requests_running", model="demo", version="a") is None
    assert described["a"]["metrics_stored_as"] == "a + b"
