"""Tests of services.core.versions."""

from services.core.versions import VERSION_LABELS, version_label


def test_version_labels():
    assert version_label("1") == "bf16 (v1)" and version_label("2") == "fp8 (v2)"
    assert version_label("9") == "version 9"


def test_version_labels_follow_the_settings():
    assert VERSION_LABELS == {"1": "bf16", "2": "fp8"}
