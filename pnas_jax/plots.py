"""Plots for a NAS search: how the architecture distribution evolves and what it ends up choosing.

- `plot_alpha_history`: the softmax(alpha) probabilities of every searchable block over the search
  (one small heatmap per block: record / step across, candidate ops down, colour = probability), to
  see when and to what each block converges.
- `plot_architecture`: the final (argmax) architecture drawn per stage, one row of boxes per stage:
  box width grows with the kernel size, colour gives the expand ratio, "Zero" blocks are dashed "skip"
  boxes; out-channels and stride are written under each box.
- `plot_curves`: metrics over time from metrics.jsonl-like records (e.g. the expected latency E[LAT]
  against its target, held-out accuracy, losses), one panel per metric.
- `plot_pareto`: accuracy against measured latency for the found architectures, baselines, random
  samples and model-zoo nets, with the latency target as a vertical line.
- `plot_pareto_errorbars`: the same with error bars (seed spread of accuracy, timing spread of
  latency) and one line per kind (e.g. each method's Pareto front).

Every function writes a PNG at `path` (parent folders created) and returns the path. Figures are built
as `matplotlib.figure.Figure` objects drawn by the Agg canvas: pyplot and its global state are never
touched, so the functions are safe in a headless training process.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_alpha_history", "plot_architecture", "plot_curves", "plot_pareto",
           "plot_pareto_errorbars"]

_MBCONV_RE = re.compile(r"^(\d+)x(\d+)_MBConv(\d+)$")
_DPI = 110


def _save(fig: Figure, path: str | os.PathLike) -> str:
  """Renders `fig` with Agg to the PNG `path` (parent folders created); returns the path as a str."""
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  FigureCanvasAgg(fig)
  fig.savefig(path, format="png", dpi=_DPI)
  return path


def _finite(value: Any) -> float | None:
  """float(value) when it is a finite real number, else None (None, NaN, inf, strings, bools)."""
  if value is None or isinstance(value, (bool, str)):
    return None
  try:
    v = float(value)
  except (TypeError, ValueError):
    return None
  return v if math.isfinite(v) else None


def _edges(xs: Sequence[float]) -> np.ndarray:
  """Cell edges around the increasing centres `xs`: midpoints, half a gap beyond each end."""
  xs = np.asarray(xs, dtype=float)
  if len(xs) == 1:
    return np.array([xs[0] - 0.5, xs[0] + 0.5])
  mid = (xs[1:] + xs[:-1]) / 2
  return np.concatenate([[2 * xs[0] - mid[0]], mid, [2 * xs[-1] - mid[-1]]])


def _alpha_panels(history: Sequence[Sequence[Sequence[float]]], candidates: Sequence[Sequence[str]],
                  steps: Sequence[float] | None) -> tuple[list[np.ndarray], np.ndarray]:
  """Per block the (K_l, T) probabilities of plot_alpha_history, and the x cell edges; checked."""
  n_blocks, n_records = len(candidates), len(history)
  if n_blocks == 0 or n_records == 0:
    raise ValueError(f"plot_alpha_history needs >= 1 block and record (got {n_blocks}, {n_records})")
  probs = []  # per block: (K_l, T)
  for b, names in enumerate(candidates):
    cols = []
    for t, rec in enumerate(history):
      if len(rec) != n_blocks:
        raise ValueError(f"history[{t}] has {len(rec)} blocks, candidates has {n_blocks}")
      vec = np.asarray(rec[b], dtype=float).reshape(-1)
      if len(vec) != len(names):
        raise ValueError(f"history[{t}][{b}] has {len(vec)} probabilities for {len(names)} candidates")
      cols.append(vec)
    probs.append(np.stack(cols, axis=1))
  xs = np.arange(n_records, dtype=float) if steps is None else np.asarray(steps, dtype=float)
  if len(xs) != n_records:
    raise ValueError(f"steps has {len(xs)} values for {n_records} records")
  if n_records > 1 and not np.all(np.diff(xs) > 0):
    raise ValueError("steps must be strictly increasing")
  return probs, _edges(xs)



def plot_alpha_history(
    history: Sequence[Sequence[Sequence[float]]],
    candidates: Sequence[Sequence[str]],
    path: str | os.PathLike,
    steps: Sequence[int] | None = None,
    title: str | None = None,
) -> str:
  """One heatmap per searchable block of its candidate probabilities over the records.

  Args:
    history: history[t][l] is the probability vector of block l at record t (e.g. an epoch).
    candidates: candidates[l] are block l's op names, one per entry of its probability vector (the
      blocks may have different numbers of candidates).
    path: the PNG to write.
    steps: the x value of each record (epoch or step); default 0..T-1. Must be increasing.
    title: the figure title.

  Returns:
    `path` as a str.

  Raises:
    ValueError: no blocks or records, or a probability vector whose length does not match candidates.
  """
  probs, x_edges = _alpha_panels(history, candidates, steps)
  n_blocks = len(candidates)
  ncols = min(4, n_blocks)
  nrows = math.ceil(n_blocks / ncols)
  # Fixed layout in inches (constrained layout costs seconds on 21 panels with many tick labels).
  max_k = max(len(c) for c in candidates)
  max_name = max((len(str(n)) for c in candidates for n in c), default=4)
  label_w = 0.25 + 0.055 * max_name  # room for the candidate names left of each panel
  panel_w, panel_h = 2.6, 0.3 + 0.15 * max_k
  row_gap, top, bottom = 0.75, (0.6 if title else 0.15) + 0.25, 0.5
  grid_w = ncols * panel_w + (ncols - 1) * (label_w + 0.15)
  width = label_w + grid_w + 0.15 + 0.15 + 0.75  # colorbar and its label on the right
  height = top + nrows * panel_h + (nrows - 1) * row_gap + bottom
  fig = Figure(figsize=(width, height))
  axes = fig.subplots(
      nrows,
      ncols,
      squeeze=False,
      gridspec_kw=dict(
          left=label_w / width,
          right=(label_w + grid_w) / width,
          bottom=bottom / height,
          top=1 - top / height,
          wspace=(label_w + 0.15) / panel_w,
          hspace=row_gap / panel_h,
      ),
  )
  mesh = None
  for b in range(nrows * ncols):
    ax = axes[b // ncols][b % ncols]
    if b >= n_blocks:
      ax.set_axis_off()
      continue
    names = list(candidates[b])
    p = probs[b]
    mesh = ax.pcolormesh(
        x_edges, np.arange(len(names) + 1) - 0.5, p, cmap="viridis", vmin=0.0, vmax=1.0, shading="flat"
    )
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=6)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.tick_params(axis="x", labelsize=6)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True, min_n_ticks=1))
    best = names[int(np.argmax(p[:, -1]))]
    ax.set_title(f"block {b}: {best}", fontsize=7)
    if b // ncols == nrows - 1 or b + ncols >= n_blocks:
      ax.set_xlabel("step" if steps is not None else "record", fontsize=7)
  cbar_x = (label_w + grid_w + 0.15) / width
  cax = fig.add_axes((cbar_x, bottom / height, 0.15 / width, 1 - (top + bottom) / height))
  cbar = fig.colorbar(mesh, cax=cax)
  cbar.set_label("probability", fontsize=8)
  cbar.ax.tick_params(labelsize=7)
  if title:
    fig.suptitle(title, y=1 - 0.12 / height, va="top")
  return _save(fig, path)


def _parse_op(op: str) -> tuple[int, int] | None:
  """(kernel, expand) of a "KxK_MBConvE" name, else None."""
  m = _MBCONV_RE.match(op)
  if not m:
    return None
  return int(m.group(1)), int(m.group(3))


def plot_architecture(
    blocks: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str | None = None
) -> str:
  """The final architecture, one row of boxes per stage.

  Args:
    blocks: dicts {"index": int, "stage": int, "op": str, "in": int, "out": int, "stride": int}; missing
      "index" defaults to the list position, "stage" to 0. "KxK_MBConvE" is a box of width growing with K
      coloured by E, "Zero" a dashed empty "skip" box, any other op a grey box with its name.
    path: the PNG to write.
    title: the figure title.

  Returns:
    `path` as a str.
  """
  items = [dict(b, index=b.get("index", i), stage=b.get("stage", 0)) for i, b in enumerate(blocks)]
  stages = sorted({int(b["stage"]) for b in items})
  rows = {s: sorted((b for b in items if int(b["stage"]) == s), key=lambda b: b["index"]) for s in stages}
  expands = sorted({p[1] for b in items if (p := _parse_op(str(b.get("op", "")))) is not None})
  cmap = colormaps["tab10"]
  colours = {e: cmap(i % 10) for i, e in enumerate(expands)}

  gap, box_h, row_h = 0.25, 1.0, 1.8
  layout = []  # (stage row, x, width, block)
  row_widths = [1.0]
  for r, s in enumerate(stages):
    x = 0.0
    for b in rows[s]:
      parsed = _parse_op(str(b.get("op", "")))
      width = 0.6 + 0.15 * parsed[0] if parsed else 1.05
      layout.append((r, x, width, b))
      x += width + gap
    row_widths.append(x)
  total_w = max(row_widths)

  # Equal data aspect: `scale` inches per data unit, a fixed legend column, room for the title.
  x_lo, x_hi = -1.6, total_w + 0.2
  y_lo, y_hi = -(max(1, len(stages)) - 1) * row_h - 0.6, box_h + 0.4
  legend_w, title_h = 1.6, (0.45 if title else 0.05)
  scale = min(0.85, (40.0 - legend_w) / (x_hi - x_lo))
  axes_w, axes_h = scale * (x_hi - x_lo), scale * (y_hi - y_lo)
  fig = Figure(figsize=(axes_w + legend_w, axes_h + title_h))
  ax = fig.add_axes((0.0, 0.0, axes_w / (axes_w + legend_w), axes_h / (axes_h + title_h)))
  for r, x, width, b in layout:
    y = -r * row_h
    op = str(b.get("op", "?"))
    parsed = _parse_op(op)
    if parsed:
      k, e = parsed
      ax.add_patch(Rectangle((x, y), width, box_h, facecolor=colours[e], edgecolor="black", lw=0.8))
      label = f"{k}x{k}\nE{e}"
    elif op == "Zero":
      ax.add_patch(Rectangle((x, y), width, box_h, fill=False, edgecolor="grey", lw=1.0, ls="--"))
      label = "skip"
    else:
      ax.add_patch(Rectangle((x, y), width, box_h, facecolor="lightgrey", edgecolor="black", lw=0.8))
      label = op.replace("_", "\n")
    ax.text(x + width / 2, y + box_h / 2, label, ha="center", va="center", fontsize=7)
    under = f"{b.get('out', '?')}c s{b.get('stride', '?')}"
    ax.text(x + width / 2, y - 0.12, under, ha="center", va="top", fontsize=6)
    cx = x + width / 2
    ax.text(cx, y + box_h + 0.08, f"#{b['index']}", ha="center", va="bottom", fontsize=5, color="dimgrey")
  for r, s in enumerate(stages):
    ax.text(-0.2, -r * row_h + box_h / 2, f"stage {s}", ha="right", va="center", fontsize=8, weight="bold")
  ax.set_xlim(x_lo, x_hi)
  ax.set_ylim(y_lo, y_hi)
  ax.set_axis_off()
  handles = [Patch(facecolor=colours[e], edgecolor="black", label=f"expand {e}") for e in expands]
  if any(str(b.get("op")) == "Zero" for b in items):
    handles.append(Patch(fill=False, edgecolor="grey", ls="--", label="skip (Zero)"))
  if any(_parse_op(str(b.get("op", ""))) is None and str(b.get("op")) != "Zero" for b in items):
    handles.append(Patch(facecolor="lightgrey", edgecolor="black", label="other op"))
  if handles:
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
  if not items:
    ax.text(0.5, 0.5, "no blocks", ha="center", va="center", transform=ax.transAxes)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def plot_curves(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    keys: Sequence[tuple[str, str]],
    x_key: str = "step",
    targets: Mapping[str, float] | None = None,
    title: str | None = None,
) -> str:
  """One panel per metric over `x_key`, from metrics dicts (e.g. the lines of metrics.jsonl).

  Records without the key or x value, or with a None / NaN / non-numeric value, are skipped. When the
  records carrying a key come in several "kind"s (e.g. train and eval), one line per kind is drawn.

  Args:
    records: metrics dicts.
    path: the PNG to write.
    keys: (metric key, axis label) per panel.
    x_key: the key of the x value.
    targets: metric key -> value drawn as a dashed horizontal "target" line on that key's panel.
    title: the figure title.

  Returns:
    `path` as a str.
  """
  if not keys:
    raise ValueError("plot_curves needs at least one key")
  targets = dict(targets or {})
  fig = Figure(figsize=(7.0, 0.8 + 2.2 * len(keys)), layout="constrained")
  axes = fig.subplots(len(keys), 1, squeeze=False, sharex=True)[:, 0]
  for ax, (key, label) in zip(axes, keys, strict=True):
    series: dict[Any, list[tuple[float, float]]] = {}
    for rec in records:
      x, y = _finite(rec.get(x_key)), _finite(rec.get(key))
      if x is None or y is None:
        continue
      series.setdefault(rec.get("kind"), []).append((x, y))
    for kind, pts in series.items():
      pts.sort()
      xs, ys = zip(*pts, strict=True)
      name = str(kind) if len(series) > 1 and kind is not None else key
      ax.plot(xs, ys, marker="o" if len(pts) <= 30 else None, ms=3, lw=1.2, label=name)
    target = _finite(targets.get(key))
    if target is not None:
      ax.axhline(target, ls="--", color="red", lw=1.0, label="target")
    if not series:
      msg = f"no data for {key!r}"
      ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    if len(series) > 1 or target is not None:
      ax.legend(fontsize=7)
  axes[-1].set_xlabel(x_key)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


_KIND_STYLE = {
    "found": dict(marker="*", color="tab:red", s=140),
    "baseline": dict(marker="s", color="tab:blue", s=50),
    "random": dict(marker="o", color="tab:grey", s=30),
    "zoo": dict(marker="^", color="tab:green", s=55),
}
_OTHER_MARKERS = ("D", "v", "P", "X", "h", "<", ">")


def _points_by_kind(points: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
  """The points with a finite x and y, grouped by their "kind" (in first-seen order)."""
  by_kind: dict[str, list[Mapping[str, Any]]] = {}
  for p in points:
    if _finite(p.get("x")) is not None and _finite(p.get("y")) is not None:
      by_kind.setdefault(str(p.get("kind", "other")), []).append(p)
  return by_kind


def plot_pareto(
    points: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    x_label: str = "measured latency (ms)",
    y_label: str = "accuracy (%)",
    title: str | None = None,
    target: float | None = None,
) -> str:
  """Accuracy against latency: a scatter with one marker / colour per kind, each point labelled.

  Args:
    points: dicts {"label": str, "x": float, "y": float, "kind": str}; kind "found", "baseline",
      "random", "zoo" have fixed styles, other kinds get further markers. Points with a non-finite x or
      y are skipped.
    path: the PNG to write.
    x_label: the x axis label.
    y_label: the y axis label.
    title: the figure title.
    target: draws a vertical dashed "latency target" line at this x.

  Returns:
    `path` as a str.
  """
  fig = Figure(figsize=(7.0, 5.0), layout="constrained")
  ax = fig.add_subplot()
  by_kind = _points_by_kind(points)
  other_i = 0
  for kind, pts in by_kind.items():
    style, other_i = _kind_style(kind, other_i)
    xs = [float(p["x"]) for p in pts]
    ys = [float(p["y"]) for p in pts]
    ax.scatter(xs, ys, label=kind, edgecolors="black", linewidths=0.5, zorder=3, **style)
    for p, x, y in zip(pts, xs, ys, strict=True):
      ax.annotate(str(p.get("label", "")), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
  if target is not None:
    ax.axvline(float(target), ls="--", color="black", lw=1.0, label="latency target")
  return _finish_scatter(fig, ax, path, bool(by_kind), x_label, y_label, title)


def _finish_scatter(fig: Figure, ax: Any, path: str | os.PathLike, has_points: bool, x_label: str,
                    y_label: str, title: str | None) -> str:
  """The accuracy-vs-latency plots' common finish: labels, grid, legend (or "no points"), save."""
  if not has_points:
    ax.text(0.5, 0.5, "no points", ha="center", va="center", transform=ax.transAxes, color="grey")
  ax.margins(0.08)
  ax.set_xlabel(x_label)
  ax.set_ylabel(y_label)
  ax.grid(True, alpha=0.3)
  handles, labels = ax.get_legend_handles_labels()
  if handles:
    ax.legend(handles, labels, fontsize=8, loc="best")
  if title:
    ax.set_title(title)
  return _save(fig, path)


