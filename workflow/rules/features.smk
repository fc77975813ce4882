# One pass over the fixed sample writes every tap the model's methods need (and, for Taylor, one
# backward pass its terms); one scores file per method. FP-FMC's three steps are rules of their
# own, so a K file can be inspected and reused.


rule extract:
    input:
        paths.BASELINE_MODEL,
    output:
        paths.FEATURES,
    log:
        paths.FEATURES_LOG,
    params:
        fingerprint=lambda w: fingerprints.features(config, w.model),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} extract --config {CFG} --model {wildcards.model} --model-file {input} --out {output} > {log} 2>&1"


def score_inputs(w):
    inputs = {"model": paths.BASELINE_MODEL.format(**w)}
    if needs_features(w.model, w.method):
        inputs["features"] = paths.FEATURES.format(**w)
    return inputs


rule score:
    input:
        unpack(score_inputs),
    output:
        paths.SCORES,
    log:
        paths.SCORES_LOG,
    wildcard_constraints:
        method="|".join(m for m in METHODS if not rule_logs(m)),  # not those scored by rules of their own
    params:
        fingerprint=lambda w: fingerprints.scores(config, w.model, w.method),
        features=lambda w, input: f"--features {input.features}" if "features" in input.keys() else "",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} score --config {CFG} --model {wildcards.model} --method {wildcards.method} "
        "--model-file {input.model} {params.features} --out {output} > {log} 2>&1"


rule fpfmc_kselect:
    input:
        paths.FEATURES,
    output:
        paths.FPFMC_KSELECT,
    log:
        paths.FPFMC_KSELECT_LOG,
    params:
        fingerprint=lambda w: fingerprints.scores(config, w.model, "fpfmc"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} fpfmc-kselect --config {CFG} --model {wildcards.model} --features {input} --out {output} "
        "--threads {threads} > {log} 2>&1"


rule fpfmc_cluster:
    input:
        paths.FPFMC_KSELECT,
    output:
        paths.FPFMC_LABELS,
    log:
        paths.FPFMC_CLUSTER_LOG,
    params:
        fingerprint=lambda w: fingerprints.scores(config, w.model, "fpfmc"),
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} fpfmc-cluster --config {CFG} --model {wildcards.model} --kselect {input} --out {output} > {log} 2>&1"


rule fpfmc_sort:
    input:
        paths.FPFMC_LABELS,
    output:
        paths.SCORES.format(model="{model}", method="fpfmc"),
    log:
        paths.FPFMC_SORT_LOG,
    params:
        fingerprint=lambda w: fingerprints.scores(config, w.model, "fpfmc"),
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} fpfmc-sort --config {CFG} --model {wildcards.model} --labels {input} --out {output} > {log} 2>&1"
