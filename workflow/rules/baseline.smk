# The baseline: a given checkpoint (hash-checked, loaded strictly) or one trained by its recipe.


rule baseline:
    output:
        paths.BASELINE_MODEL,
    log:
        paths.BASELINE_LOG,
    params:
        fingerprint=lambda w: fingerprints.baseline(config, w.model),
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
        paths.BASELINE_MODEL,
    output:
        paths.BASELINE_ACC,
    log:
        paths.BASELINE_EVALUATE_LOG,
    params:
        fingerprint=lambda w: fingerprints.baseline_evaluation(config, w.model),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} evaluate --config {CFG} --model {wildcards.model} --model-file {input} --out {output} > {log} 2>&1"
