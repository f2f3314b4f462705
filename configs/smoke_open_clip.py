"""The CPU smoke run in OpenAI CLIP's architecture, exportable to open_clip and transformers.

python main.py --config=configs/smoke_open_clip.py --workdir=workdir/smoke_open_clip
python -m mmjax.tools.weights.export_open_clip --workdir=workdir/smoke_open_clip --out=DIR
python -m mmjax.tools.weights.export_hf --workdir=workdir/smoke_open_clip --out=DIR

The smoke model's sizes, with configs/common.as_open_clip_architecture: class-token pooling, no
patch bias, exact GELU and CLIP's BPE tokenizer (16 tokens hold the dataset's captions).
scripts/check_exports.py trains it briefly and compares the exported models' embeddings in
open_clip and transformers with mmjax's.
"""

from configs import common, smoke


def get_config():
    config = common.as_open_clip_architecture(smoke.get_config(), context_length=16)
    config.name = "smoke_open_clip"
    return config
