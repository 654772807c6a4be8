"""`atomfm plan` against DeepSpeed's own estimators, and `atomfm launch slurm`'s batch script.

The batch script is checked by ``bash -n`` and then run by bash for real, with stand-ins for srun, scontrol and
sbatch (not installed here) that record what they were given: the srun/torchrun line as SLURM would start it,
SIGUSR1 creating the run's STOP file and requeueing the job once the training exits 0, and SIGTERM (preemption)
leaving the batch shell waiting for the training.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from launch.cli import main as atomfm  # noqa: E402
from launch.memory_plan import ModelSize, model_states, parse_memory, plan_memory  # noqa: E402


@pytest.mark.parametrize(
    ("parameters", "largest", "gpus_per_node", "nodes"),
    [(1_562_719_162, 25_693_696, 8, 1), (1_562_719_162, 25_693_696, 8, 4), (20_600_000, 400_000, 1, 1)],
)
def test_model_states_differ_from_deepspeeds_estimators_by_the_fp32_weights_alone(
    parameters, largest, gpus_per_node, nodes
):
    """DeepSpeed counts 16-bit weights (stage 2: 2P + 18P/N, stage 3: 18P/N + 4L); atomfm keeps fp32 weights
    (stage 3 without a second fp32 copy): stage 2 is DeepSpeed's + 2P - 2P/N, stage 3 DeepSpeed's - 2P/N
    (DeepSpeed rounds down to whole bytes)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    n = gpus_per_node * nodes
    _, zero2 = estimate_zero2_model_states_mem_needs(parameters, gpus_per_node, nodes, cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(
        parameters, largest, gpus_per_node, nodes, cpu_offload=False, cpu_offload_params=False
    )
    stage2 = model_states(parameters, largest, 2, gpus_per_node, nodes)
    stage3 = model_states(parameters, largest, 3, gpus_per_node, nodes)
    assert (stage2.deepspeed_estimate, stage3.deepspeed_estimate) == (zero2, zero3)
    assert stage2.total == pytest.approx(zero2 + 2 * parameters - 2 * parameters / n, abs=1)
    assert stage3.total == pytest.approx(zero3 - 2 * parameters / n, abs=1)
    assert model_states(parameters, largest, 0, gpus_per_node, nodes).total == 16 * parameters


def test_plan_for_xl_on_eight_80gb_gpus(capsys):
    assert atomfm(["plan", "--model", "xl", "--gpus", "8", "--gpu-memory", "80GB", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)  # stdout is the JSON alone (DeepSpeed's import logs to stderr)
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    parameters = plan["model"]["parameters"]
    assert 1.5e9 < parameters < 1.6e9
    assert plan["gpu_memory_bytes"] == 80 * 2**30
    _, zero2 = estimate_zero2_model_states_mem_needs(parameters, 8, 1, cpu_offload=False)
    assert plan["stages"][2]["deepspeed_estimate"] == zero2
    options = {(o["zero_stage"], o["activation_checkpointing"]): o["max_atoms"] for o in plan["options"]}
    assert options[(2, False)] < 1000 <= options[(2, True)]  # without checkpointing xl holds ~160 atoms
    assert options[(3, True)] > options[(2, True)] > options[(0, True)]
    r = plan["recommended"]
    assert (r["zero_stage"], r["activation_checkpointing"]) == (2, True)
    assert (
        "deepspeed.zero_stage=2" in plan["overrides"]
        and "model.activation_checkpointing=true" in plan["overrides"]
    )
    # conservative forces rule ZeRO-3 out (double backward) and hold far fewer atoms
    xl = ModelSize(**plan["model"])
    conservative = plan_memory(xl, gpus_per_node=8, gpu_memory_bytes=80 * 2**30, conservative=True)
    assert conservative.recommended.zero_stage < 3 and not conservative.fits_target
    assert conservative.recommended.max_atoms < options[(2, False)]


def test_plan_of_a_model_that_does_not_fit_exits_1(capsys):
    assert atomfm(["plan", "--model", "small", "--gpus", "1", "--gpu-memory", "200MiB"]) == 1
    assert "small does not fit" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--model", "xxl", "--gpus", "8", "--gpu-memory", "80GB"], "--model: unknown size 'xxl'"),
        (
            ["--model", "xl", "--gpus", "8", "--gpu-memory", "80XB"],
            "--gpu-memory: '80XB' is not a memory size",
        ),
        (
            ["--model", "xl", "--gpus", "0", "--gpu-memory", "80GB"],
            "--gpus: '0' is not a positive whole number",
        ),
    ],
)
def test_plan_names_the_bad_argument(args, named, capsys):
    with pytest.raises(SystemExit) as stop:
        code = atomfm(["plan", *args])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and named in err and "Traceback" not in err


def test_memory_sizes():
    assert parse_memory("80GB") == parse_memory("80 GiB") == 80 * 2**30
    assert parse_memory("24000MiB") == 24000 * 2**20
    with pytest.raises(ValueError, match="not a memory size"):
        parse_memory("-3GB")


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(
        f"run: {{name: slurm test, out_dir: {tmp_path / 'run'}}}\n"
        f"data: {{corpus: [{tmp_path / 'corpus'}]}}\n"
        "tasks: {denoise: {}}\n"
    )
    return path


