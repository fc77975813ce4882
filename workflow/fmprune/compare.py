"""Equal-cost comparison of pruning methods on one model.

Every method is pruned to the same MAC targets (plans with ``target_reduction`` or
``target_macs``), fine-tuned over several seeds, and compared three ways: a table, a Pareto plot
of the task's headline figure (top-1, or max F-measure for saliency) against MACs, and the
overlap (Jaccard index) of the channels the methods keep.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy.stats import hypergeom

from . import FmpruneError
from .export import SPEED_COLUMNS, speed_figures
from .io import atomic_path, atomic_write_text, read_json
from .methods import ORDER as METHOD_ORDER
from .models import spec_of
from .plan import is_target, target_knob, target_reduction
from .tasks import TASKS, Task

log = logging.getLogger(__name__)

EQUAL, NATIVE = "equal widths", "native"
SERIES_ORDER = (EQUAL, NATIVE)
# The task's figures (Task.compared: acc.json key -> column) are averaged over seeds and shown
# as mean ± std; speeds are medians over seeds.
# (eager PyTorch, then per runtime of the config's ``runtimes``)
SPEEDS = SPEED_COLUMNS
OPTIONAL = ("top1_flagged", "before_ft_bn", *SPEEDS, "knob")
TABLE_LEGEND = (
    "before_ft = {what} of the pruned model before fine-tuning; before_ft_bn = the same after "
    "re-estimating BN statistics on training images; {what} columns are mean ± std over seeds, "
    "latency and throughput medians; equal widths = all methods pruned to the same widths by one "
    "scale factor over a shared rate-list shape; native = the method's own knob bisected to the target; "
    "round_to = widths rounded to multiples of it inside the bisection (the MACs are the rounded model's).")


def columns(task: Task) -> list[str]:
    return ["series", "target_pct", "method", "seeds", "macs_m", "macs_red_pct", "params_m", "params_red_pct",
            *(f"{col}_{stat}" for col in task.compared.values() for stat in ("mean", "std")), *SPEEDS, "knob"]


def task_of(report: dict) -> Task:
    """The task a report (acc.json) belongs to; reports written before tasks are classification."""
    return TASKS[report.get("task", "classification")]


def compare(acc_files: list[Path], plan_files: list[Path], baseline_file: Path, out_dir: Path) -> pd.DataFrame:
    """Write table.csv/.md, pareto.png and jaccard.csv/.md/.png to ``out_dir``; return the table."""
    baseline = _read(baseline_file)
    task = task_of(baseline)
    plans = {(p["method"], p["plan"]): p for p in map(_read, plan_files)}
    runs = _runs(acc_files, baseline["macs"], task)
    if runs.empty:
        raise FmpruneError(f"no comparison runs among {len(acc_files)} acc.json file(s): "
                           "none has a plan with target_reduction or target_macs")
    table = _table(runs, plans, baseline, task)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "table.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "table.md", _table_markdown(table, task))
    _save(_pareto_figure(table, baseline, task), out_dir / "pareto.png")
    overlap = jaccard(plans.values(), baseline)
    atomic_write_text(out_dir / "jaccard.csv", overlap.to_csv(index=False))
    atomic_write_text(out_dir / "jaccard.md", _jaccard_markdown(overlap))
    _save(_jaccard_figure(overlap), out_dir / "jaccard.png")
    return table


def _read(path: Path) -> dict:
    return read_json(path, "result")


# ---------------------------------------------------------------------------------------------
# Series and targets


def series_of(method: str, definition: dict) -> str:
    """Native when the method bisected its own knob (CDP's sparsity, RGD's threshold) to the
    target: its widths are its own. Otherwise one scale factor gives every method the same widths."""
    return EQUAL if target_knob(method, definition) == "scale" else NATIVE


def target_pct(definition: dict, baseline_macs: int) -> float:
    """The MAC reduction a plan aims at, in percent (1 decimal)."""
    return round(100 * target_reduction(definition, baseline_macs), 1)


def method_rank(method: str) -> tuple[int, str]:
    """Sort key: the fixed method order, then any other method by name."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


# ---------------------------------------------------------------------------------------------
# The table


