"""Tests of the label generator's fonts."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.image_sets.fonts import FONT_PACKAGE, FontsNotFoundError, find_dejavu_fonts


def test_fonts_found_and_missing_fonts_message(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fonts = find_dejavu_fonts()
    assert set(fonts) >= {"sans", "sans_bold", "serif", "mono"}
    assert all(Path(p).is_file() for p in fonts.values())
    monkeypatch.delenv("LABEL_FONT_DIR", raising=False)
    with pytest.raises(FontsNotFoundError, match=FONT_PACKAGE):
        find_dejavu_fonts(search_dirs=[tmp_path], use_pil_search=False)
