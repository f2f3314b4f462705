"""Audio-text CLIP: an AST-B/16 audio tower over 1024 frames x 128 mel bins (10.24 s at a 10 ms
hop, 64 x 8 patches) with open_clip's CLIP text tower (12 layers, width 512, context 77).

Benchmark: python -m mmjax.tools.benchmark --config=configs/audio_ast_b16.py
Train:     python main.py --config=configs/audio_ast_b16.py --workdir=DIR \
               --config.data.train=shards:/data/audiocaps:train \
               --config.init_from.audio_tower_from=A_CLIP_B16_WORKDIR
               # the audio tower starts from an image tower (AST)
"""

import ml_collections

from mmjax import defaults


def get_config():
    config = defaults.base_config()
    config.name = "audio_ast_b16"
    config.model.vocab_size = 49_408
    config.model.dtype = "bfloat16"
    config.model.image_tower = None
    config.model.audio_tower = ml_collections.ConfigDict(dict(
        name="ast", variant="B/16", pooling="cls"))
    config.data.audio.update(frames=1024, num_mels=128)
    return config
