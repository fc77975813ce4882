# Resumable fine-tuning of a pruned model; acc.json per seed, and the default operating point.


def finetune_inputs(w):
    inputs = {
        "pruned": paths.PRUNED_MODEL.format(**w),
        "pruned_report": paths.PRUNED_REPORT.format(**w),
        "baseline_report": paths.BASELINE_ACC.format(**w),
    }
    if needs_features(w.model, w.method):
        inputs["features"] = paths.FEATURES.format(**w)
    return inputs


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        acc=paths.ACC,
        model=paths.RUN_MODEL,
        log_csv=paths.RUN_LOG_CSV,
    log:
        paths.FINETUNE_LOG,
    params:
        fingerprint=lambda w: fingerprints.run(config, w.model, w.method, w.plan),
        features=lambda w, input: f"--features {input.features}" if "features" in input.keys() else "",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=1440,
        gpu=lambda w: finetune_recipe(w)["gpus"],  # > 1: torchrun, one process per GPU
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} finetune --config {CFG} --model {wildcards.model} --method {wildcards.method} "
        "--plan {wildcards.plan} --seed {wildcards.seed} --pruned {input.pruned} "
        "--pruned-report {input.pruned_report} --baseline-report {input.baseline_report} {params.features} "
        "--out-dir results/{wildcards.model}/{wildcards.method}/{wildcards.plan}/seed{wildcards.seed} > {log} 2>&1"


rule default_operating_point:
    input:
        lambda w: paths.ACC.format(model=w.model, method=w.method, plan=model_cfg(w)["default_plan"],
                                   seed=plan_seeds(config, w.model, model_cfg(w)["default_plan"])[0]),
    output:
        paths.DEFAULT_ACC,
    params:
        fingerprint=lambda w: fingerprints.run(config, w.model, w.method, model_cfg(w)["default_plan"]),
    localrule: True
    # A shell command, not a `run:` block: Snakemake starts `run:` blocks with an unquoted
    # interpreter path, which breaks in a checkout whose path has a space.
    shell:
        "cp {input:q} {output:q}"