def fake_commands(folder: Path) -> Path:
    """srun, scontrol and sbatch stand-ins that append their arguments to <name>.args, one per line."""
    folder.mkdir()
    scripts = {
        # the training: record the command, then run until the STOP file appears (as the trainer does) and exit 0
        "srun": 'printf "%s\\n" "$@" > "$FAKE_LOG/srun.tmp" && mv "$FAKE_LOG/srun.tmp" "$FAKE_LOG/srun.args"\n'
        'until [ -e "$FAKE_STOP" ]; do sleep 0.05; done\nexit 0\n',
        "scontrol": 'printf "%s\\n" "$@" >> "$FAKE_LOG/scontrol.args"\n'
        '[ "$1" = show ] && printf "node-a\\nnode-b\\n"\nexit 0\n',
        "sbatch": 'printf "%s\\n" "$@" > "$FAKE_LOG/sbatch.args"\necho "Submitted batch job 4242"\n',
    }
    for name, body in scripts.items():
        (folder / name).write_text("#!/bin/bash\n" + body)
        (folder / name).chmod(0o755)
    return folder


def wait_for_srun(job: subprocess.Popen, fakes: Path, timeout: float = 120) -> None:
    """Until the batch script has started the (stand-in) training."""
    deadline = time.monotonic() + timeout
    while not (fakes / "srun.args").exists():
        assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()
        time.sleep(0.05)


def test_slurm_script_runs_torchrun_per_node_and_checkpoints_on_sigusr1(tmp_path, capsys):
    config = write_config(tmp_path)
    script = tmp_path / "job.sbatch"
    odd = 'logging.project=it\'s a "quoted" name'
    args = [
        "launch",
        "slurm",
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--config",
        str(config),
        "optim.lr=3e-4",
        odd,
    ]
    assert atomfm([*args, "--env", "NCCL_SOCKET_IFNAME=ib0", "--out", str(script)]) == 0
    assert f"wrote {script}" in capsys.readouterr().out
    text = script.read_text()
    subprocess.run(["bash", "-n", str(script)], check=True)
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", "#SBATCH --job-name=slurm-test",
                 "export NCCL_SOCKET_IFNAME=ib0"):  # fmt: skip
        assert line in text.splitlines(), line

    fakes = fake_commands(tmp_path / "bin")
    run_dir = tmp_path / "run"
    env = dict(
        os.environ,
        PATH=f"{fakes}:{os.environ['PATH']}",
        FAKE_LOG=str(fakes),
        FAKE_STOP=str(run_dir / "STOP"),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="node-[a-b]",
        SLURM_NNODES="2",
    )
    job = subprocess.Popen(
        ["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for_srun(job, fakes)
    srun = (fakes / "srun.args").read_text().splitlines()
    assert srun == [
        "--kill-on-bad-exit=1", "--ntasks-per-node=1", sys.executable, "-m", "torch.distributed.run",
        "--nnodes=2", "--nproc-per-node=4", "--max-restarts=0",
        "--rdzv-id=4242", "--rdzv-backend=c10d", "--rdzv-endpoint=node-a:29500",
        "-m", "launch.cli", "train", "--config", str(config), "optim.lr=3e-4", odd,
    ]  # fmt: skip
    assert not (run_dir / "STOP").exists()
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends 300 s before the time limit
    out, _ = job.communicate(timeout=120)
    assert job.returncode == 0, out
    assert (run_dir / "STOP").exists()
    assert (fakes / "scontrol.args").read_text().splitlines()[-2:] == ["requeue", "4242"]

    # preemption: SIGTERM reaches every process; the batch shell waits for the training and does not requeue
    (fakes / "srun.args").unlink()
    env["FAKE_STOP"] = str(tmp_path / "checkpointed")
    job = subprocess.Popen(
        ["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for_srun(job, fakes)
    job.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert job.poll() is None, "the batch shell ended before the training"
    (tmp_path / "checkpointed").touch()
    out, _ = job.communicate(timeout=120)
    assert job.returncode == 0 and "SIGTERM: waiting" in out, out
    assert (fakes / "scontrol.args").read_text().count("requeue") == 1


def test_elastic_slurm_script(tmp_path, capsys):
    config = write_config(tmp_path)
    args = [
        "launch",
        "slurm",
        "--nodes",
        "4",
        "--min-nodes",
        "2",
        "--max-restarts",
        "3",
        "--gpus-per-node",
        "8",
    ]
    assert atomfm([*args, "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "#SBATCH --nodes=2-4" in text and "#SBATCH --no-kill" in text
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    torchrun = next(line for line in text.splitlines() if "--nnodes=" in line)
    assert "--kill-on-bad-exit=0" in srun and shlex.split(torchrun.rstrip(" \\"))[:3] == [
        "--nnodes=2:4",
        "--nproc-per-node=8",
        "--max-restarts=3",
    ]


def test_slurm_submit_prints_and_runs_sbatch(tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path)
    base = ["launch", "slurm", "--nodes", "2", "--gpus-per-node", "4", "--config", str(config), "--submit"]
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert atomfm(base) == 2
    err = capsys.readouterr().err
    assert "--submit: sbatch is not on PATH" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    fakes = fake_commands(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fakes}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_LOG", str(fakes))
    assert atomfm(base) == 0
    out = capsys.readouterr().out
    written = tmp_path / "run" / "slurm-test.sbatch"
    assert f"+ {fakes / 'sbatch'} {written}" in out
    assert (fakes / "sbatch.args").read_text().splitlines() == [str(written)]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--config", "missing.yaml"], "config file not found"),
        (["--config", "CONFIG", "optim.lrr=1"], "field 'optim.lrr': unknown key 'lrr'"),
        (["--config", "CONFIG", "--time", "soon"], "--time 'soon' is not a SLURM time limit"),
        (["--config", "CONFIG", "--min-nodes", "3"], "--min-nodes must be between 1 and --nodes (2)"),
    ],
)
def test_slurm_names_bad_input(extra, named, tmp_path, capsys):
    config = str(write_config(tmp_path))
    args = [
        "launch",
        "slurm",
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        *[config if a == "CONFIG" else a for a in extra],
    ]
    assert atomfm(args) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
