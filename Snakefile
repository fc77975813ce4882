# fmprune: feature-map pruning, from extraction to tables. Thin on purpose: the config is
# validated against workflow/schemas/config.schema.yaml, and each stage lives in workflow/rules/.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))
from fmprune.config import ConfigError, validate

if not config:
    configfile: "config.yaml"

try:
    config = validate(config, strict=False)  # a missing dataset root only warns here (see fmprune.config)
except ConfigError as exc:
    print(f"fmprune: error: {exc}", file=sys.stderr)
    sys.exit(2)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/baseline.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/tables.smk"


for target in requested_targets():
    if problem := unknown_target(target):
        print(f"fmprune: error: {problem}", file=sys.stderr)
        sys.exit(2)


rule all:
    input:
        paths.SUMMARY_MD,
        default_targets(),
        compare_targets(),
