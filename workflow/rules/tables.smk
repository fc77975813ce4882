# Summary of every run in the config: accuracy (mean ± std over seeds), params and MACs with reductions.


rule summary_table:
    input:
        acc=run_targets(),
        baselines=expand("results/{model}/baseline/acc.json", model=config["models"]),
    output:
        csv="results/tables/summary.csv",
        md="results/tables/summary.md",
    localrule: True
    shell:
        "{FMPRUNE} table --acc {input.acc} --baselines {input.baselines} --csv {output.csv} --md {output.md}"
