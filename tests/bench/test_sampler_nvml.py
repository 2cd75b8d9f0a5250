"""services.bench.sampler's NVML path (services.bench.memory_readings.NvmlReader) on a real GPU
(marked ``gpu``: skipped where torch sees no CUDA device).

Against nvidia-smi, read back to back: the GPU's used memory (within 1 %), and a child process that
allocates 1 GiB with torch and whose command line names ``<repo>/qwen/2/model.py`` as a Triton stub's
does: it shows up in the sampler's per-process readings with about that memory (its allocation plus
its CUDA context), attributed to model ``qwen`` version 2, as nvidia-smi reports it.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from services.bench.sampler import Sampler

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]

MIB = 2**20
GIB = 2**30

CHILD = """
import sys, torch
x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
x.fill_(1)
torch.cuda.synchronize()
print(torch.cuda.memory_reserved(), flush=True)
sys.stdin.read()  # hold the memory until the test closes stdin
"""


def smi(*query: str) -> list[list[str]]:
    out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return [[f.strip() for f in line.split(",")] for line in out.splitlines() if line.strip()]


def smi_used() -> dict[int, int]:
    return {int(r[0]): int(float(r[1]) * MIB) for r in smi("--query-gpu=index,memory.used")}


def smi_process_bytes(pid: int) -> int | None:
    for r in smi("--query-compute-apps=pid,used_memory"):
        if r[0] == str(pid):
            try:
                return int(float(r[1]) * MIB)
            except ValueError:
                return None
    return None


def nvml_v2() -> dict[int, tuple[int, int]]:
    """(used, reserved) per GPU from NVML's v2 reading, for the failure messages."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            out = {}
            for i in range(pynvml.nvmlDeviceGetCount()):
                m = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i), version=pynvml.nvmlMemory_v2)
                out[i] = (int(m.used), int(m.reserved))
            return out
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return {}


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    """A python process holding 1 GiB on the GPU, its command line naming a stub's model.py of version 2."""
    fake_model_py = tmp_path_factory.mktemp("repo") / "qwen" / "2" / "model.py"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(fake_model_py)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.strip():
        proc.kill()
        pytest.fail(f"the child could not allocate on the GPU: {proc.stderr.read()[-2000:]}")
    reserved = int(line)
    time.sleep(1.0)  # let NVML's per-process accounting catch up
    yield proc.pid, reserved
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_the_nvml_source_reads_every_gpu_that_torch_sees() -> None:
    import torch

    sample = Sampler(nvml=True, host_memory=False).sample_once()
    assert "nvml" not in sample.source_errors, sample.source_errors
    assert len(sample.gpus) == torch.cuda.device_count()
    for g in sample.gpus:
        assert g.memory_total_bytes > 0 and 0 <= g.memory_used_bytes <= g.memory_total_bytes
        assert g.name and g.uuid
    name = torch.cuda.get_device_name(0)
    assert name in sample.gpus[0].name or sample.gpus[0].name in name


def test_device_memory_agrees_with_nvidia_smi_within_1_percent(child) -> None:
    sampler = Sampler(nvml=True, host_memory=False)
    worst = 0.0
    seen = []
    for i in range(6):
        if i % 2:
            ref = smi_used()
            sample = sampler.sample_once()
        else:
            sample = sampler.sample_once()
            ref = smi_used()
        assert "nvml" not in sample.source_errors, sample.source_errors
        for g in sample.gpus:
            diff = abs(g.memory_used_bytes - ref[g.index]) / ref[g.index]
            worst = max(worst, diff)
            seen.append((g.index, g.memory_used_bytes, ref[g.index]))
        time.sleep(0.2)
    v2 = nvml_v2()
    assert worst <= 0.01, (
        f"sampler vs nvidia-smi differ by up to {worst * 100:.2f} %: (gpu, sampler, nvidia-smi) {seen[:4]}; "
        f"NVML v2 (used, reserved) {v2}: NVML's v1 'used' counts the driver's reserved memory, nvidia-smi's "
        "memory.used does not")


def test_a_process_allocating_1_gib_shows_up_with_that_memory_and_its_version(child) -> None:
    pid, reserved = child
    sample = Sampler(nvml=True, host_memory=False).sample_once()
    mine = [p for p in sample.processes if p.pid == pid and p.kind == "gpu"]
    assert mine, f"pid {pid} not among the sampler's GPU processes {[(p.pid, p.name) for p in sample.processes]}"
    p = mine[0]
    assert (p.model, p.version) == ("qwen", "2")
    assert reserved >= GIB
    # torch's reserve plus the CUDA context (a few hundred MiB), nothing like a second GiB
    assert reserved <= p.memory_bytes <= reserved + 1536 * MIB, (p.memory_bytes, reserved)
    ref = smi_process_bytes(pid)
    assert ref is not None, "nvidia-smi does not list the child"
    assert abs(p.memory_bytes - ref) <= 0.01 * ref + MIB, (p.memory_bytes, ref)
