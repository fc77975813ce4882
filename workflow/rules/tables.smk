# Summary of every run in the config: accuracy (mean ± std over seeds), params and MACs with reductions.


rule summary_table:
    input:
        acc=run_targets(),
        baselines=expand("results/{model}/baseline/acc.json", model=config["models"]),
    output:
        csv=report("results/tables/summary.csv", caption="../report/summary.rst", category="Summary"),
        md="results/tables/summary.md",
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
        csv=f"results/tables/paper-{config['table_name']}.csv",
        md=f"results/tables/paper-{config['table_name']}.md",
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
        "plans": [f"results/{w.model}/{method}/{plan}/plan.json" for method, plan in points],
        "baseline": f"results/{w.model}/baseline/acc.json",
    }


rule compare:
    input:
        unpack(compare_inputs),
    output:
        csv=report("results/compare/{model}/table.csv", caption="../report/compare_table.rst",
                   category="Equal-cost comparison", subcategory="{model}"),
        md="results/compare/{model}/table.md",
        pareto=report("results/compare/{model}/pareto.png", caption="../report/pareto.rst",
                      category="Equal-cost comparison", subcategory="{model}"),
        jaccard=report("results/compare/{model}/jaccard.png", caption="../report/jaccard.rst",
                       category="Equal-cost comparison", subcategory="{model}"),
        jaccard_csv=report("results/compare/{model}/jaccard.csv", caption="../report/jaccard_csv.rst",
                           category="Equal-cost comparison", subcategory="{model}"),
        jaccard_md="results/compare/{model}/jaccard.md",
    localrule: True
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} compare --acc {input.acc} --plans {input.plans} --baseline {input.baseline} "
        "--out-dir results/compare/{wildcards.model}"
