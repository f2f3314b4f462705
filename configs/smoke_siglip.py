"""The CPU smoke run with SigLIP's sigmoid loss instead of CLIP's softmax.

python main.py --config=configs/smoke_siglip.py --workdir=workdir/smoke_siglip
"""

import math

from configs import smoke


def get_config():
    config = smoke.get_config()
    config.name = "smoke_siglip"
    config.losses = {"siglip": 1.0}
    # SigLIP's initialisation: temperature 10, bias -10 (most pairs start as confident negatives).
    config.model.logit_scale_init = math.log(10.0)
    config.model.logit_bias_init = -10.0
    return config
