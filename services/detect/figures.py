"""Pictures of detection results: the interactive plotly figure and the annotated PNG download.

Both draw the boxes of each model version in its own colour (bf16 blue, fp8 orange; any other
version or variant the next free colour of :data:`PALETTE` by its position, :func:`series_colors`)
and the ground truth, when known, dashed in green, each box with its label. With two versions or
more, each version gets its own panel, side by side and titled with the version (:func:`panels`), the
ground truth in each: the versions usually agree, and one box drawn exactly on the other would hide it.

* :func:`detection_figure`: per panel, the image as a ``go.Image`` trace placed in the *original*
  image's pixel coordinates (the sent, possibly shrunk, image is stretched over them) and one
  scatter trace per box (closed outline, faint fill, a label at its corner, hover with the pixel
  and 0..1000 grid coordinates); the panels zoom and pan together; one legend entry per version
  asked, saying how many boxes it gave ("fp8 (v2): no box" when none, "...: error" when the
  request failed).
* :func:`annotated_png`: the sent image with the same boxes and labels drawn by PIL (side by side
  per version, each under its title), and a legend band under it; PNG bytes for
  ``st.download_button``.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from PIL import Image, ImageDraw, ImageFont

from services.core.boxes import Box, grid_to_pixels
from services.core.versions import version_label
from services.detect.detection import ImageResult, VersionResult

VERSION_COLORS: dict[str, str] = {"1": "#1f6feb", "2": "#f76707"}  # bf16 blue, fp8 orange
TRUTH_COLOR = "#2b8a3e"  # green, dashed
EXTRA_COLORS = ("#ae3ec9", "#e03131", "#0c8599", "#5c940d")
PALETTE = (VERSION_COLORS["1"], VERSION_COLORS["2"]) + EXTRA_COLORS  # by position, for variants
TRUTH_NAME = "ground truth"
FONT_FILES = ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf")  # fonts-dejavu-core; PIL's own font otherwise


def version_color(version: str, shown: Iterable[str] | None = None) -> str:
    """The colour of a version's boxes: fixed for 1 and 2, distinct for others. With ``shown`` (every
    version or variant drawn together, in order), the colour :func:`series_colors` gives it there:
    distinct from the others by position, never by a hash of the label that two labels can share."""
    version = str(version)
    if shown is not None:
        colors = series_colors(shown)
        if version in colors:
            return colors[version]
    if version in VERSION_COLORS:
        return VERSION_COLORS[version]
    n = int(version) if version.isdigit() else sum(map(ord, version))
    return EXTRA_COLORS[n % len(EXTRA_COLORS)]


def series_colors(shown: Iterable[str]) -> dict[str, str]:
    """A distinct colour for each version or variant drawn together: versions 1 and 2 keep theirs (bf16
    blue, fp8 orange); every other key takes, in order, the first colour of :data:`PALETTE` not yet
    used (so variants ``bf16-triton``, ``bf16-vllm`` are blue and orange). Past the palette's
    length colours repeat, in order."""
    keys = list(dict.fromkeys(str(k) for k in shown))
    colors = {k: VERSION_COLORS[k] for k in keys if k in VERSION_COLORS}
    free = [c for c in PALETTE if c not in colors.values()]
    for n, k in enumerate(keys):
        if k not in colors:
            colors[k] = free.pop(0) if free else PALETTE[n % len(PALETTE)]
    return colors


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _count(n: int) -> str:
    return "no box" if n == 0 else f"{n} box" if n == 1 else f"{n} boxes"


def legend_name(v: VersionResult) -> str:
    """``"bf16 (v1): 1 box"``, ``"fp8 (v2): no box"``, ``"fp8 (v2): error"``."""
    return f"{v.label}: {'error' if v.error else _count(len(v.boxes))}"


@dataclass(frozen=True)
class DrawnBox:
    """One box to draw: pixels on the original image, grid coordinates, who gave it, its label."""

    series: str  # a version ("1", "2") or "truth"
    name: str  # legend name of its series
    color: str
    dashed: bool
    pixels: Box
    grid: Box
    label: str
    corner: str = "top-left"  # where its caption goes: "top-left", "top-right" or "bottom-left"

    @property
    def caption(self) -> str:
        """The text drawn beside the box."""
        who = TRUTH_NAME if self.series == "truth" else version_label(self.series)
        return f"{who}: {self.label}" if self.label else who


def drawn_boxes(result: ImageResult) -> list[DrawnBox]:
    """Every box of an image's result, ground truth first, then each version in order."""
    if result.image is None:
        return []
    w, h = result.image.original_width, result.image.original_height
    out: list[DrawnBox] = []
    truth = result.truth or []
    for grid in truth:
        out.append(DrawnBox("truth", f"{TRUTH_NAME}: {_count(len(truth))}", TRUTH_COLOR, True,
                            grid_to_pixels(grid, w, h), grid, "nutrition-table", corner="bottom-left"))
    # Captions of the first two versions go to opposite corners: their boxes often coincide.
    colors = series_colors(result.versions)
    for n, (version, v) in enumerate(result.versions.items()):
        for b in v.boxes:
            out.append(DrawnBox(version, legend_name(v), colors[version], False, b.pixels, b.grid,
                                b.label or "", corner="top-right" if n == 1 else "top-left"))
    return out


