"""The config a workdir was written with (its config.json), e.g. an imported open_clip model.

python main.py --config=configs/from_workdir.py:DIR --workdir=DIR --mode=eval
"""

import json

import ml_collections

from mmjax import defaults, paths


def _with_placeholders(value):
    """JSON's null loses the field's type; unset fields here are optional strings (paths, names),
    and a placeholder keeps them overridable from the command line."""
    if isinstance(value, dict):
        return {k: _with_placeholders(v) for k, v in value.items()}
    return ml_collections.config_dict.placeholder(str) if value is None else value


def get_config(workdir: str) -> ml_collections.ConfigDict:
    path = paths.join(workdir, "config.json")
    if not paths.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: configs/from_workdir.py reads the config "
            "snapshot a run (or mmjax.tools.weights.import_open_clip) wrote there."
        )
    return ml_collections.ConfigDict(_with_placeholders(defaults.fill_missing(
        json.loads(paths.read_text(path)))))
