"""Training curves as a PNG, drawn with Pillow (no matplotlib needed).

``plot_curves(history, "curves.png")`` draws two panels side by side: the loss against the
epoch and the error (%) against the epoch, each with the training and the validation curve.
``history`` is the list of per-epoch records that ``minidl.train.fit`` writes to
``metrics.jsonl``.
"""
import math

from PIL import Image, ImageDraw, ImageFont

from .checkpoint import write_atomically

# Colour-blind-safe pairs: train solid blue, validation orange; top-5 dashed green.
TRAIN, VAL, EXTRA = (31, 119, 180), (230, 120, 20), (44, 160, 44)
GRID, AXIS, TEXT = (225, 225, 225), (60, 60, 60), (20, 20, 20)


def _nice_ticks(low, high, count=5):
    """About ``count`` round numbers (1, 2, 2.5 or 5 times a power of ten) spanning [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high - low < 1e-12:
        pad = abs(high) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks, t = [], first
    while t < high + step * 0.999:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _label(value):
    return f"{value:.4g}"


def _panel(draw, font, box, title, series):
    """Draw one line chart in ``box`` = (left, top, right, bottom).

    ``series``: list of (name, colour, dashed, [(x, y), ...]).
    """
    left, top, right, bottom = box
    points = [p for _, _, _, pts in series for p in pts if p[1] is not None and math.isfinite(p[1])]
    # Margins for the tick labels and the title.
    x0, y0, x1, y1 = left + 58, top + 26, right - 12, bottom - 40
    draw.text((left + (right - left) // 2, top + 4), title, fill=TEXT, font=font, anchor="ma")
    if not points:
        draw.rectangle((x0, y0, x1, y1), outline=AXIS)
        draw.text(((x0 + x1) // 2, (y0 + y1) // 2), "no data yet", fill=TEXT, font=font, anchor="mm")
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xmin, xmax = min(xs), max(xs)
    if xmax == xmin:
        xmin, xmax = xmin - 1, xmax + 1
    yticks = _nice_ticks(min(ys), max(ys))
    ymin, ymax = yticks[0], yticks[-1]

    def to_pixel(x, y):
        px = x0 + (x - xmin) / (xmax - xmin) * (x1 - x0)
        py = y1 - (y - ymin) / (ymax - ymin) * (y1 - y0)
        return px, py

    for t in yticks:
        _, py = to_pixel(xmin, t)
        draw.line((x0, py, x1, py), fill=GRID)
        draw.text((x0 - 4, py), _label(t), fill=TEXT, font=font, anchor="rm")
    xstep = max(1, math.ceil((xmax - xmin) / 10))
    x = math.ceil(xmin)
    while x <= xmax:
        px, _ = to_pixel(x, ymin)
        draw.line((px, y1, px, y1 + 4), fill=AXIS)
        draw.text((px, y1 + 6), str(int(x)), fill=TEXT, font=font, anchor="ma")
        x += xstep
    draw.rectangle((x0, y0, x1, y1), outline=AXIS)
    draw.text(((x0 + x1) // 2, bottom - 16), "epoch", fill=TEXT, font=font, anchor="ma")

    legend_y = y0 + 6
    for name, colour, dashed, pts in series:
        pts = [to_pixel(x, y) for x, y in pts if y is not None and math.isfinite(y)]
        if not pts:
            continue
        if len(pts) > 1:
            for a, b in zip(pts, pts[1:]):
                _line(draw, a, b, colour, dashed)
        for px, py in pts:
            draw.ellipse((px - 2.5, py - 2.5, px + 2.5, py + 2.5), fill=colour)
        # Legend in the top-right corner of the plot area.
        lx = x1 - 110
        _line(draw, (lx, legend_y + 6), (lx + 22, legend_y + 6), colour, dashed)
        draw.text((lx + 28, legend_y), name, fill=TEXT, font=font)
        legend_y += 16


def _line(draw, a, b, colour, dashed, width=2):
    if not dashed:
        draw.line((a, b), fill=colour, width=width)
        return
    (ax, ay), (bx, by) = a, b
    length = math.hypot(bx - ax, by - ay)
    dash = 6.0
    n = max(1, int(length // dash))
    for i in range(0, n, 2):
        t0, t1 = i / n, min(1.0, (i + 1) / n)
        draw.line(((ax + (bx - ax) * t0, ay + (by - ay) * t0),
                   (ax + (bx - ax) * t1, ay + (by - ay) * t1)), fill=colour, width=width)


def _series(history, key):
    return [(r["epoch"], r.get(key)) for r in history if r.get(key) is not None]


def render_curves(history, size=(960, 400), error_key="top1", extra_error_key="top5"):
    """The curves as a Pillow image (RGB, ``size`` = (width, height))."""
    width, height = size
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    history = [r for r in history if r.get("complete", True)]
    half = width // 2
    _panel(draw, font, (0, 0, half, height), "loss", [
        ("train", TRAIN, False, _series(history, "train_loss")),
        ("validation", VAL, False, _series(history, "val_loss")),
    ])

    def percent(points):
        return [(x, 100.0 * y) for x, y in points]

    error_series = [
        (f"train {error_key}", TRAIN, False, percent(_series(history, f"train_{error_key}"))),
        (f"val {error_key}", VAL, False, percent(_series(history, f"val_{error_key}"))),
    ]
    if extra_error_key:
        error_series.append((f"val {extra_error_key}", EXTRA, True,
                             percent(_series(history, f"val_{extra_error_key}"))))
    _panel(draw, font, (half, 0, width, height), "error (%)", error_series)
    return image


def plot_curves(history, path, size=(960, 400), error_key="top1", extra_error_key="top5"):
    """Draw ``history`` (a list of per-epoch records) to the PNG file ``path`` (atomically)."""
    image = render_curves(history, size, error_key, extra_error_key)
    return write_atomically(path, lambda f: image.save(f, format="PNG"))
