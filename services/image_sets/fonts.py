"""DejaVu fonts for the label generator: finding them, and measuring, wrapping and drawing text.

Text uses the DejaVu fonts of the Debian package ``fonts-dejavu-core`` (only its six files, so
that images do not depend on optional packages); fonts are never downloaded. Fonts are loaded
with Pillow's BASIC layout, so output is the same with or without libraqm.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from PIL import ImageDraw, ImageFont

from services.image_sets.palette import Color

FONT_PACKAGE = "fonts-dejavu-core"
FONT_FILES: dict[str, str] = {
    "sans": "DejaVuSans.ttf",
    "sans_bold": "DejaVuSans-Bold.ttf",
    "serif": "DejaVuSerif.ttf",
    "serif_bold": "DejaVuSerif-Bold.ttf",
    "mono": "DejaVuSansMono.ttf",
    "mono_bold": "DejaVuSansMono-Bold.ttf",
}
FONT_DIRS: tuple[str, ...] = (
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/dejavu",
    "/usr/share/fonts/TTF",
    "/usr/share/fonts/truetype",
    "/usr/local/share/fonts",
    "/usr/share/fonts",
)
FONT_DIR_ENV = "LABEL_FONT_DIR"


class FontsNotFoundError(RuntimeError):
    """The DejaVu fonts are missing; install the Debian package ``fonts-dejavu-core``."""


def find_dejavu_fonts(
    search_dirs: Sequence[str | os.PathLike[str]] | None = None, use_pil_search: bool = True
) -> dict[str, str]:
    """Paths of the six ``fonts-dejavu-core`` fonts, by role (``sans``, ``sans_bold``, ...).

    Looks in ``$LABEL_FONT_DIR``, then ``search_dirs`` (default: the usual system font folders,
    searched recursively only for ``/usr/share/fonts``), then asks Pillow's own font search.
    Raises :class:`FontsNotFoundError` naming the Debian package when a font is missing.
    """
    dirs: list[Path] = []
    env = os.environ.get(FONT_DIR_ENV)
    if env:
        dirs.append(Path(env))
    dirs.extend(Path(d) for d in (FONT_DIRS if search_dirs is None else search_dirs))
    found: dict[str, str] = {}
    for role, name in FONT_FILES.items():
        for d in dirs:
            p = d / name
            if p.is_file():
                found[role] = str(p)
                break
        if role not in found and search_dirs is None and Path("/usr/share/fonts").is_dir():
            hits = sorted(Path("/usr/share/fonts").rglob(name))
            if hits:
                found[role] = str(hits[0])
        if role not in found and use_pil_search:
            try:  # Pillow searches the platform's font folders (XDG data dirs on Linux)
                found[role] = str(ImageFont.truetype(name, 10).path)
            except OSError:
                pass
    missing = [FONT_FILES[r] for r in FONT_FILES if r not in found]
    if missing:
        raise FontsNotFoundError(
            f"DejaVu fonts not found ({', '.join(missing)}). Install the Debian package "
            f"{FONT_PACKAGE} (apt-get install {FONT_PACKAGE}) or point ${FONT_DIR_ENV} at a "
            "folder holding them; fonts are never downloaded at run time."
        )
    return found


@lru_cache(maxsize=1)
def _fonts() -> dict[str, str]:
    return find_dejavu_fonts()


@lru_cache(maxsize=2048)
def font(role: str, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: same output with or without libraqm, and faster for Latin text.
    return ImageFont.truetype(_fonts()[role], max(4, int(size)),
                              layout_engine=ImageFont.Layout.BASIC)


@lru_cache(maxsize=65536)
def text_width(role: str, size: int, text: str) -> int:
    return math.ceil(font(role, size).getlength(text))


def line_height(size: int) -> int:
    return round(size * 1.2)


def wrap_text(text: str, role: str, size: int, width: int) -> list[str]:
    lines: list[str] = []
    cur = ""
    for word in text.split():
        cand = f"{cur} {word}" if cur else word
        if cur and text_width(role, size, cand) > width:
            lines.append(cur)
            cur = word
        else:
            cur = cand
    if cur:
        lines.append(cur)
    return lines


def draw_lines(d: ImageDraw.ImageDraw, x: int, y: int, lines: Iterable[str], role: str,
                size: int, fill: Color) -> None:
    for ln in lines:
        d.text((x, y), ln, font=font(role, size), fill=fill)
        y += line_height(size)
