"""CPU smoke run of the video modality: a tiny video-text CLIP (ViViT video tower) on the
embedded mmjax_clips dataset, whose motions no single frame shows.

python main.py --config=configs/smoke_video.py --workdir=/tmp/mmjax_smoke_video

Clips are 8 of the 12 stored 32x32 frames (a random start in training, the centred one in
evaluation), cut into tubelets of 2 frames x 8x8 pixels: 64 tokens a clip. Evaluated on the whole
test split (retrieval, zero-shot motion), on its held-out colour-shape-motion combinations alone,
and on the colour-shape classes (`objects`).
"""

import os

import ml_collections

from mmjax import defaults

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
    config = defaults.base_config()
    config.name = "smoke_video"
    # About 8 minutes on 2 cores; the runs that chose it: docs/experiments/video.md.
    config.total_steps = 2500
    config.batch_size = 128
    config.log_every_steps = 50
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 500

    config.data.train = "tfds:mmjax_clips:train"
    config.data.eval = "tfds:mmjax_clips:test"
    config.data.image_size = 32
    # No flips or crops: captions say "left", "right", "up", "down".
    config.data.video.update(frames=8, stride=1,
                             train_preprocess="decode_frames|sample_clip(random=True)",
                             eval_preprocess="decode_frames|sample_clip")
    config.data.eval_batch_size = 200
    config.data.probe_examples = 2000
    config.eval_sets = ml_collections.ConfigDict(dict(
        all=dict(data="tfds:mmjax_clips:test"),
        held_out=dict(data="tfds:mmjax_clips:test", where="unseen_combination"),
        objects=dict(data="tfds:mmjax_clips_objects:test", evals=("zeroshot",))))

    # The dataset's 24 words; 9 tokens hold its longest caption ("three red circles moving to
    # the left", 7 words) with its start and end tokens.
    config.tokenizer.name = "words"
    config.tokenizer.context_length = 9
    config.tokenizer.vocabulary_file = os.path.join(REPO_ROOT, "input_pipeline",
                                                    "clips_vocabulary.txt")

    config.model.embed_dim = 64
    config.model.image_tower = None
    config.model.video_tower = ml_collections.ConfigDict(dict(
        name="vivit", variant="mu/8", tubelet_frames=2, pooling="gap"))
    config.model.text_tower.update(variant="mu")

    # 288 distinct captions over 6,000 clips: a batch holds copies of one caption, which the
    # loss must not push apart.
    config.identical_captions_match = True

    config.learning_rate = 2e-3
    config.warmup_steps = 50
    config.optimizer.weight_decay = 0.05
    return config
