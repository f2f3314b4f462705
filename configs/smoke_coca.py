"""CPU smoke run of CoCa: contrastive + captioning on the embedded dataset.

python main.py --config=configs/smoke_coca.py --workdir=workdir/smoke_coca
python main.py --config=configs/smoke_coca.py --workdir=workdir/smoke_coca --mode=caption
"""

import ml_collections

from configs import smoke


def get_config():
    config = smoke.get_config()
    config.name = "smoke_coca"
    config.model.name = "coca"
    # The multimodal decoder: its width and heads are the text tower's; depth is its own.
    config.model.decoder = ml_collections.ConfigDict(dict(depth=2))
    # CoCa weights captioning twice as much as the contrastive loss.
    config.losses = {"clip": 1.0, "caption": 2.0}
    config.evals = ("retrieval", "zeroshot", "captioning")
    # Caption generation (eval and --mode=caption): 1 is greedy, more is beam search.
    config.caption = ml_collections.ConfigDict(dict(beam_size=1))
    return config
