"""Fixtures of the client tests."""

from __future__ import annotations

import base64

import pytest


@pytest.fixture(scope="module")
def image_b64(label_image_bytes) -> str:
    return base64.b64encode(label_image_bytes).decode("ascii")
