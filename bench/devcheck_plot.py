"""The roofline plot: time against bytes that must be read, one panel per (dtype, mode), the copy bound as a line.

matplotlib when it imports; otherwise a raster drawn with numpy (labels in a 3x5 pixel font, lower case) and written
as a PNG with zlib; its tEXt chunks and the printed notes spell the axes and the legend out as well.
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

COLORS = {  # provider -> RGB
    "specsampler": (214, 39, 40),
    "torch": (31, 119, 180),
    "torch_compile": (44, 160, 44),
    "flashinfer": (148, 103, 189),
    "transformers": (255, 127, 14),
    "baseline": (140, 86, 75),  # an older kernel, with --baseline-kernel
}
_FONT = {"a": 0x076b, "b": 0x4d6e, "c": 0x0723, "d": 0x176b, "e": 0x05e3, "f": 0x15d2, "g": 0x3ace, "h": 0x4d6d,
    "i": 0x2092, "j": 0x106a, "k": 0x4bad, "l": 0x6497, "m": 0x0fed, "n": 0x0d6d, "o": 0x056a, "p": 0x0d74,
    "q": 0x0759, "r": 0x0724, "s": 0x079e, "t": 0x2e91, "u": 0x0b6b, "v": 0x0b6a, "w": 0x0b7f, "x": 0x0a95,
    "y": 0x5ace, "z": 0x0ef7, "0": 0x7b6f, "1": 0x2c97, "2": 0x62a7, "3": 0x628e, "4": 0x5bc9, "5": 0x798e,
    "6": 0x39ef, "7": 0x72a4, "8": 0x7bef, "9": 0x7bce, "_": 0x0007, ".": 0x0002, ",": 0x0014, "=": 0x0e38,
    "-": 0x01c0, "/": 0x12a4, "(": 0x1491, ")": 0x4494, "%": 0x52a5, ":": 0x0410, "+": 0x05d0, "<": 0x1511,
    ">": 0x4454, "*": 0x0aa8}
AXES = "x: log10(bytes a verification must read); y: log10(median time, us); grey line: bytes / copy bandwidth"


def write_plot(path: str, rows: list[dict], copy_gbps: float, title: str) -> str:
    """Write the plot to `path` (PNG); returns how ('matplotlib' or 'raster')."""
    try:
        _matplotlib(path, rows, copy_gbps, title)
        return "matplotlib"
    except Exception:  # not installed, or no usable backend: draw it ourselves
        _raster(path, rows, copy_gbps, title)
        return "raster (matplotlib unavailable)"


def _panels(rows: list[dict]) -> list[tuple[str, str]]:
    return sorted({(r["dtype"], r["mode"]) for r in rows})


def _matplotlib(path, rows, copy_gbps, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False, sharey=True)
    for ax, (dtype, mode) in zip(axes[0], panels, strict=True):
        sel = [r for r in rows if (r["dtype"], r["mode"]) == (dtype, mode)]
        xs = sorted({r["bytes"] for r in sel})
        ax.plot(xs, [x / copy_gbps / 1e3 for x in xs], color="grey", lw=1, label="copy bound")
        for provider, color in COLORS.items():
            mine = [r for r in sel if r["provider"] == provider]
            if mine:
                xy = ([r["bytes"] for r in mine], [r["median_us"] for r in mine])
                ax.scatter(*xy, s=12, color=[c / 255 for c in color], label=provider)
        ax.set(xscale="log", yscale="log", title=f"{dtype}, {mode}", xlabel="bytes read (minimum)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("median time (us)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _raster(path, rows, copy_gbps, title, width=1200, height=520):
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    panels = _panels(rows) or [("", "")]
    x_lo, x_hi, y_lo, y_hi = _ranges(rows, copy_gbps)
    margin, top = 30, 60
    pw = (width - margin * (len(panels) + 1)) // len(panels)
    ph = height - top - margin
    for i, (dtype, mode) in enumerate(panels):
        box = (margin + i * (pw + margin), top, pw, ph)
        _panel(img, box, [r for r in rows if (r["dtype"], r["mode"]) == (dtype, mode)], copy_gbps,
               (x_lo, x_hi, y_lo, y_hi))
        _text(img, box[0] + 6, top + 4, f"{dtype} {mode}")
    _text(img, margin, 8, title)
    x = margin
    for provider, color in COLORS.items():  # the legend
        img[24:36, x : x + 12] = color
        _text(img, x + 16, 25, provider)
        x += 16 + 8 * len(provider) + 24
    _text(img, x + 20, 25, "x: log10 bytes read   y: log10 us   grey: copy bound")
    legend = ", ".join(f"{p}=rgb{c}" for p, c in COLORS.items())
    text = {"Title": title, "Description": f"{AXES}. Panels left to right: {panels}. Swatches: {legend}"}
    with open(path, "wb") as f:
        f.write(png_bytes(img, text))


def _ranges(rows, copy_gbps):
    xs = [math.log10(r["bytes"]) for r in rows] or [0.0, 1.0]
    ys = [math.log10(max(r["median_us"], 1e-3)) for r in rows] or [0.0, 1.0]
    ys += [math.log10(max(10 ** x / copy_gbps / 1e3, 1e-3)) for x in xs]
    return math.floor(min(xs)), math.ceil(max(xs)) + 1e-9, math.floor(min(ys)), math.ceil(max(ys)) + 1e-9


def _panel(img, box, rows, copy_gbps, ranges):
    x0, y0, w, h = box
    x_lo, x_hi, y_lo, y_hi = ranges

    def to_px(lx, ly):
        px = x0 + (lx - x_lo) / (x_hi - x_lo) * (w - 1)
        py = y0 + h - 1 - (ly - y_lo) / (y_hi - y_lo) * (h - 1)
        return int(round(px)), int(round(py))

    for d in range(int(x_lo), int(math.ceil(x_hi)) + 1):  # decade grid lines, labelled by their exponent
        px, _ = to_px(d, y_lo)
        if x0 <= px < x0 + w:
            img[y0 : y0 + h, px] = 225
            _text(img, px - 2, y0 + h + 4, str(d), (90, 90, 90))
    for d in range(int(y_lo), int(math.ceil(y_hi)) + 1):
        _, py = to_px(x_lo, d)
        if y0 <= py < y0 + h:
            img[py, x0 : x0 + w] = 225
            _text(img, x0 - 8 * len(str(d)) - 3, py - 5, str(d), (90, 90, 90))
    img[y0 : y0 + h, x0] = 0  # axes
    img[y0 + h - 1, x0 : x0 + w] = 0
    for lx in np.linspace(x_lo, x_hi, 4 * w):  # the copy bound
        px, py = to_px(lx, math.log10(max(10**lx / copy_gbps / 1e3, 1e-3)))
        if y0 <= py < y0 + h and x0 <= px < x0 + w:
            img[max(py - 1, y0) : py + 1, px] = 120
    for r in rows:
        px, py = to_px(math.log10(r["bytes"]), math.log10(max(r["median_us"], 1e-3)))
        color = COLORS.get(r["provider"], (0, 0, 0))
        img[max(py - 3, 0) : py + 4, max(px - 3, 0) : px + 4] = color


def _text(img, x, y, text, color=(0, 0, 0), scale=2) -> None:
    """Draw `text` (lower-cased; unknown characters as blanks) with its top left corner at (x, y)."""
    for i, ch in enumerate(text.lower()):
        bits = _FONT.get(ch, 0)
        for row in range(5):
            for col in range(3):
                if bits >> (14 - 3 * row - col) & 1:
                    y0, x0 = y + row * scale, x + (4 * i + col) * scale
                    if y0 >= 0 and x0 >= 0:
                        img[y0 : y0 + scale, x0 : x0 + scale] = color


def png_bytes(img: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """An 8-bit RGB PNG of `img` [H, W, 3] uint8, with optional tEXt chunks."""
    height, width, _ = img.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(height))  # filter type 0 per scanline
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    for key, value in (text or {}).items():
        out += chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace"))
    return out + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
