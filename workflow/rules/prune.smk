# Operating point -> kept indices per channel group -> a physically smaller model.


rule plan:
    input:
        paths.SCORES,
    output:
        paths.PLAN,
    log:
        paths.PLAN_LOG,
    params:
        fingerprint=lambda w: fingerprints.plan(config, w.model, w.method, w.plan),
    # a time target times its candidates on this many pinned threads: Snakemake runs it beside
    # nothing that would take them
    threads: lambda w: model_cfg(w)["plans"][w.plan].get("threads", 1)
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
        model=paths.BASELINE_MODEL,
        plan=paths.PLAN,
    output:
        model=paths.PRUNED_MODEL,
        report=paths.PRUNED_REPORT,
    log:
        paths.PRUNE_LOG,
    params:
        fingerprint=lambda w: fingerprints.pruned(config, w.model, w.method, w.plan),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} prune --config {CFG} --model {wildcards.model} --model-file {input.model} "
        "--plan-file {input.plan} --out {output.model} --report {output.report} > {log} 2>&1"
