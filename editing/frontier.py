"""The adherence-structure frontier of a swept benchmark: one curve per method (or layer band).

A method can look better at one operating point by editing less. Swept over t_start (or
guidance), each method traces a curve of adherence (x: the testbed classifier, or CLAP) against
structure kept (y: melody, chroma, LPAPS). Two methods are then compared where their curves
overlap in adherence: the mean gap in structure over that overlap (both curves interpolated at
the same adherence levels), with a paired bootstrap interval that resamples items, the same items
for both methods (every condition edits the same items).

Examples:
    >>> points = {"melodia": [(0.25, 0.75), (0.5, 0.5)], "ddim": [(0.25, 0.625), (0.5, 0.375)]}   # (x, y) per t_start
    >>> rows = [{"item": i, "category": "timbre", "condition": f"{m}@t_start={t}", "adherence": x,
    ...          "melody_raw_chroma": y} for i in "ab" for m, p in points.items() for t, (x, y) in zip((0.4, 0.8), p)]
    >>> frontier_curves(rows, "adherence", "melody_raw_chroma")["melodia"]
    [('t_start=0.4', 0.25, 0.75), ('t_start=0.8', 0.5, 0.5)]
    >>> matched_structure(rows, "adherence", "melody_raw_chroma")[0]
    {'a': 'melodia', 'b': 'ddim', 'x': 'adherence', 'metric': 'melody_raw_chroma', 'n': 2, 'gap': 0.125, ...}
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

from editing.metric_labels import TABLE_METRICS
from editing.benchmark import SWEEP_MARK, base_condition, point_label

LEVELS = 9  # adherence levels at which two curves are compared, spread over their overlap
X_METRICS = ("adherence", "clap")  # the first one the rows hold is the x axis
Y_METRICS = ("melody_raw_chroma", "chroma", "lpaps")  # structure kept; labels in TABLE_METRICS


def is_swept(rows: list[dict]) -> bool:
    """True when the rows come from a `--sweep` run (condition names carry the setting)."""
    return any(SWEEP_MARK in row["condition"] for row in rows)


def x_metric(rows: list[dict]) -> str | None:
    """The adherence metric the rows hold (the classifier on the testbed, else CLAP); None without one."""
    return next((m for m in X_METRICS if any(row.get(m) for row in rows)), None)


def _table(rows: list[dict], metric: str) -> tuple[dict[str, list[str]], list[str], np.ndarray]:
    """curve -> its conditions (sweep order), the items every condition has, values (condition, item)."""
    conditions = list(dict.fromkeys(row["condition"] for row in rows))
    value = {(row["condition"], row["item"]): float(row[metric]) if row.get(metric) else math.nan for row in rows}
    items = [i for i in dict.fromkeys(row["item"] for row in rows)
             if all(math.isfinite(value.get((c, i), math.nan)) for c in conditions)]
    curves: dict[str, list[str]] = {}
    for condition in conditions:
        curves.setdefault(base_condition(condition), []).append(condition)
    table = np.asarray([[value[c, i] for i in items] for c in conditions]).reshape(len(conditions), len(items))
    return curves, items, table


def _paired_tables(rows: list[dict], x: str, y: str) -> tuple[list[str], dict[str, list[str]], np.ndarray, np.ndarray]:
    """Conditions, curve -> its conditions, and the x and y values (condition, item) over the items that
    every condition has for both metrics."""
    conditions = list(dict.fromkeys(row["condition"] for row in rows))
    curves, items_x, table_x = _table(rows, x)
    _, items_y, table_y = _table(rows, y)
    shared = [i for i in items_x if i in set(items_y)]
    return (conditions, curves, table_x[:, [items_x.index(i) for i in shared]],
            table_y[:, [items_y.index(i) for i in shared]])


def frontier_curves(rows: list[dict], x: str, y: str) -> dict[str, list[tuple[str, float, float]]]:
    """Per curve, its points (sweep label, mean x, mean y) over the items every condition has for x and y."""
    conditions, curves, tx, ty = _paired_tables(rows, x, y)
    if tx.shape[1] == 0:
        return {}
    means_x, means_y = tx.mean(1), ty.mean(1)
    return {curve: [(point_label(c), float(means_x[conditions.index(c)]), float(means_y[conditions.index(c)]))
                    for c in members] for curve, members in curves.items()}


def _gap(xa: np.ndarray, ya: np.ndarray, xb: np.ndarray, yb: np.ndarray) -> float:
    """Mean of y_a - y_b at LEVELS adherence levels across the overlap of the two curves (NaN: none)."""
    low, high = max(xa.min(), xb.min()), min(xa.max(), xb.max())
    if not high > low:
        return math.nan
    levels = np.linspace(low, high, LEVELS)
    order_a, order_b = np.argsort(xa), np.argsort(xb)
    return float(np.mean(np.interp(levels, xa[order_a], ya[order_a]) - np.interp(levels, xb[order_b], yb[order_b])))


def matched_structure(rows: list[dict], x: str, y: str, resamples: int = 1000, seed: int = 0) -> list[dict]:
    """For every pair of curves: the mean structure gap (a - b) at matched adherence, with a 95 % paired
    bootstrap interval over items, the overlap in adherence, and n items; gap NaN where they do not overlap."""
    conditions, curves, tx, ty = _paired_tables(rows, x, y)
    n = tx.shape[1]
    if n < 2 or len(curves) < 2:
        return []
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    out = []
    for a, b in itertools.combinations(curves, 2):
        rows_a = [conditions.index(c) for c in curves[a]]
        rows_b = [conditions.index(c) for c in curves[b]]

        def gap(columns) -> float:
            return _gap(tx[rows_a][:, columns].mean(1), ty[rows_a][:, columns].mean(1),
                        tx[rows_b][:, columns].mean(1), ty[rows_b][:, columns].mean(1))

        observed = gap(np.arange(n))
        boot = np.asarray([gap(d) for d in draws]) if math.isfinite(observed) else np.asarray([math.nan])
        boot = boot[np.isfinite(boot)]
        xa, xb = tx[rows_a].mean(1), tx[rows_b].mean(1)
        out.append({"a": a, "b": b, "x": x, "metric": y, "n": n, "gap": observed,
                    "ci_low": float(np.quantile(boot, 0.025)) if boot.size else math.nan,
                    "ci_high": float(np.quantile(boot, 0.975)) if boot.size else math.nan,
                    "overlap_low": float(max(xa.min(), xb.min())), "overlap_high": float(min(xa.max(), xb.max()))})
    return out


def frontier_markdown(matched: list[dict]) -> str:
    """The matched-adherence gaps as a Markdown table; '' when there are none."""
    if not matched:
        return ""
    lines = ["", f"# Frontier: structure at matched adherence ({matched[0]['x']})", "",
             "gap = mean of (a - b) over the adherence range both curves reach, [95 % paired bootstrap CI over "
             "items]; * where the interval excludes 0; for LPAPS lower is better.", "",
             "| a | b | metric | n | adherence overlap | gap a - b |", "|---|---|---|---|---|---|"]
    for m in matched:
        if math.isfinite(m["gap"]):
            star = "*" if m["ci_low"] > 0 or m["ci_high"] < 0 else ""
            gap = f"{m['gap']:+.3f} [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}]{star}"
            overlap = f"{m['overlap_low']:.2f}-{m['overlap_high']:.2f}"
        else:
            gap, overlap = "no overlap", "–"
        lines.append(f"| {m['a']} | {m['b']} | {TABLE_METRICS[m['metric']][0]} | {m['n']} | {overlap} | {gap} |")
    return "\n".join(lines) + "\n"


def plot_frontier(rows: list[dict], path: str | Path, title: str = "") -> Path | None:
    """One panel per structure metric the rows hold: adherence (x) against it (y), a curve per method,
    each point labelled with its sweep value; None when the rows hold no adherence metric."""
    from probing.plots import pyplot, write_figure

    x = x_metric(rows)
    metrics = [m for m in Y_METRICS if any(row.get(m) for row in rows)]
    if x is None or not metrics:
        return None
    plt = pyplot()
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.0), squeeze=False,
                                layout="constrained")
    for ax, metric in zip(axes[0], metrics):
        for index, (curve, points) in enumerate(frontier_curves(rows, x, metric).items()):
            xs, ys = [p[1] for p in points], [p[2] for p in points]
            ax.plot(xs, ys, "o-", color=f"C{index}", label=curve)
            for label, px, py in points:
                ax.annotate(label.split("=")[-1] if "," not in label else label, (px, py), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        label, higher = TABLE_METRICS[metric]
        ax.set_xlabel(f"{'classifier adherence' if x == 'adherence' else 'CLAP'} ↑")
        ax.set_ylabel(f"{label} {'↑' if higher else '↓'}")
    first = point_label(next(row["condition"] for row in rows if SWEEP_MARK in row["condition"]))
    axes[0][0].legend(fontsize=8, title=f"points: {first.split('=')[0]}" if "," not in first else None,
                      title_fontsize=8)
    if title:
        figure.suptitle(title)
    return write_figure(figure, path)
