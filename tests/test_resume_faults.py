"""Faults a long run meets on resume: a damaged checkpoint, a second job on the workdir, other
data than the checkpoint was trained on, a misspelt field on the command line."""

import json
import os
import subprocess
import sys

import pytest
from test_checkpoints import train_losses

from conftest import REPO_ROOT, copy_run, make_tiny_config, xla_flags
from input_pipeline import pipeline
from mmjax import preflight, train
from mmjax.training import workdir_lock


def damage(folder):
    """Every file cut to half its length, as a bad copy or a failing disk leaves it."""
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.truncate(size // 2)


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(finished_run, tfds_dir,
                                                                  tmp_path, capsys):
    reference, _ = finished_run
    workdir = copy_run(finished_run, tmp_path / "run")
    checkpoints = os.path.join(workdir, "checkpoints")
    damage(os.path.join(checkpoints, "8"))
    train.train_and_evaluate(make_tiny_config(tfds_dir), workdir)
    output = capsys.readouterr().out
    assert "Checkpoint 8 in " in output and "does not read back" in output, output
    assert "Set aside [8] as STEP.unreadable; resuming from step 4." in output, output
    # Steps 5-8 trained again from step 4: the losses of the uninterrupted run, bitwise.
    assert train_losses(workdir) == train_losses(reference)
    assert sorted(os.listdir(checkpoints)) == ["4", "8", "8.unreadable"]


def test_when_no_checkpoint_reads_back_the_run_stops_naming_them(finished_run, tfds_dir,
                                                                 tmp_path):
    workdir = copy_run(finished_run, tmp_path / "run")
    for step in ("4", "8"):
        damage(os.path.join(workdir, "checkpoints", step))
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    with pytest.raises(RuntimeError, match=r"No checkpoint in .* reads back whole: step 8: .*; "
                       r"step 4: .*nothing was changed here"):
        train.train_and_evaluate(make_tiny_config(tfds_dir), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_resuming_over_other_data_stops_unless_allowed(finished_run, tfds_dir):
    workdir, _ = finished_run
    config = make_tiny_config(tfds_dir)
    trained_on = config.data.train
    config.data.train = "tfds:mmjax_shapes:test"
    config.seed = 3
    with pytest.raises(preflight.ConfigError) as error:
        preflight.check(config, data=pipeline, workdir=workdir)
    message = str(error.value)
    assert (f"config.data.train = 'tfds:mmjax_shapes:test': differs from the {trained_on!r} "
            "this workdir's checkpoint at step 8 was trained with" in message), message
    assert "config.seed = 3: differs from the 0" in message, message
    assert "config.data.allow_change_on_resume=True" in message

    config.data.allow_change_on_resume = True
    preflight.check(config, data=pipeline, workdir=workdir)
    saved = {"position": 128, "skipped": 1, "train": trained_on, "seed": 0,
             "global_batch_size": config.batch_size}
    assert train.resumed_input(config, saved) == {"position": 0, "skipped": 0}
    config.data.train = trained_on
    assert train.resumed_input(config, saved) == saved  # another seed: the same example count


@pytest.fixture(params=["local", "bucket"])
def lock_workdir(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("bucket") + f"/{tmp_path.name}/run"


def test_the_workdir_lock_refuses_a_second_job_and_takes_over_a_stale_one(lock_workdir, capsys):
    """On a local disk and on the emulated bucket: one holder at a time; a lock not renewed for
    stale_seconds, or one taken over on request, passes to the new job, and the old job's
    release then leaves the new lock alone."""
    first = workdir_lock.WorkdirLock(lock_workdir)
    first.acquire()
    try:
        with pytest.raises(workdir_lock.WorkdirInUse,
                           match=rf"process id {os.getpid()}, started .* UTC, last alive"):
            workdir_lock.WorkdirLock(lock_workdir).acquire()
        patient = workdir_lock.WorkdirLock(lock_workdir, stale_seconds=0.0)
        patient.acquire()
        assert "not renewed for 0 s" in capsys.readouterr().out
        forced = workdir_lock.WorkdirLock(lock_workdir)
        forced.acquire(take_over=True)
        assert "(--take_over_workdir)" in capsys.readouterr().out
        patient.renew()  # finds the lock taken and lets go of it
        assert "was taken over by another job" in capsys.readouterr().out
        patient.release()
    finally:
        first.release()
    from mmjax import paths

    held = json.loads(paths.read_text(forced.path))
    assert held["job"] == forced.record["job"]
    forced.release()
    assert not paths.exists(forced.path)


def run_main(*arguments):
    command = [sys.executable, os.path.join(REPO_ROOT, "main.py"),
               f"--config={os.path.join(REPO_ROOT, 'tests', 'tiny_config.py')}", *arguments]
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_misspelt_fields_on_the_command_line_are_named_without_a_traceback(tmp_path):
    result = run_main(f"--workdir={tmp_path / 'run'}", "--config.learnin_rate=0.1",
                      "--config.data.trian=shards:x", "--config.model.text_tower.context_length=12")
    assert result.returncode != 0
    assert ("config.learnin_rate = 0.1: no such field; did you mean learning_rate? Fix: set "
            "config.learning_rate instead." in result.stderr), result.stderr
    assert "config.data.trian = 'shards:x': no such field; did you mean train?" in result.stderr
    # A documented field the config leaves unset is settable: the tokenizer's own value passes.
    assert "context_length" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

    result = run_main(f"--workdir={tmp_path / 'run'}", "--config.dta.train=x",
                      "--config.eval_sets.coco.where=unseen_combination")
    assert result.returncode != 0
    assert ("--config.dta.train: config.dta: no such section; did you mean config.data?"
            in result.stderr), result.stderr
    assert ("--config.eval_sets.coco.where: config.eval_sets.coco: no such section; "
            "config.eval_sets is empty in this config: add config.eval_sets.coco = dict(...)"
            in result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "run")  # nothing was written


def test_fields_no_part_reads_are_named_in_config_files_too(tiny_config):
    tiny_config.eval_sets = {"held_out": dict(data="tfds:mmjax_shapes:test",
                                              where="unseen_combination", evals=("retrieval",))}
    tiny_config.optimizer.weight_decy = 0.1
    tiny_config.eval_sets.held_out.wher = "x"
    with pytest.raises(preflight.ConfigError) as error:
        preflight.check(tiny_config)
    message = str(error.value)
    assert "config.optimizer.weight_decy = 0.1: no such field; did you mean weight_decay?" in (
        message)
    assert "config.eval_sets.held_out.wher = 'x': no such field; did you mean where?" in message
    assert "held_out.where =" not in message  # a documented eval-set field
    assert message.count("no such field") == 2, message


def test_an_emergency_save_reads_back_bitwise_from_local_disk_or_the_workdir(tiny_config,
                                                                              tmp_path):
    import jax
    import numpy as np

    from mmjax.training import emergency
    from mmjax.training.trainer import Trainer

    trainer = Trainer(tiny_config)
    state = trainer.create_state()
    abstract = trainer.sharded_abstract_state
    workdir = str(tmp_path / "run")
    saves = emergency.EmergencyCheckpoints(str(tmp_path / "local"), workdir)
    position = {"position": 48, "skipped": 0}
    saves.save(3, state, position)
    assert saves.wait_for_copy(timeout=60)

    def same(restored):
        assert restored[1] == position
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored[0])):
            assert a.sharding == b.sharding
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    step, folder = saves.newest(after=2)
    assert step == 3 and folder.startswith(str(tmp_path / "local"))
    same(saves.restore(folder, abstract))
    assert saves.newest(after=3) is None  # the orbax checkpoint is as new: it wins

    # Another host: no local copy, the workdir's copy is whole.
    other_host = emergency.EmergencyCheckpoints(str(tmp_path / "elsewhere"), workdir)
    step, folder = other_host.newest(after=-1)
    assert step == 3 and folder.startswith(os.path.join(workdir, "emergency", "3"))
    same(other_host.restore(folder, abstract))
    # A copy cut short (no COMPLETE marker) is never read.
    os.remove(os.path.join(folder, emergency.COMPLETE))
    assert other_host.newest(after=-1) is None
