"""How long the training loop is held up by keeping the best checkpoint: one save of the
whole train state of a config, timed from the call to its return, a few times.

    python scripts/time_best_save.py --config=configs/clip_b32.py --workdir=/tmp/best_save

Works against this checkout and against versions before orbax kept the best (which saved it
synchronously through checkpoint.BestCheckpoint), so the two can be compared on one machine.
"""

import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.getcwd())

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "A config file.", lock_config=False)
flags.DEFINE_string("workdir", "/tmp/best_save", "Emptied, then written to.")
flags.DEFINE_integer("saves", 3, "Saves to time.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import jax

    from mmjax.training import checkpoint
    from mmjax.training.trainer import Trainer

    config = FLAGS.config
    metric = "eval/x/i2t_recall@1"
    config.keep_best_by, config.keep_checkpoints = metric, 1
    shutil.rmtree(FLAGS.workdir, ignore_errors=True)
    trainer = Trainer(config)
    state = jax.block_until_ready(trainer.create_state())
    if hasattr(checkpoint, "BestCheckpoint"):  # before: a second manager, saving synchronously
        best = checkpoint.BestCheckpoint(FLAGS.workdir, metric, "max")

        def save_best(step):
            best.update(step, state, {metric: float(step)})

        settle, finish, layout = (lambda: None), best.close, "synchronous second manager"
    else:
        manager = checkpoint.create_manager(FLAGS.workdir, keep=1, best_by=metric)

        def save_best(step):
            checkpoint.save(manager, step, state, data_state={"position": step},
                            eval_metrics={metric: float(step)})

        settle, finish = manager.wait_until_finished, manager.close
        layout = "orbax preservation policy, asynchronous"
    times = []
    for step in range(1, FLAGS.saves + 1):  # each one better than the last: each is kept
        start = time.perf_counter()
        save_best(step)
        times.append(time.perf_counter() - start)
        settle()  # the steps between two evaluations give a background save time to finish
    finish()
    parameters = sum(x.size for x in jax.tree.leaves(state["params"]))
    result = {"config": config.get("name", ""), "layout": layout, "parameters": int(parameters),
              "seconds_per_save": times}
    print(json.dumps(result, indent=1))
    print(f"| {result['config']} | {layout} | {parameters / 1e6:.1f} M | "
          + " / ".join(f"{t:.2f} s" for t in times) + " |")


if __name__ == "__main__":
    app.run(main)
