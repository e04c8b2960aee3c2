"""Hand-written SVG charts (no plotting library needed): stacked horizontal bars and line panels."""

from __future__ import annotations

import math
from html import escape

COLORS = {"direct": "#7f7f7f", "nginx": "#2ca02c", "haproxy": "#1f77b4", "weft": "#d62728", "weft-mesh": "#9467bd"}
FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'


def color(target: str) -> str:
    return COLORS.get(target, "#ff7f0e")


def _text(x, y, s, size=12, anchor="start", weight="normal", fill="#222", extra=""):
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}" '
            f'fill="{fill}" {FONT} {extra}>{escape(str(s))}</text>')


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def stacked_hbars(title: str, subtitle: str, groups: list[tuple[str, list[tuple[str, list[tuple[float, str, float]], str]]]],
                  unit: str, legend: list[tuple[str, str, float]]) -> str:
    """groups: [(group label, [(target, [(value, color, opacity), ...segments], label at bar end)])]."""
    bar_h, gap, group_gap, left, right = 16, 3, 22, 210, 150
    width = 900
    plot_w = width - left - right
    rows = sum(len(bars) for _, bars in groups)
    height = 70 + rows * (bar_h + gap) + len(groups) * group_gap + 50
    vmax = _nice_max(max((sum(s[0] for s in segs) for _, bars in groups for _, segs, _ in bars), default=1.0))
    sx = lambda v: left + v / vmax * plot_w  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           _text(left, 22, title, 15, weight="bold"), _text(left, 40, subtitle, 11, fill="#555")]
    top = 58
    y_end = height - 40
    for i in range(6):
        v = vmax * i / 5
        x = sx(v)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{y_end}" stroke="#ddd"/>')
        out.append(_text(x, y_end + 14, f"{v:g}", 10, "middle", fill="#555"))
    out.append(_text(left + plot_w / 2, y_end + 30, unit, 11, "middle", fill="#333"))
    y = top + 6
    for glabel, bars in groups:
        out.append(_text(8, y + 11, glabel, 12, weight="bold"))
        y += 16
        for target, segs, end_label in bars:
            out.append(_text(left - 6, y + bar_h - 4, target, 11, "end"))
            x = left
            for v, col, op in segs:
                w = max(0.0, v / vmax * plot_w)
                out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{col}" '
                           f'fill-opacity="{op}" stroke="{col}" stroke-width="0.5"/>')
                x += w
            out.append(_text(x + 4, y + bar_h - 4, end_label, 10, fill="#333"))
            y += bar_h + gap
        y += group_gap - 16 + 6
    # legend
    lx = width - right + 10
    ly = 58
    for label, col, op in legend:
        out.append(f'<rect x="{lx}" y="{ly}" width="12" height="12" fill="{col}" fill-opacity="{op}" stroke="{col}"/>')
        out.append(_text(lx + 16, ly + 10, label, 10))
        ly += 18
    out.append("</svg>")
    return "\n".join(out)


def line_panels(title: str, subtitle: str, panels: list[tuple[str, dict[str, list[tuple[float, float]]]]],
                xlabel: str, ylabel: str, log_y: bool = True) -> str:
    """panels: [(panel title, {target: [(x, y), ...]})]; x on a log scale, y on a log scale by default."""
    pw, ph, margin_l, margin_t, pad = 270, 260, 60, 70, 40
    width = margin_l + len(panels) * (pw + pad) + 120
    height = margin_t + ph + 70
    xs = sorted({x for _, series in panels for pts in series.values() for x, _ in pts})
    ys = [y for _, series in panels for pts in series.values() for _, y in pts if y and y > 0]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           _text(margin_l, 22, title, 15, weight="bold"), _text(margin_l, 40, subtitle, 11, fill="#555")]
    if not xs or not ys:
        out.append(_text(margin_l, margin_t + 20, "no data", 12))
        out.append("</svg>")
        return "\n".join(out)
    lo, hi = min(ys), max(ys)
    if log_y:
        ylo = 10 ** math.floor(math.log10(lo))
        yhi = 10 ** math.ceil(math.log10(hi))
        if yhi <= ylo:
            yhi = ylo * 10
        fy = lambda v: (math.log10(v) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo))  # noqa: E731
        ticks = []
        d = ylo
        while d <= yhi * 1.0001:
            for m in (1, 2, 5):
                if ylo <= d * m <= yhi * 1.0001:
                    ticks.append(d * m)
            d *= 10
    else:
        ylo, yhi = 0.0, _nice_max(hi)
        fy = lambda v: v / yhi  # noqa: E731
        ticks = [yhi * i / 5 for i in range(6)]
    xlo, xhi = min(xs), max(xs)
    fx = (lambda v: 0.5) if xlo == xhi else (lambda v: (math.log10(v) - math.log10(xlo)) / (math.log10(xhi) - math.log10(xlo)))
    targets = []
    for i, (ptitle, series) in enumerate(panels):
        ox = margin_l + i * (pw + pad)
        oy = margin_t
        X = lambda v: ox + 10 + fx(v) * (pw - 20)  # noqa: E731
        Y = lambda v: oy + ph - fy(v) * ph  # noqa: E731
        out.append(f'<rect x="{ox}" y="{oy}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        out.append(_text(ox + pw / 2, oy - 8, ptitle, 13, "middle", weight="bold"))
        for t in ticks:
            out.append(f'<line x1="{ox}" y1="{Y(t):.1f}" x2="{ox + pw}" y2="{Y(t):.1f}" stroke="#eee"/>')
            if i == 0:
                out.append(_text(ox - 4, Y(t) + 4, _fmt(t), 10, "end", fill="#555"))
        for x in xs:
            out.append(f'<line x1="{X(x):.1f}" y1="{oy}" x2="{X(x):.1f}" y2="{oy + ph}" stroke="#f2f2f2"/>')
            out.append(_text(X(x), oy + ph + 14, f"{x:g}", 10, "middle", fill="#555"))
        out.append(_text(ox + pw / 2, oy + ph + 30, xlabel, 11, "middle"))
        for target, pts in series.items():
            if target not in targets:
                targets.append(target)
            pts = sorted((x, y) for x, y in pts if y and y > 0)
            if not pts:
                continue
            col = color(target)
            d = " ".join(f"{'M' if j == 0 else 'L'}{X(x):.1f},{Y(y):.1f}" for j, (x, y) in enumerate(pts))
            out.append(f'<path d="{d}" fill="none" stroke="{col}" stroke-width="2"/>')
            for x, y in pts:
                out.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3" fill="{col}"><title>{escape(target)}: '
                           f'{y:.0f} at {x:g}</title></circle>')
    out.append(_text(14, margin_t + ph / 2, ylabel, 11, "middle", extra=f'transform="rotate(-90 14 {margin_t + ph / 2})"'))
    lx = margin_l + len(panels) * (pw + pad) - pad + 14
    for j, t in enumerate(targets):
        out.append(f'<line x1="{lx}" y1="{margin_t + 10 + j * 18}" x2="{lx + 18}" y2="{margin_t + 10 + j * 18}" '
                   f'stroke="{color(t)}" stroke-width="3"/>')
        out.append(_text(lx + 22, margin_t + 14 + j * 18, t, 11))
    out.append("</svg>")
    return "\n".join(out)
