"""The tables of ``benchmarks/overhead.py``: its rows, the cost exponents and the Markdown."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from _overhead_count import REFERENCE

SIZES: dict[str, tuple[int, int, int]] = {
    "28": (1, 28, 28),
    "32": (3, 32, 32),
    "96": (3, 96, 96),
    "224": (3, 224, 224),
}


@dataclass
class Row:
    device: str
    size: str
    d: int
    method: str
    us_per_input: float | None
    rows: int
    ratio: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def fit_exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(cost) on log(d)."""
    pts = [(math.log(d), math.log(c)) for d, c in points if c and c > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else None


def exponents(rows: list[Row]) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    out = {}
    for dev, method in {(r.device, r.method) for r in rows}:
        pts = sorted(
            (r.d, r.us_per_input)
            for r in rows
            if r.device == dev and r.method == method and r.us_per_input
        )
        out[(dev, method)] = (fit_exponent(pts), fit_exponent(pts[-2:]))  # type: ignore[arg-type]
    return out


def markdown(zero: list[Row], real: list[Row]) -> str:
    lines = []
    for dev in sorted({r.device for r in zero}):
        rows = [r for r in zero if r.device == dev]
        sizes = [s for s in SIZES if any(r.size == s for r in rows)]
        methods = list(dict.fromkeys(r.method for r in rows))
        exps = exponents(rows)
        head = "| method | " + " | ".join(
            f"{'x'.join(map(str, SIZES[s]))} (d={math.prod(SIZES[s]):,})" for s in sizes
        )
        lines.append(f"Zero-cost victim, {dev}: us per scored input (x torchattacks Square)")
        lines.append("")
        lines.append(head + " | exponent (all / top two) |")
        lines.append("|---" * (len(sizes) + 2) + "|")
        for m in methods:
            cells = []
            for s in sizes:
                r = next((r for r in rows if r.method == m and r.size == s), None)
                if r is None or r.us_per_input is None:
                    cells.append(r.note if r else "")
                elif m == REFERENCE or r.ratio is None:
                    cells.append(f"{r.us_per_input:,.0f}")
                else:
                    cells.append(f"{r.us_per_input:,.0f} ({r.ratio:.2f}x)")
            b_all, b_top = exps.get((dev, m), (None, None))
            fmt = lambda b: "-" if b is None else f"{b:.2f}"  # noqa: E731
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {fmt(b_all)} / {fmt(b_top)} |")
        lines.append("")
    for dev in sorted({r.device for r in real}):
        rows = [r for r in real if r.device == dev]
        lines.append(
            f"Real victims, {dev}: scored inputs/s during the attack / raw batched forward"
        )
        lines.append("")
        lines.append(
            "| input | victim | images x budget | method | inputs/s | raw/s | ratio | in model |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in rows:
            e = r.extra
            lines.append(
                f"| {'x'.join(map(str, SIZES[r.size]))} | {e['victim']} | "
                f"{e['images']} x {e['budget']} | {r.method} | {e['inputs_per_s']:,.1f} | "
                f"{e['raw_inputs_per_s']:,.1f} | {r.ratio:.3f} | {e['model_share']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)
