"""Video-text CLIP: a ViViT-B/16 video tower (joint space-time attention over 2-frame tubelets:
16 frames at 224 px are 8 x 14 x 14 = 1,568 tokens) with open_clip's CLIP text tower (12
layers, width 512, context 77), both started from a trained clip_b16 run.

Benchmark: python -m mmjax.tools.benchmark --config=configs/video_b16.py
Pod fit:   python -m mmjax.tools.aot --config=configs/video_b16.py --topology=v5p-256
Train:     python main.py --config=configs/video_b16.py --workdir=DIR \
               --config.data.train=shards:/data/webvid:train \
               --config.init_from.video_tower_from=A_CLIP_B16_WORKDIR \
               --config.init_from.checkpoint=A_CLIP_B16_WORKDIR \
               --config.init_from.params='("text_tower","text_projection","logit_scale")'
               # the video tower from its image tower (kernel spread over the tubelet, positions
               # repeated over time), the text side as it was
"""

import ml_collections

from mmjax import defaults


def get_config():
    config = defaults.base_config()
    config.name = "video_b16"
    # clip_b16's pixels and text: what the towers start from expects them.
    config.data.normalization = "clip"
    config.model.vocab_size = 49_408
    config.model.dtype = "bfloat16"
    config.model.image_tower = None
    # cls pooling, as clip_b16's image tower, whose class token it starts from.
    config.model.video_tower = ml_collections.ConfigDict(dict(
        name="vivit", variant="B/16", pooling="cls", tubelet_frames=2))
    # 16 frames, every other one stored: 32 frames at 25 fps, about 1.3 s of video.
    config.data.video.update(frames=16, stride=2)
    # 1,568 tokens a clip: each block's activations are 8x an image's, so rematerialise them.
    config.model.remat = "full"
    config.batch_size = 4096
    return config
