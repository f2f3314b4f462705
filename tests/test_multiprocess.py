"""Two processes x 4 CPU devices (jax.distributed on loopback, gloo): they log the same losses as
one process x 8 devices (the global batch at a step does not depend on the number of
processes), and a SIGTERM to one of them stops both at the same saved step."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from conftest import xla_flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["train/loss"] for r in map(json.loads, f) if "train/loss" in r}


def start_two(workdir, tfds_dir, *overrides):
    port = free_port()
    env = dict(os.environ, XLA_FLAGS=xla_flags(4),
               TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-u", os.path.join(REPO_ROOT, "main.py"),
               f"--config={os.path.join(REPO_ROOT, 'tests', 'tiny_config.py')}",
               f"--workdir={workdir}", f"--config.data.tfds_data_dir={tfds_dir}",
               f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", *overrides]
    return [subprocess.Popen(command + [f"--process_id={i}"], env=env, cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)]


def test_two_processes_match_one(finished_run, tfds_dir, tmp_path):
    single, single_metrics = finished_run  # 1 process x 8 devices

    multi = str(tmp_path / "multi")
    processes = start_two(multi, tfds_dir)
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            pytest.fail("the two-process run did not finish in 10 minutes")
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]

    expected, got = losses(single), losses(multi)
    assert sorted(got) == sorted(expected) == list(range(1, 9))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step
    with open(os.path.join(multi, "eval_results.json")) as f:
        multi_eval = json.load(f)
    for name, value in single_metrics.items():
        if name != "eval/seconds":
            assert multi_eval[name] == pytest.approx(value, abs=1e-5), name


def test_sigterm_to_one_process_saves_the_same_step_on_both_and_exits_zero(tfds_dir, tmp_path):
    """JAX's preemption service shares the notice: both processes stop after the same step,
    save it together and exit 0."""
    workdir = str(tmp_path / "preempted")
    outputs = preempt_after_step_4(start_two(workdir, tfds_dir, "--config.total_steps=1000",
                                             "--config.checkpoint_every_steps=1000"))
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert len(saved) == 1 and 4 <= saved[0] < 1000, (saved, outputs[0][-2000:])
    assert f"saved step {saved[0]}" in outputs[0]
    assert os.path.exists(os.path.join(workdir, "checkpoints", str(saved[0]), "data"))


def finish(processes, timeout=300):
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        pytest.fail(f"the two processes did not finish in {timeout} s")
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


def preempt_after_step_4(processes) -> list[str]:
    """SIGTERM to process 0 once it has logged step 4; both must then save and exit 0. Returns
    their whole outputs."""
    head = []
    for line in processes[0].stdout:
        head.append(line)
        if line.startswith("step      4/"):
            break
    processes[0].send_signal(signal.SIGTERM)
    outputs = finish(processes, timeout=180)
    outputs[0] = "".join(head) + outputs[0]
    return outputs


def test_an_emergency_save_on_preemption_resumes_bitwise_from_local_disk(tfds_dir, tmp_path):
    """Two processes preempted save their shards to their own local folders, not to the
    workdir's checkpoints; with the copy to the workdir cut short, a restart on the same hosts
    resumes from the local copies and logs the losses of an uninterrupted run, bitwise."""
    # Losses are what is compared: no evaluation at the end.
    run = ("--config.total_steps=30", "--config.checkpoint_every_steps=1000", "--config.evals=()")
    reference = str(tmp_path / "reference")
    finish(start_two(reference, tfds_dir, *run))

    workdir, local = str(tmp_path / "preempted"), str(tmp_path / "local")
    output = preempt_after_step_4(start_two(workdir, tfds_dir, *run,
                                            f"--config.local_checkpoint_dir={local}"))[0]
    saved = re.search(r"saved step (\d+) to each host's local disk in ([\d.]+) s", output)
    assert saved, output[-3000:]
    step = int(saved.group(1))
    assert 4 <= step < 30
    assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
    # The copy of process 1's shards to the workdir cut short, as by a kill.
    os.remove(os.path.join(workdir, "emergency", str(step), "process_1", "COMPLETE"))

    outputs = finish(start_two(workdir, tfds_dir, *run, f"--config.local_checkpoint_dir={local}"))
    assert f"Resuming from the emergency save of step {step} in {local}" in outputs[0], (
        outputs[0][-3000:])
    assert losses(workdir) == losses(reference)  # bitwise
