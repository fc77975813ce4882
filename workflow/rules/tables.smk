# Summary of every run in the config: accuracy (mean ± std over seeds), params and MACs with reductions.


rule summary_table:
    input:
        acc=run_targets(),
        baselines=expand(paths.BASELINE_ACC, model=models_in_all()),
    output:
        csv=report(paths.SUMMARY_CSV, caption="../report/summary.rst", category="Summary"),
        md=paths.SUMMARY_MD,
    localrule: True
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} table --acc {input.acc} --baselines {input.baselines} --csv {output.csv} --md {output.md}"


# The published rows of paper_results.csv beside this config's results, whatever has run so far
# (nothing needs to: sizes of rate-list rows come from the plans alone). No file inputs, on
# purpose: naming acc.json files as inputs would make Snakemake schedule (re)training for a
# table. Instead its params carry a digest of every file it reads (present or not, with size and
# mtime), so with the default rerun triggers it is rebuilt exactly when one of them changed.
# Not part of `all`: request it (again) when runs finish.
from fmprune.tables import PAPER_RESULTS, paper_state


rule paper_table:
    output:
        csv=paths.PAPER_TABLE_CSV.format(table_name=config["table_name"]),
        md=paths.PAPER_TABLE_MD.format(table_name=config["table_name"]),
    params:
        state=lambda w: paper_state(config, PAPER_RESULTS, Path("results")),
    localrule: True
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} paper-table --config {CFG} --csv {output.csv} --md {output.md}"


# The equal-cost comparison of a model with a `compare` block: its eq<P> / native<P> plans (every
# method at the same widths; CDP / RGD also by their own knob), all seeds, plus kept-set agreement.
def compare_inputs(w):
    points = operating_points(w.model, compare_plans(config, w.model))
    return {
        "acc": acc_targets(w.model, points),
        "plans": [paths.PLAN.format(model=w.model, method=method, plan=plan) for method, plan in points],
        "baseline": paths.BASELINE_ACC.format(**w),
    }


rule compare:
    input:
        unpack(compare_inputs),
    output:
        csv=report(paths.COMPARE_TABLE_CSV, caption="../report/compare_table.rst",
                   category="Equal-cost comparison", subcategory="{model}"),
        md=paths.COMPARE_TABLE_MD,
        pareto=report(paths.COMPARE_PARETO, caption="../report/pareto.rst",
                      category="Equal-cost comparison", subcategory="{model}"),
        jaccard=report(paths.COMPARE_JACCARD_PNG, caption="../report/jaccard.rst",
                       category="Equal-cost comparison", subcategory="{model}"),
        jaccard_csv=report(paths.COMPARE_JACCARD_CSV, caption="../report/jaccard_csv.rst",
                           category="Equal-cost comparison", subcategory="{model}"),
        jaccard_md=paths.COMPARE_JACCARD_MD,
    localrule: True
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} compare --acc {input.acc} --plans {input.plans} --baseline {input.baseline} "
        "--out-dir results/compare/{wildcards.model}"
