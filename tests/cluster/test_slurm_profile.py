"""profiles/slurm on a real SLURM cluster, and its GPU requests checked without GPUs.

Marked `cluster` (deselected by the plain `pytest` run through pyproject's addopts): they need the single-node
cluster of `.ci/slurm.sh up` and snakemake-executor-plugin-slurm (`pip install -e ".[test,slurm]"`). `.ci/run`
runs them as `.ci/slurm.sh run python -m pytest -m cluster tests/cluster`.

The cluster run: the tiny config's `cluster_check` table (tests/cluster/tiny_cluster.yaml) through the shipped
profile adapted the way a user would (tests/cluster/local_profile.yaml); its training job is cancelled with scancel
after its first checkpoint. Compared with a local run of the same config in another copy of the workflow.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT, copy_workflow

pytestmark = pytest.mark.cluster

HERE = Path(__file__).parent
TARGET = "cluster_check"
CONFIG_ARGS = ["--configfile", "configs/tiny.yaml", "tiny_cluster.yaml"]
TRAIN_DIR = Path("results/tiny/models/representation")
TRAIN_LOG = Path("logs/tiny/train_representation/representation.log")
ACCOUNT, PARTITION = "longtail_ci", "batch"  # .ci/slurm.sh
RUN_TIMEOUT_S = 1800


def merge(base: dict, overlay: dict) -> dict:
    """``base`` with ``overlay`` merged in: mappings key by key, a None value removes the key."""
    merged = dict(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def shipped_profile() -> dict:
    return yaml.safe_load((REPO_ROOT / "profiles" / "slurm" / "config.yaml").read_text())


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


def _new_copy(folder: Path) -> Path:
    """A fresh copy of the workflow with the cluster check's config overlay."""
    folder.mkdir()
    copy_workflow(folder)
    shutil.copy(HERE / "tiny_cluster.yaml", folder / "tiny_cluster.yaml")
    return folder


def _require_cluster() -> None:
    """Fail (not skip) with the fix when no cluster answers."""
    if shutil.which("sinfo") is None:
        pytest.fail("no SLURM client here: run the cluster tests under `.ci/slurm.sh run python -m pytest -m cluster "
                    "tests/cluster` (it installs and starts a single-node SLURM)")
    state = _run(["sinfo", "-h", "-N", "-o", "%T"])
    if state.returncode != 0 or not re.match(r"(idle|mixed|allocated)", state.stdout.strip()):
        pytest.fail(f"the SLURM node is not up ({state.stdout.strip() or state.stderr.strip()}): run "
                    "`.ci/slurm.sh up` first")


def _sacct(run_id: str) -> list[dict]:
    """The run's jobs as accounting recorded them (the plugin names every job after the run id)."""
    start = f"{datetime.now() - timedelta(hours=2):%Y-%m-%dT%H:%M}"
    out = _run(["sacct", "-X", "-P", "-n", "--name", run_id, "--starttime", start,
                "--format=JobIDRaw,State,Comment,Account,Partition,ExitCode"])
    assert out.returncode == 0, out.stderr
    keys = ("id", "state", "comment", "account", "partition", "exit_code")
    return [dict(zip(keys, line.split("|"))) for line in out.stdout.splitlines() if line]


def _cancel_training_after_its_first_checkpoint(copy: Path, proc: subprocess.Popen) -> str:
    """scancel the SLURM job of train_representation once its first checkpoint is on disk; its job id."""
    checkpoint = copy / TRAIN_DIR / "checkpoints" / "last.pth"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not checkpoint.exists():
        assert proc.poll() is None, "the cluster run ended before the training job wrote a checkpoint"
        assert time.monotonic() < deadline, "no training checkpoint within the time limit"
        time.sleep(0.1)
    queue = _run(["squeue", "-h", "-o", "%i|%k"]).stdout.splitlines()
    running = [line.split("|")[0] for line in queue if line.split("|")[1].startswith("rule_train_representation")]
    assert running, ("the training job ended before it could be cancelled: give it more iterations "
                     "(train.max_iterations in tests/cluster/tiny_cluster.yaml)")
    assert len(running) == 1, f"expected one training job in the queue, got {queue}"
    assert _run(["scancel", running[0]]).returncode == 0
    return running[0]


