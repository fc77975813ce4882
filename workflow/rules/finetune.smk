# Resumable fine-tuning of a pruned model; acc.json per seed, and the default operating point.


def finetune_inputs(w):
    inputs = {
        "pruned": f"results/{w.model}/{w.method}/{w.plan}/pruned.pt",
        "pruned_report": f"results/{w.model}/{w.method}/{w.plan}/pruned.json",
        "baseline_report": f"results/{w.model}/baseline/acc.json",
    }
    if needs_features(w.model, w.method):
        inputs["features"] = f"results/{w.model}/features.h5"
    return inputs


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        acc="results/{model}/{method}/{plan}/seed{seed}/acc.json",
        model="results/{model}/{method}/{plan}/seed{seed}/model.pt",
        log_csv="results/{model}/{method}/{plan}/seed{seed}/log.csv",
    log:
        "results/{model}/{method}/{plan}/seed{seed}/finetune.log",
    params:
        fingerprint=lambda w: fingerprint(finetune_recipe(w)),
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
        lambda w: (f"results/{w.model}/{w.method}/{model_cfg(w)['default_plan']}/"
                   f"seed{plan_seeds(config, w.model, model_cfg(w)['default_plan'])[0]}/acc.json"),
    output:
        "results/{model}/{method}/acc.json",
    localrule: True
    run:
        from fmprune.pipeline import publish_default

        publish_default(Path(input[0]), Path(output[0]))
