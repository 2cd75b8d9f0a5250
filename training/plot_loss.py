"""Draw the training log (train_log.csv) as a PNG with Pillow alone (no matplotlib needed).

    python training/plot_loss.py models/demo-detector/train_log.csv models/demo-detector/loss_curve.png

Top panel: training loss (answer-token cross-entropy and the total with the auxiliary loss), log
scale, against training time; bottom panel: the held-out check's mean IoU and recall@0.5 (greedy
decoding of validation images during training). Runs (a resumed run) are joined end to end.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

W, H = 1000, 720
MARGIN_L, MARGIN_R = 80, 30
PANELS = ((50, 400), (460, 670))  # (top, bottom) pixel rows of the two plot areas
COLORS = {"lm_loss": (31, 119, 180), "loss": (255, 127, 14), "val_mean_iou": (44, 160, 44),
          "val_recall50": (214, 39, 40)}


def _font(size: int):
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def read_log(path: Path) -> list[dict]:
    rows = list(csv.DictReader(path.open()))
    # Join runs end to end on one time axis.
    offset, last_run, last_t, out = 0.0, None, 0.0, []
    for r in rows:
        run = r.get("run") or "1"
        t = float(r["time_s"] or 0)
        if last_run is not None and run != last_run:
            offset += last_t
        last_run, last_t = run, t
        out.append({**r, "run": run, "t": (t + offset) / 60.0})
    return out


def plot(rows: list[dict], out: Path, title: str) -> None:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    f, fs = _font(14), _font(12)
    d.text((MARGIN_L, 12), title, fill="black", font=_font(16))
    tmax = max((r["t"] for r in rows), default=1.0) or 1.0
    starts, seen = [], set()
    for r in rows:
        if r["run"] not in seen:
            seen.add(r["run"])
            starts.append((r["t"], r["run"]))

    def x_of(t: float) -> float:
        return MARGIN_L + (W - MARGIN_L - MARGIN_R) * t / tmax

    def axes(top: int, bottom: int, ylabel: str) -> None:
        d.rectangle((MARGIN_L, top, W - MARGIN_R, bottom), outline="black")
        d.text((MARGIN_L - 70, top - 18), ylabel, fill="black", font=fs)
        step = 1 if tmax <= 12 else 2 if tmax <= 30 else 5
        m = 0
        while m <= tmax + 1e-9:
            x = x_of(m)
            d.line((x, bottom, x, bottom + 4), fill="black")
            d.text((x - 4, bottom + 6), f"{m:g}", fill="black", font=fs)
            m += step

    # Loss panel (log scale).
    top, bottom = PANELS[0]
    axes(top, bottom, "loss")
    losses = [float(r[k]) for r in rows for k in ("lm_loss", "loss") if r.get(k)]
    if losses:
        lo = 10 ** math.floor(math.log10(max(min(losses), 1e-4)))
        hi = 10 ** math.ceil(math.log10(max(losses)))

        def y_loss(v: float) -> float:
            v = max(v, lo)
            return bottom - (bottom - top) * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

        e = math.log10(lo)
        while e <= math.log10(hi) + 1e-9:
            y = y_loss(10 ** e)
            d.line((MARGIN_L, y, W - MARGIN_R, y), fill=(225, 225, 225))
            d.text((MARGIN_L - 48, y - 7), f"{10 ** e:g}", fill="black", font=fs)
            e += 1
        for key in ("loss", "lm_loss"):
            pts = [(x_of(r["t"]), y_loss(float(r[key]))) for r in rows if r.get(key)]
            if len(pts) > 1:
                d.line(pts, fill=COLORS[key], width=2)
        d.text((W - 420, top + 8), "answer-token cross-entropy (lm_loss)", fill=COLORS["lm_loss"], font=f)
        d.text((W - 420, top + 26), "total = lm_loss + 0.5 x auxiliary (loss)", fill=COLORS["loss"], font=f)

    # Held-out panel.
    top, bottom = PANELS[1]
    axes(top, bottom, "held-out")
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - (bottom - top) * v
        d.line((MARGIN_L, y, W - MARGIN_R, y), fill=(225, 225, 225))
        d.text((MARGIN_L - 36, y - 7), f"{v:.2f}", fill="black", font=fs)
    for key, label in (("val_mean_iou", "mean IoU"), ("val_recall50", "recall@0.5")):
        pts = [(x_of(r["t"]), bottom - (bottom - top) * float(r[key])) for r in rows if r.get(key)]
        if len(pts) > 1:
            d.line(pts, fill=COLORS[key], width=2)
        for x, y in pts:
            d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=COLORS[key])
    d.text((MARGIN_L + 10, bottom - 64), "held-out check (greedy decoding, validation seeds 8,000,000+;",
           fill="black", font=f)
    d.text((MARGIN_L + 10, bottom - 46), "16 images during a run, 48 or 96 at its end): mean IoU",
           fill=COLORS["val_mean_iou"], font=f)
    d.text((MARGIN_L + 10, bottom - 26), "recall@0.5", fill=COLORS["val_recall50"], font=f)
    # Run boundaries (a resumed run starts with a fresh auxiliary head: its loss spikes briefly).
    for t0, run in starts[1:]:
        x = x_of(t0)
        for top_, bottom_ in PANELS:
            for y in range(top_, bottom_, 8):
                d.line((x, y, x, min(y + 4, bottom_)), fill=(120, 120, 120))
        d.text((x + 4, PANELS[0][1] - 20), f"run {run} starts (resumed)", fill=(90, 90, 90), font=fs)
    d.text((W // 2 - 80, H - 24), "training time (minutes)", fill="black", font=f)
    img.save(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    rows = read_log(src)
    if not rows:
        raise SystemExit(f"{src} holds no rows")
    steps = max(int(r["step"]) for r in rows)
    plot(rows, dst, f"demo detector training: {steps} steps ({src.name})")
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
