"""The pipeline through a real SLURM: a single-node cluster on loopback (Debian's slurmctld,
slurmd and munge), driven by `snakemake --profile profiles/slurm` exactly as on a cluster, plus
this cluster's overrides (no accounting: status by squeue; short status-check intervals).

Needs root and the Debian packages slurmctld, slurmd, slurm-client and munge (.ci/run installs
them); skips otherwise, and also where a SLURM is already configured or running on the machine
(it is never touched). The daemons are stopped by their pids when the test ends, also on failure.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SLURM_CONF = Path("/etc/slurm/slurm.conf")  # the path srun inside the jobs reads
GRES_CONF = Path("/etc/slurm/gres.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
MARKER = "# written by fmprune tests/test_slurm.py"
PROGRAMS = ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to start slurmctld, slurmd and munged"
    missing = [p for p in PROGRAMS if _which(p) is None]
    if missing:
        return (f"SLURM is not installed here (missing {', '.join(missing)}): "
                "apt-get install slurmctld slurmd slurm-client munge")
    for conf in (SLURM_CONF, GRES_CONF):
        if conf.exists() and MARKER not in conf.read_text(errors="replace"):
            return f"{conf} exists and is not this test's: a real SLURM configuration is left alone"
    running = subprocess.run(["pgrep", "-x", "slurmctld|slurmd"], capture_output=True, text=True).stdout.split()
    if running:
        return f"slurmctld/slurmd already running (pids {', '.join(running)})"
    return None


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_for(check, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            detail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"timed out waiting for {what}\n{detail}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM on 127.0.0.1: partitions `cpu` (default) and `gpu` (the profile's names)
    on the same node, one fake GPU (gres on /dev/null), no accounting."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    os.chmod(state, 0o755)
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    started: list[subprocess.Popen] = []
    written: list[Path] = []
    scratch: list[Path] = []
    try:
        # munge: the key (mungekey -c), and munged as the munge user unless one already answers.
        if not MUNGE_KEY.exists():
            subprocess.run([_which("mungekey"), "-c", "-k", str(MUNGE_KEY)], check=True)
            shutil.chown(MUNGE_KEY, "munge", "munge")
            written.append(MUNGE_KEY)
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode != 0:
            munge_dir = Path(tempfile.mkdtemp(prefix="fmprune-munge-"))  # pytest's tmp is root-only
            scratch.append(munge_dir)
            for folder in (Path("/run/munge"), munge_dir):
                folder.mkdir(parents=True, exist_ok=True)
                shutil.chown(folder, "munge", "munge")
            munged_log = munge_dir / "munged.log"
            started.append(subprocess.Popen(
                [_which("munged"), "-F", "--force", "--log-file", str(munged_log), "--pid-file",
                 str(munge_dir / "munged.pid")],
                user="munge", group="munge", start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
            _wait_for(lambda: subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0,
                      20, "munged", munged_log)
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        # 4 CPUs declared on a 2-core machine (config_overrides): two 2-thread jobs at once.
        SLURM_CONF.write_text(f"""{MARKER}
ClusterName=fmprunetest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=600
KillWait=10
SchedulerParameters=sched_interval=5
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs=4 RealMemory=16000 Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
""")
        written.append(SLURM_CONF)
        GRES_CONF.write_text(f"{MARKER}\nNodeName={node} Name=gpu File=/dev/null\n")
        written.append(GRES_CONF)
        for daemon, extra in (("slurmctld", ["-i"]), ("slurmd", [])):
            started.append(subprocess.Popen([_which(daemon), "-D", *extra], start_new_session=True,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        idle = lambda: "idle" in subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True).stdout
        _wait_for(idle, 60, "the node to come up idle", state / "slurmctld.log")
        yield {"node": node, "state": state}
    finally:
        # Jobs first (their slurmstepd processes belong to them), then the daemons, by pid.
        if any(p.args[0].endswith("slurmctld") and p.poll() is None for p in started):
            subprocess.run(["scancel", "--full", "--state=RUNNING"], capture_output=True)
            subprocess.run(["scancel", "--state=PENDING"], capture_output=True)
            try:
                _wait_for(lambda: not subprocess.run(["squeue", "-h", "-t", "PD,R,CG"], capture_output=True,
                                                     text=True).stdout.strip(), 30, "jobs to end")
            except RuntimeError:
                pass
        for proc in reversed(started):
            _stop(proc)
        for path in written:
            path.unlink(missing_ok=True)
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)


def _tiny_config(path: Path) -> None:
    """The embedded default, cut down: one method (hrank: it needs the extraction), one plan,
    1 baseline epoch and 1 fine-tuning epoch on 128 images, a 32-image sample."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["methods"] = ["hrank"]
    model = cfg["models"]["resnet20"]
    model["plans"] = {"rates30": model["plans"]["rates30"]}
    cfg["features"]["samples"] = 32
    cfg["recipes"]["digits-baseline"].update(epochs=1, train_subset=128)
    cfg["recipes"]["digits-finetune"].update(epochs=1, train_subset=128)
    cfg["seeds"] = [0]
    path.write_text(yaml.safe_dump(cfg))


@pytest.mark.slow
def test_pipeline_runs_through_slurm_with_the_profile(slurm_cluster, tmp_path):
    _tiny_config(tmp_path / "c.yaml")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--profile", str(REPO / "profiles" / "slurm"),
           # this cluster: no accounting (status by squeue; no account: the profile sets none), a fast
           # local filesystem, short polling, no retries (fail fast), logs kept for the checks below
           "--slurm-status-command", "squeue", "--slurm-no-account",
           "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
           "--latency-wait", "5", "--retries", "0", "--jobs", "4", "--slurm-keep-successful-logs",
           "results/resnet20/hrank/acc.json", "--configfile", str(tmp_path / "c.yaml")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]

    acc = json.loads((tmp_path / "results/resnet20/hrank/acc.json").read_text())
    for key in ("top1", "top5", "top1_best", "best_epoch", "top1_before_finetune", "params", "macs", "flops",
                "baseline", "params_reduction_pct", "macs_reduction_pct", "method", "plan", "seed", "epochs",
                "provenance"):
        assert key in acc, key
    assert acc["method"] == "hrank" and acc["plan"] == "rates30" and acc["epochs"] == 1

    # Every non-local job went through sbatch: one SLURM job id per rule, its log kept by the plugin,
    # and SLURM's own record (squeue keeps finished jobs for MinJobAge) of partition, GPU and state.
    submitted = dict((rule, int(jobid)) for jobid, rule in re.findall(
        r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", out))
    rules = {"baseline", "evaluate_baseline", "extract", "score", "plan", "prune", "finetune"}
    assert set(submitted) == rules, out[-3000:]
    for rule, jobid in submitted.items():
        logs = list((tmp_path / ".snakemake/slurm_logs" / f"rule_{rule}").glob(f"*/{jobid}.log"))
        assert logs and "Finished jobid" in logs[0].read_text(), rule
    jobs = {}
    for line in subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True).stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        jobs[int(fields["JobId"])] = fields
    for rule, jobid in submitted.items():
        job = jobs[jobid]
        assert job["JobState"] == "COMPLETED", (rule, job)
        gpu_rule = rule in ("baseline", "extract", "finetune")
        assert job["Partition"] == ("gpu" if gpu_rule else "cpu"), (rule, job["Partition"])
        assert ("gpu" in job.get("TresPerJob", "")) == gpu_rule, (rule, job.get("TresPerJob"))
