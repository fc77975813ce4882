# The baseline: a given checkpoint (hash-checked, loaded strictly) or one trained by its recipe.


rule baseline:
    output:
        "results/{model}/baseline/model.pt",
    log:
        "results/{model}/baseline/baseline.log",
    params:
        fingerprint=lambda w: fingerprint(baseline_cfg(w), config["datasets"][model_cfg(w)["dataset"]],
                                          config["recipes"].get(model_cfg(w)["baseline_recipe"])),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=600,
        gpu=lambda w: 0 if "checkpoint" in model_cfg(w) else config["recipes"][model_cfg(w)["baseline_recipe"]]["gpus"],
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} baseline --config {CFG} --model {wildcards.model} --out {output} "
        "--workdir results/{wildcards.model}/baseline/train > {log} 2>&1"


rule evaluate_baseline:
    input:
        "results/{model}/baseline/model.pt",
    output:
        "results/{model}/baseline/acc.json",
    log:
        "results/{model}/baseline/evaluate.log",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} evaluate --config {CFG} --model {wildcards.model} --model-file {input} --out {output} > {log} 2>&1"