@dataclass
class ClusterRun:
    local: Path       # the local reference run's copy
    copy: Path        # the cluster run's copy
    returncode: int
    output: str       # Snakemake's log of the cluster run
    run_id: str
    cancelled: str    # the SLURM job id cancelled mid-training
    jobs: list[dict]  # sacct's records of the run
    minutes: float


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory: pytest.TempPathFactory) -> ClusterRun:
    _require_cluster()
    root = tmp_path_factory.mktemp("cluster")
    local = _new_copy(root / "local")
    result = subprocess.run(["snakemake", TARGET, "--cores", "2", *CONFIG_ARGS], cwd=local, capture_output=True,
                            text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    copy = _new_copy(root / "cluster")
    profile = merge(shipped_profile(), yaml.safe_load((HERE / "local_profile.yaml").read_text()))
    (copy / "profiles" / "slurm" / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    start = time.monotonic()
    log_path = root / "cluster.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(["snakemake", TARGET, "--profile", "profiles/slurm", *CONFIG_ARGS], cwd=copy,
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            cancelled = _cancel_training_after_its_first_checkpoint(copy, proc)
            proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=120)
    output = log_path.read_text()
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    return ClusterRun(local, copy, proc.returncode, output, run_id, cancelled, _sacct(run_id),
                      (time.monotonic() - start) / 60)


def _job_stats(output: str) -> Counter:
    """Snakemake's 'Job stats' table: jobs per rule."""
    table = output[output.index("Job stats:"):].split("\n\n")[0].splitlines()[3:]
    return Counter({name: int(count) for name, count in (row.split() for row in table) if name != "total"})


def declared_local_rules() -> set[str]:
    """The rules of rules/*.smk marked ``localrule: True``."""
    names: set[str] = set()
    for path in (REPO_ROOT / "rules").glob("*.smk"):
        rule = None
        for line in path.read_text().splitlines():
            match = re.match(r"rule (\w+):", line)
            if match:
                rule = match.group(1)
            elif line.strip() == "localrule: True" and rule is not None:
                names.add(rule)
    return names


def test_every_job_ran_as_a_slurm_job(cluster_run):
    assert cluster_run.returncode == 0, cluster_run.output[-5000:]
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S+/rule_(\w+?)/",
                           cluster_run.output)
    local_rules = Counter(re.findall(r"^localrule (\w+):", cluster_run.output, re.MULTILINE))
    expected = _job_stats(cluster_run.output) - local_rules
    expected["train_representation"] += 1  # the retry of the cancelled job
    assert Counter(rule for _, rule in submitted) == expected
    # the rules declared `localrule: True` (the README's cheap ones, the analysis figures) ran on the submit host
    assert {"ablation_table", TARGET} <= set(local_rules) <= declared_local_rules() | {TARGET}
    by_id = {job["id"]: job for job in cluster_run.jobs}
    assert set(by_id) == {job_id for job_id, _ in submitted}
    for job_id, rule in submitted:
        job = by_id[job_id]
        assert job["comment"].startswith(f"rule_{rule}"), job
        assert (job["account"], job["partition"]) == (ACCOUNT, PARTITION), job
        assert job["state"] == ("COMPLETED" if job_id != cluster_run.cancelled else "CANCELLED by 0"), job


def test_logs_and_benchmarks_land_where_the_readme_says(cluster_run):
    def files(root: Path, folder: str) -> set[str]:
        return {str(p.relative_to(root)) for p in (root / folder).rglob("*") if p.is_file()}

    for folder in ("logs/tiny", "benchmarks/out/tiny"):
        assert files(cluster_run.copy, folder) == files(cluster_run.local, folder) != set()
    for tsv in (cluster_run.copy / "benchmarks/out/tiny").rglob("*.tsv"):
        assert tsv.read_text().startswith("s\th:m:s\tmax_rss"), tsv
    # the plugin keeps the SLURM log of a failed job only: .snakemake/slurm_logs/rule_RULE/WILDCARDS/JOBID.log
    slurm_logs = cluster_run.copy / ".snakemake" / "slurm_logs"
    kept = {str(p.relative_to(slurm_logs)) for p in slurm_logs.rglob("*.log")}
    assert kept == {f"rule_train_representation/tiny_representation/{cluster_run.cancelled}.log"}


def test_tables_equal_the_local_run(cluster_run):
    for suffix in ("csv", "md"):
        table = Path(f"results/tiny/tables/{TARGET}.{suffix}")
        assert (cluster_run.copy / table).read_text() == (cluster_run.local / table).read_text()


def test_the_cancelled_training_job_is_retried_and_resumes_from_its_checkpoint(cluster_run):
    assert "CANCELLED" in cluster_run.output and "Trying to restart job" in cluster_run.output
    resumed = re.search(r"resuming from \S+last\.pth at iteration (\d+)", (cluster_run.copy / TRAIN_LOG).read_text())
    assert resumed, "the retried job did not resume from the checkpoint"
    assert int(resumed.group(1)) >= 1
    # resume is exact on CPU: the interrupted and resumed run ends with the local run's weights, bit for bit
    ours = torch.load(cluster_run.copy / TRAIN_DIR / "model_final.pth", map_location="cpu", weights_only=False)
    reference = torch.load(cluster_run.local / TRAIN_DIR / "model_final.pth", map_location="cpu", weights_only=False)
    ours, reference = ours.get("model", ours), reference.get("model", reference)
    assert ours.keys() == reference.keys()
    for name in reference:
        assert torch.equal(ours[name], reference[name]), name


