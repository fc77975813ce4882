# Summary of every run in the config: accuracy (mean ± std over seeds), params and MACs with reductions.


rule summary_table:
    input:
        acc=run_targets(),
        baselines=expand("results/{model}/baseline/acc.json", model=config["models"]),
    output:
        csv="results/tables/summary.csv",
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
