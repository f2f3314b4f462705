"""CPU smoke run of CoCa: contrastive + captioning on the embedded dataset.

python main.py --config=configs/smoke_coca.py --workdir=workdir/smoke_coca
python main.py --config=configs/smoke_coca.py --workdir=workdir/smoke_coca --mode=caption
"""

from configs import common, smoke


def get_config():
    config = common.as_coca(smoke.get_config(), decoder_depth=2)
    config.name = "smoke_coca"
    return config
