"""ui.compare_new_run's words: the new-run button names the run's variants; a run that ended partial says why."""

from __future__ import annotations

from services.client.variants import parse_variant_spec, resolve_variants
from ui.compare_new_run import partial_note, run_names
from ui.run_lifecycle import RunEnd
from ui.state import Connection


def test_the_new_run_button_names_the_session_s_variants():
    triton = Connection(url_setting="", protocol="http", timeout_s=10.0)
    assert run_names(triton) == "bf16 (v1) and fp8 (v2)"
    variants = resolve_variants([parse_variant_spec("kind=openai,url=http://a:8000,model=m,label=bf16-vllm"),
                                 parse_variant_spec("kind=openai,url=http://b:8000,model=m8,label=fp8-vllm")])
    openai = Connection(url_setting="", protocol="http", timeout_s=10.0, kind="openai", variants=variants)
    assert run_names(openai) == "bf16-vllm and fp8-vllm"


def test_a_partial_run_says_why_above_its_comparison():
    reason = "the server stopped answering: variant fp8-vllm (http://b:8000): 5 requests in a row found it unreachable"
    note = partial_note(RunEnd("partial", reason, 7, ("bf16-vllm", "fp8-vllm")))
    assert note == (f"The paired run partial: {reason}. The comparison below is of the requests it recorded "
                    "before it stopped.")
    assert partial_note(RunEnd("completed", None, 7, ("1", "2"))) is None
