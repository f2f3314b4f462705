"""Metrics to `metrics.jsonl`, TensorBoard event files and a progress line (main process only)."""

from __future__ import annotations

import json
import logging
import os
import time

import jax


class MetricWriter:
    def __init__(self, workdir: str, total_steps: int, resume_step: int = 0):
        """`resume_step`: records after it (written before a crash) are dropped, so that the log
        of a resumed run reads as if it had never stopped."""
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self.tensorboard = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(path):
            kept = []
            with open(path) as f:
                for line in f:
                    try:
                        if json.loads(line)["step"] <= resume_step:
                            kept.append(line)
                    except (json.JSONDecodeError, KeyError):
                        pass  # a line cut short by a crash
            with open(path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(path + ".tmp", path)
        self.jsonl = open(path, "a")
        try:
            from tensorboardX import SummaryWriter  # no TensorFlow needed
            self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:
            logging.warning("tensorboardX is not installed: no TensorBoard event files.")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tensorboard is not None:
            for name, value in metrics.items():
                # TensorBoard tags may not hold '@': recall@1 -> recall_at_1.
                self.tensorboard.add_scalar(name.replace("@", "_at_"), float(value), int(step))
            self.tensorboard.flush()

    def progress(self, step: int, loss: float, steps_per_sec: float, skipped: int = 0) -> None:
        if not self.enabled:
            return
        remaining = (self.total_steps - step) / max(steps_per_sec, 1e-9)
        print(f"step {step:>6}/{self.total_steps} | loss {loss:.4f} | {steps_per_sec:6.2f} steps/s"
              f" | ETA {time.strftime('%H:%M:%S', time.gmtime(remaining))}"
              + (f" | {skipped} bad examples skipped" if skipped else ""), flush=True)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
