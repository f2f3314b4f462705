"""The training loop: preflight, then steps with logging, evaluation, checkpoints and preemption.

`train_and_evaluate(config, workdir)` is what `main.py` runs. The parts live by job:
`preflight` (every check that needs no compilation), `trainer` (state and the compiled step),
`accumulation` (GradCache), `evaluation` (the encode pass and evaluators, `--mode=eval`).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from input_pipeline import pipeline
from mmjax import paths, preflight
from mmjax.evaluation.suite import EvalSuite
from mmjax.tools import aot
from mmjax.training import checkpoint, emergency, workdir_lock
from mmjax.training.metric_writers import MetricWriter
from mmjax.training.trainer import Trainer


class TrainingDiverged(RuntimeError):
    pass


def _host_metrics(metrics) -> dict[str, float]:
    return {f"train/{k}": float(v) for k, v in jax.device_get(metrics).items()}


def check_finite(trainer: Trainer, state) -> None:
    """Stops a run whose loss or gradients went NaN/Inf, before anything bad is saved."""
    if trainer.skip_nonfinite_steps:
        return
    first_bad = int(jax.device_get(state["first_nonfinite_step"]))
    if first_bad >= 0:
        raise TrainingDiverged(
            f"Training diverged at step {first_bad}: the loss or the gradients are NaN or Inf. "
            "No checkpoint was written from that step on, so the last good one is kept; lower "
            "config.learning_rate or raise config.warmup_steps and restart, or set "
            "config.skip_nonfinite_steps=True to skip such steps."
        )


class Throughput:
    """Training steps per second between log lines, not counting evaluations and saves, and how
    long the loop waited for input meanwhile."""

    def __init__(self, step: int, clock=time.perf_counter):
        self.clock = clock
        self.restart(step)

    def restart(self, step: int) -> None:
        """Count from here: after a log line, an evaluation or anything else that is not
        training."""
        self.start_time, self.start_step, self.data_wait = self.clock(), step, 0.0

    def steps_per_second(self, step: int) -> float:
        return (step - self.start_step) / max(self.clock() - self.start_time, 1e-9)

    def next_batch(self, batches):
        """The next batch, its wait counted (the steps run asynchronously, so this is time the
        devices may have idled for want of data)."""
        start = self.clock()
        batch = next(batches)
        self.data_wait += self.clock() - start
        return batch


class Profiler:
    """Traces steps [first, last] of config.profile_steps with jax.profiler into
    WORKDIR/profile (TensorBoard's profile plugin or Perfetto read it); () traces nothing. With
    the workdir in cloud storage the trace is written locally, then copied there."""

    def __init__(self, steps, workdir: str):
        self.first, self.last = tuple(steps) if steps else (None, None)
        self.directory = paths.join(workdir, "profile")
        self.active = False

    def before_step(self, step: int) -> None:
        if step == self.first and jax.process_index() == 0:
            self.trace_dir = (tempfile.mkdtemp(prefix="mmjax_profile_")
                              if paths.is_cloud(self.directory) else self.directory)
            jax.profiler.start_trace(self.trace_dir)
            self.active = True

    def after_step(self, step: int, state) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(state)  # the traced steps' device work, not just its dispatch
            self.close()
            print(f"Profile of steps {self.first}-{self.last}: {self.directory}", flush=True)

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            if self.trace_dir != self.directory:
                paths.copy_tree(self.trace_dir, self.directory)


class PreemptionHandler:
    """SIGTERM / SIGINT: finish the current step, save and exit 0; a second signal exits at once.

    TPU VMs and cloud schedulers send SIGTERM before preempting. A single process reacts at the
    next step. With several processes every one must save the same step: JAX's preemption
    service (started by jax.distributed.initialize) takes SIGTERM, agrees on the step through
    the coordination service and `reached_preemption_sync_point` says when it is here; a step
    costs no collective. SIGINT is handed to it as SIGTERM.
    """

    def __init__(self):
        self._signalled = self._requested = False
        self._previous = {}
        self.shared = jax.process_count() > 1
        if threading.current_thread() is threading.main_thread():
            # Several processes: SIGTERM stays with JAX's preemption notifier.
            for signum in (signal.SIGINT,) if self.shared else (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        del frame
        if self._signalled:
            os._exit(128 + signum)
        self._signalled = True
        self._requested = not self.shared
        print(f"Received {signal.Signals(signum).name}: finishing this step and saving "
              "(send it again to exit at once).", flush=True)
        if self.shared:
            os.kill(os.getpid(), signal.SIGTERM)

    def requested(self, step: int) -> bool:
        """Whether to stop after `step`. Every process calls it at every step."""
        if self.shared:
            self._requested = multihost_utils.reached_preemption_sync_point(step)
        return self._requested

    @property
    def stopped(self) -> bool:
        return self._requested

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def resumed_input(config, data_state: dict | None) -> dict | None:
    """The saved input position, where the config changes what it counts (the preflight has
    refused that unless config.data.allow_change_on_resume): new training data starts at its
    first example; another seed or global batch goes on from the same example count."""
    changes = checkpoint.data_changes(config, data_state)
    if not changes:
        return data_state
    if not config.data.get("allow_change_on_resume"):
        raise preflight.ConfigError([preflight.Problem(
            field, now, f"differs from the {before!r} the checkpoint was trained with",
            "resume with that value, or set config.data.allow_change_on_resume=True")
            for field, (before, now) in changes.items()])
    if jax.process_index() == 0:
        for field, (before, now) in changes.items():
            print(f"Resuming with {field} = {now!r} (the checkpoint's: {before!r}).", flush=True)
    if "config.data.train" in changes:
        return {"position": 0, "skipped": 0}
    return data_state


def train_and_evaluate(config, workdir: str, mesh: Mesh | None = None,
                       take_over_workdir: bool = False) -> dict[str, float]:
    """Trains from the workdir's latest checkpoint (or from scratch) to config.total_steps, on
    `mesh` (default: config.mesh over all devices), holding the workdir's lock throughout
    (`take_over_workdir`: even from a job that looks alive; mmjax/training/workdir_lock.py).

    Returns the final evaluation metrics.
    """
    if paths.isfile(workdir):  # the preflight names it
        return _train_and_evaluate(config, workdir, mesh)
    lock = workdir_lock.WorkdirLock(workdir)
    lock.acquire(take_over=take_over_workdir)
    try:
        return _train_and_evaluate(config, workdir, mesh)
    finally:
        lock.release()


def _train_and_evaluate(config, workdir: str, mesh: Mesh | None) -> dict[str, float]:
    plan = preflight.check(config, mesh=mesh, data=pipeline,
                           workdir=workdir)
    plan.print_notes()
    target = aot.check_target(config)
    if target is not None and jax.process_index() == 0:
        print(f"Fits on {target['slices']} x {target['topology']}: "
              f"{target['bytes_per_device'] / 2**30:.2f} GiB of "
              f"{target['hbm_bytes_per_device'] / 2**30:.0f} GiB a chip.", flush=True)
    trainer = Trainer(config, mesh=mesh, plan=plan)
    config = trainer.config  # the snapshot: what was checked is what runs
    checkpoint.write_config_snapshot(config, workdir)
    manager = checkpoint.create_manager(workdir, keep=config.keep_checkpoints,
                                        best_by=config.get("keep_best_by"),
                                        best_mode=config.keep_best_mode)
    # A preempted run saves to each host's local disk first (mmjax/training/emergency.py).
    emergency_saves = (emergency.EmergencyCheckpoints(config.local_checkpoint_dir, workdir)
                       if config.get("local_checkpoint_dir") else None)
    state, data_state = trainer.initial_state(manager, emergency_saves)
    start_step = int(jax.device_get(state["step"]))

    writer = MetricWriter(workdir, config.total_steps, resume_step=start_step, config=config)
    # A checkpoint without an input position (imported weights) continues the step-based order.
    data_state = resumed_input(config, data_state) or {
        "position": start_step * config.batch_size, "skipped": 0}
    if start_step and jax.process_index() == 0:
        print(f"Input continues at position {data_state['position']}.", flush=True)
    train_batches = pipeline.train_batches(config, trainer.tokenizer,
                                           start_position=data_state["position"])

    def skipped_so_far() -> int:
        """Bad examples skipped over all processes since the run began (the examples read are
        the input position)."""
        skipped = train_batches.skipped
        if jax.process_count() > 1:
            skipped = int(np.sum(multihost_utils.process_allgather(np.int64(skipped))))
        return skipped + data_state["skipped"]

    eval_suite = EvalSuite(trainer)
    # The latest metrics of each eval set (sets may have their own intervals).
    eval_metrics: dict[str, float] = {}

    def run_eval(step: int, is_last: bool) -> dict[str, float]:
        """The metrics of the eval sets due at `step` (none: empty)."""
        eval_started = time.time()
        latest = eval_suite.run(state["params"], step, is_last)
        if not latest:
            return {}
        latest["eval/seconds"] = time.time() - eval_started
        eval_metrics.update(latest)
        writer.write(step, latest)
        if jax.process_index() == 0:
            # With several sets each metric keeps its set's name: "coco/i2t_recall@1".
            several = len(eval_suite.evaluations) > 1
            label = lambda k: k.removeprefix("eval/") if several else k.split("/")[-1]
            print(f"eval at step {step}: " + ", ".join(
                f"{label(k)} {v:.4f}" for k, v in latest.items() if k != "eval/seconds"),
                flush=True)
        return latest

    throughput = Throughput(start_step)
    profiler = Profiler(config.profile_steps, workdir)
    preemption = PreemptionHandler()
    try:
        for step in range(start_step + 1, config.total_steps + 1):
            profiler.before_step(step)
            batch = trainer.global_batch(throughput.next_batch(train_batches))
            state, metrics = trainer.train_step(state, batch, *trainer.step_args)
            profiler.after_step(step, state)
            is_last = step == config.total_steps
            if step % config.log_every_steps == 0 or is_last:
                check_finite(trainer, state)
                host_metrics = _host_metrics(metrics)
                steps_per_sec = throughput.steps_per_second(step)
                host_metrics["train/examples_per_sec"] = steps_per_sec * config.batch_size
                host_metrics["train/steps_per_sec"] = steps_per_sec
                host_metrics["train/data_wait_seconds"] = throughput.data_wait
                skipped = skipped_so_far()
                host_metrics["data/skipped"] = skipped
                for name, count in train_batches.source_counts().items():
                    host_metrics[f"data/source/{name}"] = count
                writer.write(step, host_metrics)
                writer.progress(step, host_metrics["train/loss"], steps_per_sec, skipped)
                train_batches.check_bad_fraction(skipped, train_batches.position,
                                                 config.data.max_bad_fraction)
                throughput.restart(step)
            stop = preemption.requested(step)
            latest = run_eval(step, is_last) if eval_suite and not stop else {}
            evaluated = bool(latest)
            # With keep_best_by each step that evaluates its metric is saved with the metrics:
            # orbax's policy then keeps the best beside the latest. Steps where only other eval
            # sets ran are saved without them (orbax's best-by would find no value there).
            best_by_now = bool(config.get("keep_best_by")) and config.keep_best_by in latest
            saving = (step % config.checkpoint_every_steps == 0 or is_last or stop
                      or best_by_now)
            if saving:
                check_finite(trainer, state)
                position = {"position": train_batches.position, "skipped": skipped_so_far(),
                            "global_batch_size": config.batch_size, "train": config.data.train,
                            "seed": config.seed}
                if stop and emergency_saves is not None:
                    seconds = emergency_saves.save(step, state, position)
                    where = (f"to each host's local disk in {seconds:.2f} s "
                             f"({emergency_saves.local}; copying to {emergency_saves.bucket})")
                else:
                    checkpoint.save(manager, step, state, data_state=position,
                                    eval_metrics=eval_metrics if best_by_now else None)
                    where = f"to {manager.directory}"
            if evaluated or saving:
                throughput.restart(step)  # steps/s counts training only
            if stop:
                if jax.process_index() == 0:
                    print(f"Stopped by a signal: saved step {step} {where}; run the same command "
                          "to continue.", flush=True)
                break
        if start_step >= config.total_steps and eval_suite:
            run_eval(start_step, is_last=True)
    finally:
        profiler.close()
        preemption.restore()
        manager.wait_until_finished()
        manager.close()
        writer.close()
        if emergency_saves is not None and not emergency_saves.wait_for_copy():
            print("The copy of the emergency save did not finish.", flush=True)
    if preemption.stopped:
        return {}
    if jax.process_index() == 0 and eval_metrics:
        paths.write_text(paths.join(workdir, "eval_results.json"), json.dumps(
            {"step": config.total_steps, **eval_metrics}, indent=2))
        eval_suite.write_benchmark_results(config, workdir, config.total_steps, eval_metrics)
    return eval_metrics