# --------------------------------------------------------------------------- plotly


def _image_source(result: ImageResult) -> str:
    img = result.image
    assert img is not None
    return f"data:{img.mime_type};base64,{base64.b64encode(img.data).decode('ascii')}"


def _hover(box: DrawnBox) -> str:
    p, g = box.pixels, box.grid
    return (f"<b>{box.caption}</b><br>"
            f"pixels: ({p.x1:.0f}, {p.y1:.0f}) – ({p.x2:.0f}, {p.y2:.0f}), {p.width:.0f}×{p.height:.0f}<br>"
            f"grid 0..1000: ({g.x1:.0f}, {g.y1:.0f}) – ({g.x2:.0f}, {g.y2:.0f})<extra></extra>")


def panels(result: ImageResult) -> list[str | None]:
    """What each side-by-side panel shows: with two versions or more, one panel per version (each
    with the ground truth), so that boxes the versions agree on never hide each other; else one
    panel (``None``) with everything."""
    versions = list(result.versions)
    return versions if len(versions) >= 2 else [None]


def panel_title(result: ImageResult, panel: str | None) -> str:
    """A panel's title: the version it shows and how many boxes it gave (``"fp8 (v2): 1 box"``)."""
    if panel is None:
        return ""
    return legend_name(result.versions[panel])


def _in_panel(box: DrawnBox, panel: str | None) -> bool:
    return panel is None or box.series in ("truth", panel)


def _add_box(fig: go.Figure, box: DrawnBox, col: int, first: bool) -> None:
    p = box.pixels
    fig.add_trace(go.Scatter(
        x=[p.x1, p.x2, p.x2, p.x1, p.x1], y=[p.y1, p.y1, p.y2, p.y2, p.y1],
        mode="lines+markers", marker={"size": 5, "color": box.color},
        line={"color": box.color, "width": 3, "dash": "dash" if box.dashed else "solid"},
        fill="toself", fillcolor=_rgba(box.color, 0.08),
        name=box.name, legendgroup=box.series, showlegend=first, hovertemplate=_hover(box),
        meta={"series": box.series, "pixels": list(p.as_tuple()), "grid": list(box.grid.as_tuple()), "panel": col},
    ), row=1, col=col)
    right, bottom = box.corner == "top-right", box.corner == "bottom-left"
    fig.add_annotation(x=p.x2 if right else p.x1, y=p.y2 if bottom else p.y1, text=box.caption,
                       showarrow=False, xanchor="right" if right else "left",
                       yanchor="top" if bottom else "bottom",  # y grows downwards: "top" is below
                       font={"color": "white", "size": 11}, bgcolor=box.color, opacity=0.9, borderpad=2,
                       row=1, col=col)


