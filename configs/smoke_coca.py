"""CPU smoke run of CoCa: contrastive + captioning on the embedded dataset.

python main.py --config=configs/smoke_coca.py --workdir=workdir/smoke_coca
python main.py --config=configs/smoke_coca.py --workdir=workdir/smoke_coca --mode=caption
"""

import ml_collections

from configs import smoke


def as_coca(config, decoder_depth: int):
    """A CLIP config made CoCa (also used by configs/coca_b32.py)."""
    config.model.name = "coca"
    # The multimodal decoder: its width and heads are the text tower's; depth is its own.
    config.model.decoder = ml_collections.ConfigDict(dict(depth=decoder_depth))
    # CoCa weights captioning twice as much as the contrastive loss.
    config.losses = {"clip": 1.0, "caption": 2.0}
    config.evals = ("retrieval", "zeroshot", "captioning")
    return config


def get_config():
    config = as_coca(smoke.get_config(), decoder_depth=2)
    config.name = "smoke_coca"
    return config