def _runs(acc_files: list[Path], baseline_macs: int, task: Task) -> pd.DataFrame:
    """One row per comparison run (method, plan, seed), with its series and target."""
    rows = []
    for path in acc_files:
        acc = _read(path)
        definition = acc.get("plan_definition", {})
        if not is_target(definition):
            continue
        rows.append({"series": series_of(acc["method"], definition), "target_pct": target_pct(definition, baseline_macs),
                     "method": acc["method"], "plan": acc["plan"], "seed": acc.get("seed"),
                     "macs": acc["macs"], "params": acc["params"],
                     **{col: acc.get(key) for key, col in task.compared.items()}, **_speeds(acc)})
    return pd.DataFrame(rows)


def _table(runs: pd.DataFrame, plans: dict, baseline: dict, task: Task) -> pd.DataFrame:
    """Baseline row, then one row per (series, target, method): numeric means and stds."""
    rows = [_baseline_row(baseline, task)]
    for (series, target, method), g in runs.groupby(["series", "target_pct", "method"]):
        if g["plan"].nunique() > 1:
            raise FmpruneError(f"plans {' and '.join(sorted(g['plan'].unique()))} of {method} both aim at "
                               f"{target:g}% MAC reduction ({series}); keep one of them")
        row = {"series": series, "target_pct": target, "method": method, "seeds": len(g),
               **_cost(g["macs"].mean(), g["params"].mean(), baseline)}
        for col in task.compared.values():
            row.update(_mean_std(col, g[col], task.digits))
        for col in SPEEDS:
            row[col] = _round(g[col].median())
        row["knob"] = _knob(plans.get((method, g["plan"].iloc[0])))
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns(task)).astype({"seeds": "Int64"})
    table = pd.concat([table.iloc[:1], _sorted(table.iloc[1:], f"{task.compared[task.headline]}_mean")], ignore_index=True)
    return _drop_absent(table)


def _drop_absent(table: pd.DataFrame) -> pd.DataFrame:
    """Drop the optional columns no row has a value for (a mean's std with it)."""
    absent = [c for c in table if c.startswith(OPTIONAL) and not c.endswith("_std") and table[c].isna().all()]
    return table.drop(columns=absent + [c.replace("_mean", "_std") for c in absent if c.endswith("_mean")])


def _baseline_row(baseline: dict, task: Task) -> dict:
    row = {"series": "", "target_pct": None, "method": "baseline", "seeds": None,
           **_cost(baseline["macs"], baseline["params"], baseline)}
    for key, col in task.compared.items():
        if key in task.metrics:  # the baseline has no before/best figures
            row.update(_mean_std(col, pd.Series([baseline.get(key)], dtype=float), task.digits))
    row.update({key: _round(value) for key, value in _speeds(baseline).items()})
    return row


def _speeds(report: dict) -> dict:
    """A report's :data:`SPEEDS` (None where it has no figure)."""
    figures = speed_figures(report)
    return {key: figures.get(key) for key in SPEEDS}


def _cost(macs: float, params: float, baseline: dict) -> dict:
    return {"macs_m": round(macs / 1e6, 2), "macs_red_pct": round(100 * (1 - macs / baseline["macs"]), 2),
            "params_m": round(params / 1e6, 3), "params_red_pct": round(100 * (1 - params / baseline["params"]), 2)}


def _mean_std(col: str, values: pd.Series, digits: int = 2) -> dict:
    values = values.dropna().astype(float)
    std = values.std(ddof=1) if len(values) > 1 else None
    return {f"{col}_mean": _round(values.mean() if len(values) else None, digits), f"{col}_std": _round(std, digits)}


def _round(value, digits: int = 2) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), digits)


def _knob(plan: dict | None) -> str | None:
    """The knob's value the bisection found, and the rounding of the widths it gave."""
    if not plan or "knob" not in plan:
        return None
    rounding = f", round_to={plan['round_to']}" if "round_to" in plan else ""
    return f"{plan['knob']}={plan['knob_value']:.3g}{rounding}"


def _sorted(rows: pd.DataFrame, headline: str) -> pd.DataFrame:
    """Equal widths before native, then by target, then the best ``headline`` (a mean column) first."""
    key = rows.assign(_series=rows["series"].map(SERIES_ORDER.index), _best=-rows[headline].fillna(-np.inf))
    return key.sort_values(["_series", "target_pct", "_best"], kind="stable").drop(columns=["_series", "_best"])


