"""Metrics out of a run (main process only): `metrics.jsonl`, TensorBoard event files, optionally
Weights & Biases, and a progress line.

Each writer takes `write(step, metrics)` and `close()`; `MetricWriter` fans out to them. The
workdir may be in cloud storage (paths library).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time

import jax

from mmjax import paths


class JsonlWriter:
    """WORKDIR/metrics.jsonl, a JSON record a line. `resume_step`: records after it (written
    before a crash) are dropped, so the log of a resumed run reads as if it never stopped.

    Each write appends its line (in a bucket, only that line is uploaded: paths.append_bytes),
    so a run of N log intervals uploads its log once, not N/2 times over.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        self.path = paths.join(workdir, "metrics.jsonl")
        kept = []
        if paths.exists(self.path):
            for line in paths.read_text(self.path).splitlines(keepends=True):
                try:
                    if json.loads(line)["step"] <= resume_step:
                        kept.append(line if line.endswith("\n") else line + "\n")
                except (json.JSONDecodeError, KeyError):
                    pass  # a line cut short by a crash
        paths.write_text(self.path, "".join(kept))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        line = json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n"
        paths.append_bytes(self.path, line.encode())

    def close(self) -> None:
        pass


class TensorBoardWriter:
    """WORKDIR/tensorboard/ event files through tensorboardX (no TensorFlow needed). For a cloud
    workdir they are written locally and, at each write, only what each file gained since the
    last upload goes up (event files only grow), appended to its object."""

    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter

        self.destination = paths.join(workdir, "tensorboard")
        self.local = (tempfile.mkdtemp(prefix="mmjax_tensorboard_") if paths.is_cloud(workdir)
                      else self.destination)
        self.uploaded: dict[str, int] = {}  # local file -> bytes already in the bucket
        self.writer = SummaryWriter(self.local)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            # TensorBoard tags may not hold '@': recall@1 -> recall_at_1.
            self.writer.add_scalar(name.replace("@", "_at_"), float(value), int(step))
        self.writer.flush()
        if self.local != self.destination:
            self._upload_new_bytes()

    def _upload_new_bytes(self) -> None:
        for root, _, names in os.walk(self.local):
            for name in names:
                local = os.path.join(root, name)
                done = self.uploaded.get(local, 0)
                with open(local, "rb") as f:
                    f.seek(done)
                    tail = f.read()
                if tail:
                    relative = os.path.relpath(local, self.local)
                    target = paths.join(self.destination, *relative.split(os.sep))
                    if not done:  # a new file: its folder once, not at every write
                        paths.makedirs(paths.dirname(target))
                    paths.append_bytes(target, tail)
                    self.uploaded[local] = done + len(tail)

    def close(self) -> None:
        self.writer.close()
        if self.local != self.destination:
            self._upload_new_bytes()


class WandbWriter:
    """A Weights & Biases run (config.wandb.project). Its id comes from the workdir unless
    config.wandb.run_id sets it, so a resumed run goes on logging into the same W&B run.
    config.wandb.mode='offline' writes it locally for `wandb sync` later."""

    def __init__(self, workdir: str, config):
        import wandb

        settings = config.wandb
        run_id = settings.get("run_id") or hashlib.sha256(
            paths.absolute(workdir).encode()).hexdigest()[:16]
        self.run = wandb.init(
            project=settings.project, entity=settings.get("entity"),
            name=settings.get("name") or paths.basename(workdir), id=run_id, resume="allow",
            mode=settings.get("mode") or "online",
            dir=None if paths.is_cloud(workdir) else workdir,
            config=json.loads(config.to_json_best_effort()))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({k: float(v) for k, v in metrics.items()}, step=int(step))

    def close(self) -> None:
        self.run.finish()


class MetricWriter:
    def __init__(self, workdir: str, total_steps: int, resume_step: int = 0, config=None):
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self.writers = []
        if not self.enabled:
            return
        paths.makedirs(workdir)
        self.writers.append(JsonlWriter(workdir, resume_step))
        try:
            self.writers.append(TensorBoardWriter(workdir))
        except ImportError:
            logging.warning("tensorboardX is not installed: no TensorBoard event files.")
        if config is not None and config.get("wandb") and config.wandb.get("project"):
            self.writers.append(WandbWriter(workdir, config))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        for writer in self.writers:
            writer.write(step, metrics)

    def progress(self, step: int, loss: float, steps_per_sec: float, skipped: int = 0) -> None:
        if not self.enabled:
            return
        remaining = (self.total_steps - step) / max(steps_per_sec, 1e-9)
        print(f"step {step:>6}/{self.total_steps} | loss {loss:.4f} | {steps_per_sec:6.2f} steps/s"
              f" | ETA {time.strftime('%H:%M:%S', time.gmtime(remaining))}"
              + (f" | {skipped} bad examples skipped" if skipped else ""), flush=True)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