def _kind_style(kind: str, other_i: int) -> tuple[dict[str, Any], int]:
  """plot_pareto's marker style of `kind` (further kinds take the next of _OTHER_MARKERS)."""
  style = _KIND_STYLE.get(kind)
  if style is not None:
    return style, other_i
  return dict(marker=_OTHER_MARKERS[other_i % len(_OTHER_MARKERS)], color=f"C{4 + other_i % 6}",
              s=45), other_i + 1


def plot_pareto_errorbars(
    points: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    lines: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    x_label: str = "measured latency (ms)",
    y_label: str = "accuracy (%)",
    title: str | None = None,
) -> str:
  """Accuracy against latency with error bars, one marker / colour per kind as in plot_pareto.

  Args:
    points: dicts {"label", "x", "y", "kind"} plus optional "xerr" / "yerr" (half-widths); points
      with a non-finite x or y are skipped.
    path: the PNG to write.
    lines: kind -> (x, y) vertices drawn as a line in that kind's colour (e.g. its Pareto front).
    x_label, y_label, title: the axis labels and the figure title.

  Returns:
    `path` as a str.
  """
  fig = Figure(figsize=(7.5, 5.5), layout="constrained")
  ax = fig.add_subplot()
  by_kind = _points_by_kind(points)
  other_i = 0
  for kind in dict.fromkeys([*by_kind, *(lines or {})]):
    style, other_i = _kind_style(kind, other_i)
    pts = by_kind.get(kind, [])
    xs, ys = [float(p["x"]) for p in pts], [float(p["y"]) for p in pts]
    if pts:
      ax.errorbar(xs, ys, xerr=[_finite(p.get("xerr")) or 0.0 for p in pts],
                  yerr=[_finite(p.get("yerr")) or 0.0 for p in pts], fmt="none",
                  ecolor=style["color"], elinewidth=0.8, capsize=2, zorder=2)
      ax.scatter(xs, ys, label=kind, edgecolors="black", linewidths=0.5, zorder=3, **style)
    for p, x, y in zip(pts, xs, ys, strict=True):
      ax.annotate(str(p.get("label", "")), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=6)
    line = (lines or {}).get(kind)
    if line:
      lx, ly = zip(*line, strict=True)
      ax.plot(lx, ly, color=style["color"], lw=1.0, alpha=0.7, zorder=1)
  return _finish_scatter(fig, ax, path, bool(by_kind), x_label, y_label, title)
