# One pass over the fixed sample writes every tap the model's methods need; one scores file per
# method. FP-FMC's three steps are rules of their own, so a K file can be inspected and reused.


rule extract:
    input:
        "results/{model}/baseline/model.pt",
    output:
        "results/{model}/features.h5",
    log:
        "results/{model}/features.log",
    params:
        fingerprint=lambda w: fingerprint(config["features"], sorted({tap_kind(m) or "" for m in model_methods(config, w.model)})),
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
    inputs = {"model": f"results/{w.model}/baseline/model.pt"}
    if needs_features(w.model, w.method):
        inputs["features"] = f"results/{w.model}/features.h5"
    return inputs


rule score:
    input:
        unpack(score_inputs),
    output:
        "results/{model}/scores/{method}.npz",
    log:
        "results/{model}/scores/{method}.log",
    wildcard_constraints:
        method="|".join(m for m in METHODS if m != "fpfmc"),
    params:
        fingerprint=lambda w: fingerprint(config["method_params"].get(w.method, {})),
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
        "results/{model}/features.h5",
    output:
        "results/{model}/fpfmc/kselect.h5",
    log:
        "results/{model}/fpfmc/kselect.log",
    params:
        fingerprint=lambda w: fingerprint(config["method_params"].get("fpfmc", {})),
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
        "results/{model}/fpfmc/kselect.h5",
    output:
        "results/{model}/fpfmc/labels.h5",
    log:
        "results/{model}/fpfmc/cluster.log",
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} fpfmc-cluster --config {CFG} --model {wildcards.model} --kselect {input} --out {output} > {log} 2>&1"


rule fpfmc_sort:
    input:
        "results/{model}/fpfmc/labels.h5",
    output:
        "results/{model}/scores/fpfmc.npz",
    log:
        "results/{model}/fpfmc/sort.log",
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/fmprune.yaml"
    shell:
        "{FMPRUNE} fpfmc-sort --config {CFG} --model {wildcards.model} --labels {input} --out {output} > {log} 2>&1"