# --- the GPU side, without GPUs ---------------------------------------------------------------------------------

FAKE_SBATCH = """#!/bin/sh
# records its arguments (NUL-separated) instead of submitting
printf '%s\\0' "$@" > "$CAPTURE"
echo "sbatch: error: not submitted: captured by tests/cluster" >&2
exit 1
"""
FAKE_SACCTMGR = "#!/bin/sh\necho my_account\n"   # the shipped profile's account is valid
FAKE_TORCHRUN = """#!/bin/sh
printf '%s\\0' "$@" > "$CAPTURE"
exit 1
"""


def _fake_bin(folder: Path, **scripts: str) -> dict[str, str]:
    """An environment whose PATH starts with ``folder`` holding the given scripts."""
    folder.mkdir()
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}", "CAPTURE": str(folder / "args")}


def _option_pairs(args: list[str]) -> dict[str, str]:
    """sbatch's '-X value' and '--name value' / '--name=value' options."""
    options = {}
    for i, arg in enumerate(args):
        if arg.startswith("-") and "=" in arg:
            name, value = arg.split("=", 1)
            options[name] = value
        elif arg.startswith("-") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            options[arg] = args[i + 1]
    return options


@pytest.fixture(scope="module")
def finished_copy(cluster_run, tmp_path_factory) -> Path:
    """A copy of the local run (inputs of every job present), for submitting single jobs."""
    return shutil.copytree(cluster_run.local, tmp_path_factory.mktemp("gpu") / "copy", symlinks=True)


def test_the_training_job_asks_slurm_for_the_profiles_gpus(finished_copy, tmp_path):
    """The shipped profile, unchanged: the sbatch call the plugin builds for train_representation."""
    env = _fake_bin(tmp_path / "bin", sbatch=FAKE_SBATCH, sacctmgr=FAKE_SACCTMGR)
    result = _run(["snakemake", str(TRAIN_DIR / "model_final.pth"), "--profile", "profiles/slurm", *CONFIG_ARGS,
                   "--forcerun", "train_representation", "--retries", "0"], cwd=finished_copy, env=env)
    args = (tmp_path / "bin" / "args").read_text().split("\0")[:-1]
    assert result.returncode != 0 and "not submitted: captured" in result.stdout + result.stderr
    options = _option_pairs(args)
    profile = shipped_profile()["set-resources"]["train_representation"]
    assert options["-p"] == profile["slurm_partition"] == "gpu"
    assert options["-A"] == "my_account"
    assert options["--gpus"] == f"{profile['gpu_model']}:{profile['gpu']}" == "a100:4"
    assert options["--cpus-per-gpu"] == str(profile["cpus_per_gpu"]) == "8"
    assert "--cpus-per-task" not in options  # it would replace --cpus-per-gpu
    assert options["--mem"] == str(profile["mem_mb"]) == "256000"
    assert options["-t"] == str(profile["runtime"]) == "2880"
    assert options["--comment"] == "rule_train_representation_wildcards_tiny_representation"
    # inside the job, Snakemake runs the rule (jobstep executor) with the profile's resources and threads, so the
    # rule's shell sees gpu=4 (torchrun, next test)
    wrap = options["--wrap"]
    assert "--executor slurm-jobstep" in wrap and "--allowed-rules train_representation" in wrap
    passed = {base64.b64decode(token).decode() for token in re.findall(r"base64//(\S+)", wrap)}
    assert {"train_representation:gpu=4", "train_representation:gpu_model=a100", "train_representation=32"} <= passed


def test_a_four_gpu_training_job_launches_torchrun_with_four_processes(finished_copy, tmp_path):
    """The rule's shell under the shipped profile's resources (gpu: 4), run locally with a recording torchrun."""
    env = _fake_bin(tmp_path / "bin", torchrun=FAKE_TORCHRUN)
    result = _run(["snakemake", str(TRAIN_DIR / "model_final.pth"), "--profile", "profiles/slurm", *CONFIG_ARGS,
                   "--executor", "local", "--cores", "2", "--forcerun", "train_representation", "--retries", "0"],
                  cwd=finished_copy, env=env)
    assert result.returncode != 0  # the recording torchrun trains nothing
    args = (tmp_path / "bin" / "args").read_text().split("\0")[:-1]
    assert args[:3] == ["--standalone", "--nproc_per_node=4", "workflow_scripts/train.py"]
    options = _option_pairs(args[2:])
    assert options["--out-dir"] == str(TRAIN_DIR)
    assert options["--threads"] == "2"  # the profile's 32, capped by --cores 2
