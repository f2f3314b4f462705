"""mmjax entry point.

python main.py --config=configs/smoke.py --workdir=/tmp/mmjax_smoke [--config.total_steps=100]
"""

import functools
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mmjax.training import command_line

flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the config snapshot go here.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "caption", "generate"],
                  "train: train (resuming from the workdir) and evaluate; eval: evaluate the "
                  "workdir's latest checkpoint; caption: caption the eval split with it "
                  "(captioning models); generate: images for the eval captions (text-to-image "
                  "models), in WORKDIR/generated.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool(
    "distributed_auto",
    False,
    "Call jax.distributed.initialize() with no arguments: the cluster (TPU pod slice, "
    "SLURM job) is detected by JAX.",
)
# New fields are accepted here and named by the preflight (a misspelt one with the field it was
# probably meant to be), so that the command line never ends in a traceback.
flags.DEFINE_bool("take_over_workdir", False,
                  "Train even though WORKDIR/job.lock names a job that looks alive (you know it "
                  "is gone); without it a stale lock is taken over only when its process is "
                  "gone or it has not been renewed for 10 minutes.")
config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py).",
                                lock_config=False, accept_new_attributes=True)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and TFDS are chatty at INFO
    from mmjax.training import host_memory

    host_memory.configure(FLAGS.config)  # before JAX starts its CPU threads
    import jax

    if FLAGS.coordinator_address or FLAGS.num_processes:
        # CPU processes exchange collectives through gloo (GPUs use NCCL, TPUs their ICI).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    elif FLAGS.distributed_auto:
        jax.distributed.initialize()  # TPU pods, SLURM, GKE: JAX finds the cluster itself
    # The jobs import JAX's backends: only now, after the host memory and the cluster are set.
    from mmjax import evaluate, generate, preflight, train
    from mmjax.training import workdir_lock

    logging.info("JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(),
                 jax.process_count())
    run = {"train": functools.partial(train.train_and_evaluate,
                                      take_over_workdir=FLAGS.take_over_workdir),
           "eval": evaluate.evaluate_checkpoint,
           "caption": evaluate.caption_checkpoint,
           "generate": generate.generate_checkpoint}[FLAGS.mode]
    try:
        run(FLAGS.config, FLAGS.workdir)
    except (preflight.ConfigError, workdir_lock.WorkdirInUse) as e:
        sys.exit(str(e))  # the problems and their fixes, without a traceback


if __name__ == "__main__":
    app.run(main, flags_parser=command_line.parse_flags)
