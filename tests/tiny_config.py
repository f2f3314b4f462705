"""The tests' tiny config: the smoke config shrunk to seconds per run.

Usable as a config file too: python main.py --config=tests/tiny_config.py --workdir=... \
    --config.data.tfds_data_dir=DIR
"""

import importlib.util
import os

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def get_config():
    spec = importlib.util.spec_from_file_location("smoke", os.path.join(CONFIGS, "smoke.py"))
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    config = smoke.get_config()
    config.name = "tiny"
    config.data.train = "tfds:mmjax_shapes/tiny:train"
    config.data.eval = "tfds:mmjax_shapes/tiny:test"
    config.data.image_size = 16
    # As configs/smoke.py's: 250 does not divide over 8 devices, so the eval batch is padded.
    config.data.eval_batch_size = 250
    config.batch_size = 16
    config.total_steps = 8
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.evals = ("retrieval", "zeroshot")  # the linear probe is tested where it is named
    config.checkpoint_every_steps = 4
    config.warmup_steps = 2
    config.model.embed_dim = 32
    config.model.image_tower.update(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2,
                                    patch_size=4)
    config.model.text_tower.update(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2)
    return config