def detection_figure(result: ImageResult, height: int | None = None) -> go.Figure:
    """The image with every version's boxes and the ground truth (see the module docstring); with
    two versions or more, side by side panels, one per version (:func:`panels`), each titled with
    its version, zoomed and panned together.

    Axes are in pixels of the original image (y downwards). ``height``: the figure's height in
    pixels (default: the image's aspect at about 760 px over all panels, within 360..820).
    Raises ``ValueError`` for a result whose image did not load.
    """
    if result.image is None:
        raise ValueError(f"{result.name}: no image to draw ({result.error or 'not loaded'})")
    img = result.image
    w, h = img.original_width, img.original_height
    shown = panels(result)
    titles = [panel_title(result, p) for p in shown]
    fig = make_subplots(rows=1, cols=len(shown), horizontal_spacing=0.02 if len(shown) > 1 else 0,
                        subplot_titles=titles if any(titles) else None)
    source = _image_source(result)
    boxes = drawn_boxes(result)
    legend_done: set[str] = set()
    for col, panel in enumerate(shown, start=1):
        fig.add_trace(go.Image(source=source, x0=0, y0=0, dx=w / img.width, dy=h / img.height,
                               name="image", hovertemplate="x %{x:.0f}, y %{y:.0f} px<extra></extra>"), row=1, col=col)
        for box in boxes:
            if _in_panel(box, panel):
                _add_box(fig, box, col, box.series not in legend_done)
                legend_done.add(box.series)
        suffix = "" if col == 1 else str(col)
        fig.update_xaxes(range=[0, w], showgrid=False, zeroline=False, constrain="domain",
                         matches=None if col == 1 else "x", row=1, col=col)
        fig.update_yaxes(range=[h, 0], showgrid=False, zeroline=False, scaleanchor=f"x{suffix}",
                         constrain="domain", matches=None if col == 1 else "y", showticklabels=col == 1,
                         row=1, col=col)
    # A legend entry for each version asked that drew nothing (no box, or an error): says so.
    for version, v in result.versions.items():
        if version not in legend_done:
            color = version_color(version, result.versions)
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=legend_name(v), legendgroup=version,
                                     line={"color": color, "width": 3}, showlegend=True,
                                     hoverinfo="skip", meta={"series": version, "pixels": None}))
    if height is None:
        height = int(min(820, max(360, 760 / len(shown) * h / w + (110 if len(shown) > 1 else 80))))
    fig.update_layout(
        height=height, margin={"l": 10, "r": 10, "t": 70 if any(titles) else 40, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.06 if any(titles) else 1.01, "xanchor": "left", "x": 0},
        dragmode="pan", hovermode="closest",
    )
    return fig


# --------------------------------------------------------------------------- PNG


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # a Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _dashed_rectangle(draw: ImageDraw.ImageDraw, xy: tuple[float, float, float, float], color: tuple[int, int, int],
                      width: int, dash: int) -> None:
    """An outline of dashes ``dash`` px long, ``width`` px thick, inside ``xy`` (as ``rectangle(outline=...)``)."""
    x1, y1, x2, y2 = (int(round(v)) for v in xy)
    for start in range(x1, x2 + 1, 2 * dash):  # top and bottom edges
        end = min(start + dash - 1, x2)
        draw.rectangle((start, y1, end, y1 + width - 1), fill=color)
        draw.rectangle((start, y2 - width + 1, end, y2), fill=color)
    for start in range(y1, y2 + 1, 2 * dash):  # left and right edges
        end = min(start + dash - 1, y2)
        draw.rectangle((x1, start, x1 + width - 1, end), fill=color)
        draw.rectangle((x2 - width + 1, start, x2, end), fill=color)


@dataclass(frozen=True)
class _Pen:
    """What every panel of the PNG is drawn with: line width, font, padding, text height."""

    line: int
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    pad: int
    text_h: int