def _table_markdown(table: pd.DataFrame, task: Task) -> str:
    """Means and stds merged into "mean ± std"; empty cells for missing values."""
    shown = pd.DataFrame(index=table.index)
    for col in table:
        if col.endswith("_std"):
            continue
        if col.endswith("_mean"):
            shown[col.removesuffix("_mean")] = [_pm(m, s, task.digits) for m, s in zip(table[col], table[col[:-5] + "_std"])]
        elif col == "target_pct":
            shown[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{v:g}")
        elif col == "seeds":
            shown[col] = table[col].map(lambda v: "" if pd.isna(v) else str(int(v)))
        else:
            digits = 3 if col == "params_m" else 2
            shown[col] = table[col].map(lambda v: "" if v is None or pd.isna(v) else v if isinstance(v, str) else f"{v:.{digits}f}")
    align = ["left" if col in ("series", "method", "knob") else "right" for col in shown]
    legend = TABLE_LEGEND.format(what=task.headline_label.removesuffix(" (%)"))
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n\n" + legend + "\n"


def _pm(mean, std, digits: int = 2) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# Pareto plot


def _method_styles(methods) -> dict[str, tuple[tuple, str]]:
    """Method -> (colour, marker): ten colours, then the same colours with the next marker, so
    that fourteen methods stay tellable apart."""
    palette, markers = colormaps["tab10"].colors, "osD^v"
    return {m: (palette[i % len(palette)], markers[i // len(palette) % len(markers)])
            for i, m in enumerate(sorted(methods, key=method_rank))}


def _pareto_figure(table: pd.DataFrame, baseline: dict, task: Task) -> Figure:
    """(a) the task's headline figure after fine-tuning and (b) before it, against MACs; one line
    per (method, series)."""
    runs = table[table["method"] != "baseline"]
    before = "before_ft_bn" if "before_ft_bn_mean" in runs and runs["before_ft_bn_mean"].notna().all() else "before_ft"
    name, _, unit = task.headline_label.partition(" (")
    unit = f" ({unit}" if unit else ""
    panels = [(task.compared[task.headline], "(a) after fine-tuning", f"{name} after fine-tuning{unit}"),
              (before, "(b) before fine-tuning",
               f"{name} before fine-tuning, BN re-estimated{unit}" if before == "before_ft_bn"
               else f"{name} before fine-tuning{unit}")]
    styles = _method_styles(runs["method"].unique())
    fig = Figure(figsize=(12, 5.2), dpi=150, layout="constrained")
    for ax, (col, title, ylabel) in zip(fig.subplots(1, 2), panels):
        for (method, series), g in runs.groupby(["method", "series"]):
            g = g.sort_values("macs_m")
            std = g[f"{col}_std"]
            native = series == NATIVE
            color, marker = styles[method]
            ax.errorbar(g["macs_m"], g[f"{col}_mean"], yerr=std.fillna(0) if std.notna().any() else None,
                        color=color, capsize=3, linestyle="--" if native else "-", marker=marker, markersize=6,
                        markerfacecolor="white" if native else color)
        ax.axhline(baseline[task.headline], color="black", linestyle=":", linewidth=1)
        ax.plot(baseline["macs"] / 1e6, baseline[task.headline], marker="*", color="black", markersize=14, linestyle="")
        ax.set(title=title, xlabel="MACs (M)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, marker=marker, label=m) for m, (c, marker) in styles.items()]
    handles += [Line2D([], [], color="black", marker="o", label=EQUAL),
                Line2D([], [], color="black", marker="o", markerfacecolor="white", linestyle="--", label=NATIVE),
                Line2D([], [], color="black", marker="*", markersize=12, linestyle=":", label="baseline")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), frameon=False)
    fig.suptitle(f"{baseline['model']}: {name} against MACs at equal cost (mean ± std over seeds)")
    return fig


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)


# ---------------------------------------------------------------------------------------------
# Kept-set overlap


def chance_jaccard(channels: int, kept_a: int, kept_b: int) -> float:
    """Expected Jaccard index of two independent, uniformly random kept sets of sizes ``kept_a``
    and ``kept_b`` out of ``channels``: their overlap X is hypergeometric, J = X / (a + b - X)."""
    x = np.arange(max(0, kept_a + kept_b - channels), min(kept_a, kept_b) + 1)
    return float(np.sum(hypergeom(channels, kept_a, kept_b).pmf(x) * x / (kept_a + kept_b - x)))


def jaccard(plans, baseline: dict) -> pd.DataFrame:
    """Per equal-widths target, pruned group and pair of methods: the Jaccard index of the kept
    channels, and its chance level. Groups neither method pruned are left out."""
    groups = spec_of(baseline["arch"], baseline.get("input_size")).groups  # a traced arch: at its side
    by_target: dict[float, dict[str, dict]] = {}
    for p in plans:
        if is_target(p["definition"]) and series_of(p["method"], p["definition"]) == EQUAL:
            by_target.setdefault(target_pct(p["definition"], baseline["macs"]), {})[p["method"]] = p["kept"]
    rows = []
    for target, kept in sorted(by_target.items()):
        methods = sorted(kept, key=method_rank)
        for g in (g for g in groups if all(g in k for k in kept.values())):
            channels = groups[g].channels
            for i, a in enumerate(methods):
                for b in methods[i + 1:]:
                    if not len(kept[a][g]) == len(kept[b][g]) == channels:
                        rows.append(_pair(target, g, channels, a, set(kept[a][g]), b, set(kept[b][g])))
    columns = ["target_pct", "group", "channels", "kept", "method_a", "method_b", "jaccard", "chance"]
    return pd.DataFrame(rows, columns=columns)


def _pair(target: float, group: str, channels: int, a: str, kept_a: set, b: str, kept_b: set) -> dict:
    if len(kept_a) != len(kept_b):
        log.warning("%s and %s keep %d and %d channels of %s at %g%%: not the same widths",
                    a, b, len(kept_a), len(kept_b), group, target)
    return {"target_pct": target, "group": group, "channels": channels, "kept": len(kept_a), "method_a": a,
            "method_b": b, "jaccard": len(kept_a & kept_b) / len(kept_a | kept_b),
            "chance": chance_jaccard(channels, len(kept_a), len(kept_b))}


def _weighted(overlap: pd.DataFrame, col: str) -> float:
    return float(np.average(overlap[col], weights=overlap["channels"]))


def jaccard_matrix(overlap: pd.DataFrame) -> pd.DataFrame:
    """Method × method channel-weighted mean Jaccard of one target; 1 on the diagonal."""
    methods = sorted(set(overlap["method_a"]) | set(overlap["method_b"]), key=method_rank)
    matrix = pd.DataFrame(np.eye(len(methods)), index=methods, columns=methods)
    for (a, b), g in overlap.groupby(["method_a", "method_b"]):
        matrix.loc[a, b] = matrix.loc[b, a] = _weighted(g, "jaccard")
    return matrix


def _jaccard_markdown(overlap: pd.DataFrame) -> str:
    if overlap.empty:
        return "No equal-widths comparison plans, so no kept sets of equal size to compare.\n"
    parts = []
    for target, g in overlap.groupby("target_pct"):
        parts.append(f"## {target:g}% MAC reduction\n\n"
                     + jaccard_matrix(g).to_markdown(floatfmt=".2f") + "\n\n"
                     + f"chance level: {_weighted(g, 'chance'):.2f}\n")
    legend = ("Jaccard index |A ∩ B| / |A ∪ B| of the channels two methods keep, averaged over pruned "
              "groups weighted by their channel count (groups no method prunes are left out); chance "
              "level = the same for two independent uniformly random kept sets of the same sizes.\n")
    return "\n".join(parts) + "\n" + legend


def _jaccard_figure(overlap: pd.DataFrame) -> Figure:
    """One heat map per target, on a shared 0–1 colour scale."""
    targets = sorted(overlap["target_pct"].unique())
    if not targets:
        fig = Figure(figsize=(6, 2), dpi=150)
        fig.text(0.5, 0.5, "no equal-widths comparison plans", ha="center", va="center")
        return fig
    size = max(3.0, 0.55 * len(set(overlap["method_a"]) | set(overlap["method_b"])) + 1.5)
    fig = Figure(figsize=(size * len(targets) + 1, size + 0.6), dpi=150, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(targets)))
    for ax, target in zip(axes, targets):
        g = overlap[overlap["target_pct"] == target]
        matrix = jaccard_matrix(g)
        image = ax.imshow(matrix.to_numpy(), vmin=0, vmax=1, cmap="viridis")
        for (i, j), v in np.ndenumerate(matrix.to_numpy()):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="black" if v > 0.6 else "white")
        ax.set_xticks(range(len(matrix)), matrix.columns, rotation=45, ha="right")
        ax.set_yticks(range(len(matrix)), matrix.index)
        ax.set_title(f"kept-set Jaccard at {target:g}% MAC reduction\n(chance {_weighted(g, 'chance'):.2f})", fontsize=10)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="Jaccard index")
    return fig
