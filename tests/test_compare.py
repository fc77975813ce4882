"""Equal-cost comparison: table numbers, series and targets, ordering, kept-set overlap, figures, CLI."""
import itertools
import json
import math
import re

import pandas as pd
import pytest

from fmprune import FmpruneError
from fmprune.cli import main
from fmprune.compare import chance_jaccard, compare
from fmprune.models import build

GROUPS = {g: s.channels for g, s in build("resnet20").channel_spec().groups.items() if s.prunable}
BASE_MACS, BASE_PARAMS = 40_000_000, 270_000
SHAPE = "[0.]+[1.]*10"  # stage1 (the first group) is never pruned
# (plan, definition, plan knob, MACs after pruning)
PLANS = {"eq30": ({"target_reduction": 0.3, "shape": SHAPE}, ("scale", 0.4123), 28_000_000),
         "eq50": ({"target_reduction": 0.5}, ("scale", 0.61), 20_000_000),
         "macs20M": ({"target_macs": 20_000_000}, ("sparsity", 0.2712), 20_400_000),
         "rates30": ({"rates": "[0.]+[0.3]*10"}, None, 27_000_000)}
# top-1 after fine-tuning for seeds 0 and 1
TOP1 = {("hrank", "eq30"): (80.0, 82.0), ("l1", "eq30"): (84.0, 84.0), ("random", "eq30"): (70.0, 73.0),
        ("hrank", "eq50"): (60.0, 61.0), ("l1", "eq50"): (65.0, 66.0), ("random", "eq50"): (50.0, 52.0),
        ("cdp", "macs20M"): (85.0,), ("hrank", "rates30"): (99.0,)}


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _kept(method: str, plan: str) -> dict[str, list[int]]:
    """eq30: hrank and l1 keep the same channels; eq50: they keep disjoint halves."""
    kept = {}
    for i, (g, c) in enumerate(GROUPS.items()):
        k = c if i == 0 else (c // 2 if plan == "eq50" else c - c // 4)
        if method == "l1" and plan == "eq50" or method == "random":
            kept[g] = list(range(c - k, c))
        else:
            kept[g] = list(range(k))
    return kept


@pytest.fixture
def results(tmp_path):
    base = _write(tmp_path / "baseline" / "acc.json",
                  {"model": "r20", "arch": "resnet20", "top1": 90.0, "top1_flagged": 92.5, "params": BASE_PARAMS,
                   "macs": BASE_MACS, "latency_ms_b1": 2.0})
    acc, plans = [], []
    for (method, plan), top1s in TOP1.items():
        definition, knob, macs = PLANS[plan]
        info = {"knob": knob[0], "knob_value": knob[1]} if knob else {}
        plans.append(_write(tmp_path / method / plan / "plan.json",
                            {"model": "r20", "plan": plan, "method": method, "definition": definition, **info,
                             "kept": _kept(method, plan)}))
        for seed, top1 in enumerate(top1s):
            acc.append(_write(tmp_path / method / plan / f"seed{seed}" / "acc.json",
                              {"model": "r20", "arch": "resnet20", "method": method, "plan": plan,
                               "plan_definition": definition, "seed": seed, "top1": top1, "top1_best": top1 + 1,
                               "top1_before_finetune": 10.0 + seed, "params": 200_000, "macs": macs,
                               "latency_ms_b1": 1.0 + seed}))
    return acc[::-1], plans, base, tmp_path / "out"


def test_table_numbers_series_and_order(results):
    acc, plans, base, out = results
    table = compare(acc, plans, base, out)
    assert list(table["method"]) == ["baseline", "l1", "hrank", "random", "l1", "hrank", "random", "cdp"]
    assert list(table["series"]) == [""] + ["equal widths"] * 6 + ["native"]
    assert list(table["target_pct"].iloc[1:]) == [30.0] * 3 + [50.0] * 4
    hrank = table.iloc[2]
    assert hrank["seeds"] == 2 and hrank["top1_mean"] == 81.0 and hrank["top1_std"] == round(math.sqrt(2), 2)
    assert hrank["top1_best_mean"] == 82.0 and hrank["before_ft_mean"] == 10.5 and hrank["latency_ms_b1"] == 1.5
    assert hrank["macs_m"] == 28.0 and hrank["macs_red_pct"] == 30.0 and hrank["params_red_pct"] == round(100 * 70 / 270, 2)
    assert hrank["knob"] == "scale=0.412"
    cdp = table.iloc[-1]
    assert cdp["seeds"] == 1 and cdp["top1_mean"] == 85.0 and pd.isna(cdp["top1_std"]) and cdp["knob"] == "sparsity=0.271"
    assert table.iloc[0]["top1_mean"] == 90.0 and table.iloc[0]["macs_red_pct"] == 0.0
    assert table.iloc[0]["top1_flagged_mean"] == 92.5 and table["top1_flagged_mean"].iloc[1:].isna().all()
    assert not {"before_ft_bn_mean", "before_ft_bn_std", "throughput_ips"} & set(table)  # no value anywhere: no column
    assert pd.read_csv(out / "table.csv").shape == table.shape


def test_runtime_figures_are_columns_where_some_run_has_them(results):
    """Each runtime of the config's ``runtimes`` is a latency and a throughput column (medians
    over seeds); a runtime that failed or was not timed has none."""
    acc, plans, base, out = results
    runtimes = {"onnxruntime": {"latency_ms_b1": 0.5, "throughput_ips": 4000.0}, "compile": {"error": "no compiler"}}
    for path in acc:
        report = json.loads(path.read_text())
        if report["method"] == "hrank" and report["plan"] == "eq30":
            _write(path, {**report, "runtimes": runtimes})
    table = compare(acc, plans, base, out)
    hrank = table[(table["method"] == "hrank") & (table["target_pct"] == 30.0)].iloc[0]
    assert hrank["throughput_ips_onnxruntime"] == 4000.0 and hrank["latency_ms_b1_onnxruntime"] == 0.5
    assert table["throughput_ips_onnxruntime"].notna().sum() == 1
    assert not [c for c in table if c.endswith(("_compile", "_torchscript"))]
    assert "throughput_ips_onnxruntime" in (out / "table.md").read_text()


def test_markdown_shows_mean_and_std(results):
    acc, plans, base, out = results
    compare(acc, plans, base, out)
    md = (out / "table.md").read_text()
    assert "81.00 ± 1.41" in md and "| 85.00 " in md and "rates30" not in md
    assert md.rstrip().splitlines()[-1].startswith("before_ft = top-1 of the pruned model before fine-tuning")


def test_target_macs_is_a_percent_of_the_baseline(results):
    acc, plans, base, out = results
    _write(base, {**json.loads(base.read_text()), "macs": 30_000_000})
    table = compare(acc, plans, base, out)
    assert table.loc[table["method"] == "cdp", "target_pct"].item() == round(100 / 3, 1)


def test_missing_plan_leaves_the_knob_empty(results):
    acc, plans, base, out = results
    table = compare(acc, [p for p in plans if "cdp" not in str(p)], base, out)
    assert pd.isna(table.loc[table["method"] == "cdp", "knob"].item())


def test_jaccard_of_equal_widths_plans(results):
    acc, plans, base, out = results
    compare(acc, plans, base, out)
    overlap = pd.read_csv(out / "jaccard.csv")
    assert set(overlap["method_a"]) | set(overlap["method_b"]) == {"hrank", "l1", "random"}  # cdp is native
    assert "stage1" not in set(overlap["group"])  # nothing pruned there
    assert len(overlap) == 2 * 3 * (len(GROUPS) - 1)
    pair = overlap[(overlap["method_a"] == "hrank") & (overlap["method_b"] == "l1")]
    assert (pair.loc[pair["target_pct"] == 30, "jaccard"] == 1).all()
    assert (pair.loc[pair["target_pct"] == 50, "jaccard"] == 0).all()
    row = overlap.iloc[0]
    assert row["chance"] == pytest.approx(chance_jaccard(row["channels"], row["kept"], row["kept"]))
    md = (out / "jaccard.md").read_text()
    at30, at50 = md.split("## 50% MAC reduction")
    assert at30.startswith("## 30% MAC reduction") and "chance level: " in at30 and "chance level: " in at50
    assert re.search(r"\| hrank +\| +1\.00 \| +1\.00 \| +0\.50 \|", at30)
    assert re.search(r"\| hrank +\| +1\.00 \| +0\.00 \| +0\.00 \|", at50)


def test_no_equal_widths_plans_leaves_jaccard_empty(results):
    acc, plans, base, out = results
    compare([p for p in acc if "cdp" in str(p)], [p for p in plans if "cdp" in str(p)], base, out)
    assert pd.read_csv(out / "jaccard.csv").empty
    assert (out / "jaccard.md").read_text().startswith("No equal-widths comparison plans")
    assert (out / "jaccard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("channels, a, b", [(6, 3, 3), (6, 2, 4), (5, 1, 5), (4, 4, 4)])
def test_chance_jaccard_matches_enumeration(channels, a, b):
    pairs = list(itertools.product(itertools.combinations(range(channels), a), itertools.combinations(range(channels), b)))
    exact = sum(len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in pairs) / len(pairs)
    assert chance_jaccard(channels, a, b) == pytest.approx(exact, abs=1e-12)


def test_figures_are_png(results):
    acc, plans, base, out = results
    compare(acc, plans, base, out)
    for name in ("pareto.png", "jaccard.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))


def test_cli(results):
    acc, plans, base, out = results
    args = ["compare", "--acc", *map(str, acc), "--plans", *map(str, plans), "--baseline", str(base), "--out-dir", str(out)]
    assert main(args) == 0
    assert {p.name for p in out.iterdir()} == {"table.csv", "table.md", "pareto.png", "jaccard.csv", "jaccard.md", "jaccard.png"}


def test_no_comparison_runs_is_a_one_line_error(results, capsys):
    acc, plans, base, out = results
    rates_only = [p for p in acc if "rates30" in str(p)]
    with pytest.raises(FmpruneError) as err:
        compare(rates_only, plans, base, out)
    assert "\n" not in str(err.value) and "target_reduction or target_macs" in str(err.value)
    assert main(["compare", "--acc", *map(str, rates_only), "--baseline", str(base), "--out-dir", str(out)]) == 2
    assert capsys.readouterr().err.startswith("fmprune: error: no comparison runs")
