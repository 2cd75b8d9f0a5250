"""services.compare.runs: the order of a run's sides."""

from __future__ import annotations

from services.compare.runs import run_order


def test_a_run_s_sides_keep_the_order_its_config_chose() -> None:
    # the store lists the versions sorted; a run on variants chose its own order
    assert run_order(["bf16-triton", "bf16-vllm"], {"versions": ["bf16-vllm", "bf16-triton"]}) == \
        ["bf16-vllm", "bf16-triton"]
    assert run_order(["1", "2"], {"versions": ["1", "2"]}) == ["1", "2"]
    # versions the config does not list (an old run) follow, as stored; listed ones never sent are left out
    assert run_order(["1", "2"], {}) == ["1", "2"]
    assert run_order(["2"], {"versions": ["1", "2"]}) == ["2"]
