"""CPU smoke run: a tiny CLIP on the embedded mmjax_shapes dataset, learning in minutes.

python main.py --config=configs/smoke.py --workdir=/tmp/mmjax_smoke

Every field and its meaning: mmjax/defaults.py. With your own captions, use a tokenizer that
covers them (README, "Your own data"): the words list here knows only the embedded dataset's
41 words, and the preflight stops a run whose captions it cannot read.
"""

import os

from mmjax import defaults

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
    config = defaults.base_config()
    config.name = "smoke"
    config.total_steps = 1200
    config.batch_size = 128
    config.log_every_steps = 50
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500

    config.data.image_size = 32
    # No flips or crops: captions say "left", "right", how many.
    config.data.train_preprocess = "decode|resize"
    config.data.eval_preprocess = "decode|resize"
    config.data.eval_batch_size = 250
    config.data.probe_examples = 2000

    # The embedded dataset's 41 words; 12 tokens hold its longest caption.
    config.tokenizer.name = "words"
    config.tokenizer.context_length = 12
    config.tokenizer.vocabulary_file = os.path.join(REPO_ROOT, "input_pipeline",
                                                    "shapes_vocabulary.txt")

    config.model.embed_dim = 64
    config.model.image_tower.update(variant="mu/4", pooling="gap")
    config.model.text_tower.update(variant="mu")

    config.learning_rate = 2e-3
    config.warmup_steps = 100
    config.optimizer.weight_decay = 0.05
    return config