def _draw_panel(draw: ImageDraw.ImageDraw, boxes: list[DrawnBox], origin: tuple[int, int], size: tuple[int, int],
                pen: _Pen) -> None:
    """Outlines, then captions (so no outline crosses a caption), of ``boxes`` on the panel at ``origin``."""
    (ox, oy), (w, h) = origin, size
    line, font, pad = pen.line, pen.font, pen.pad
    for box in boxes:
        # the grid box at the sent size (the grid is relative, so it scales to any size)
        p = grid_to_pixels(box.grid, w, h)
        xy = (ox + p.x1, oy + p.y1, ox + max(p.x1, p.x2 - 1), oy + max(p.y1, p.y2 - 1))
        if box.dashed:
            _dashed_rectangle(draw, xy, _rgb(box.color), line, dash=4 * line)
        else:
            draw.rectangle(xy, outline=_rgb(box.color), width=line)
    for box in boxes:
        p = grid_to_pixels(box.grid, w, h)
        left, top, right, bottom = draw.textbbox((0, 0), box.caption, font=font)
        tw, th = right - left, bottom - top
        bw, bh = tw + 2 * pad, th + 2 * pad
        x = p.x2 - bw if box.corner == "top-right" else p.x1
        x = min(max(0, x), max(0, w - bw))
        if box.corner == "bottom-left":  # below the box, else inside it
            y = p.y2 if p.y2 + bh <= h else p.y2 - line - bh
        else:  # above the box, else inside it
            y = p.y1 - bh if p.y1 - bh >= 0 else p.y1 + line
        x, y = ox + x, oy + y
        draw.rectangle((x, y, x + tw + 2 * pad, y + th + 2 * pad), fill=_rgb(box.color))
        draw.text((x + pad - left, y + pad - top), box.caption, fill=(255, 255, 255), font=font)


def annotated_image(result: ImageResult) -> Image.Image:
    """The sent image with every box and label drawn, and a legend band under it (RGB). With two
    versions or more, the image side by side once per version (:func:`panels`), each panel with
    its version's boxes and the ground truth, titled with its version."""
    if result.image is None:
        raise ValueError(f"{result.name}: no image to draw ({result.error or 'not loaded'})")
    base = result.image.image.convert("RGB")
    w, h = base.size
    font = _font(max(11, round(max(w, h) / 55)))
    probe = ImageDraw.Draw(base)
    pen = _Pen(line=max(2, round(max(w, h) / 300)), font=font, pad=max(2, round(max(w, h) / 300)),
               text_h=probe.textbbox((0, 0), "Ag", font=font)[3])
    shown = panels(result)
    titles = [panel_title(result, p) for p in shown]
    gap = 4 * pen.pad if len(shown) > 1 else 0
    title_band = (pen.text_h + 4 * pen.pad) if any(titles) else 0
    legend = [(f"{TRUTH_NAME}: {_count(len(result.truth))}", TRUTH_COLOR)] if result.truth is not None else []
    legend += [(legend_name(v), version_color(k, result.versions)) for k, v in result.versions.items()]
    band = (pen.text_h + 4 * pen.pad) if legend else 0
    canvas = Image.new("RGB", (len(shown) * w + (len(shown) - 1) * gap, title_band + h + band), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    boxes = drawn_boxes(result)
    for i, (panel, title) in enumerate(zip(shown, titles)):
        ox = i * (w + gap)
        canvas.paste(base, (ox, title_band))
        if title:
            color = version_color(panel, result.versions) if panel is not None else "#212529"
            draw.text((ox + 2 * pen.pad, 2 * pen.pad), title, fill=_rgb(color), font=font)
        _draw_panel(draw, [b for b in boxes if _in_panel(b, panel)], (ox, title_band), (w, h), pen)
    x = 2 * pen.pad
    for name, color in legend:
        y = title_band + h + 2 * pen.pad
        draw.rectangle((x, y, x + pen.text_h, y + pen.text_h), fill=_rgb(color))
        x += pen.text_h + pen.pad
        draw.text((x, y), name, fill=(20, 20, 20), font=font)
        x += int(draw.textlength(name, font=font)) + 4 * pen.pad
    return canvas


def annotated_png(result: ImageResult) -> bytes:
    """:func:`annotated_image` as PNG bytes."""
    buf = io.BytesIO()
    annotated_image(result).save(buf, "PNG")
    return buf.getvalue()
