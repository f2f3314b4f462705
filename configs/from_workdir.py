"""The config a workdir was written with (its config.json), e.g. an imported open_clip model.

python main.py --config=configs/from_workdir.py:DIR --workdir=DIR --mode=eval
"""

import json
import os

import ml_collections


def get_config(workdir: str) -> ml_collections.ConfigDict:
    with open(os.path.join(workdir, "config.json")) as f:
        return ml_collections.ConfigDict(json.load(f))
