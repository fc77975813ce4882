# Operating point -> kept indices per channel group -> a physically smaller model.


rule plan:
    input:
        "results/{model}/scores/{method}.npz",
    output:
        "results/{model}/{method}/{plan}/plan.json",
    log:
        "results/{model}/{method}/{plan}/plan.log",
    params:
        fingerprint=lambda w: fingerprint(model_cfg(w)["plans"][w.plan]),
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} plan --config {CFG} --model {wildcards.model} --plan {wildcards.plan} --scores {input} "
        "--out {output} > {log} 2>&1"


rule prune:
    input:
        model="results/{model}/baseline/model.pt",
        plan="results/{model}/{method}/{plan}/plan.json",
    output:
        model="results/{model}/{method}/{plan}/pruned.pt",
        report="results/{model}/{method}/{plan}/pruned.json",
    log:
        "results/{model}/{method}/{plan}/prune.log",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} prune --config {CFG} --model {wildcards.model} --model-file {input.model} "
        "--plan-file {input.plan} --out {output.model} --report {output.report} > {log} 2>&1"
