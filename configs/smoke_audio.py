"""CPU smoke run of the audio modality: a tiny audio-text CLIP (AST audio tower) on the embedded
mmjax_sounds dataset.

python main.py --config=configs/smoke_audio.py --workdir=/tmp/mmjax_smoke_audio

Clips are one second of beeps; the spectrogram is 64 frames (hop 250 at 16 kHz) x 32 mel bins,
cut into 8x8 patches. Evaluated on the whole test split and on its held-out waveform-register
pairs (never in training) alone; the log-mel baseline to beat is in BENCHMARKS.md.
"""

import os

import ml_collections

from mmjax import defaults

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
    config = defaults.base_config()
    config.name = "smoke_audio"
    config.total_steps = 1200
    config.batch_size = 128
    config.log_every_steps = 50
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 300

    config.data.train = "tfds:mmjax_sounds:train"
    config.data.eval = "tfds:mmjax_sounds:test"
    config.data.audio.update(frames=64, hop=250, frame_length=400, num_mels=32,
                             train_preprocess="decode_wav|crop_or_pad(random=True)|log_mel",
                             eval_preprocess="decode_wav|crop_or_pad|log_mel")
    config.data.eval_batch_size = 250
    config.data.probe_examples = 2000
    config.eval_sets = ml_collections.ConfigDict(dict(
        all=dict(data="tfds:mmjax_sounds:test"),
        held_out=dict(data="tfds:mmjax_sounds:test", where="unseen_combination")))

    config.tokenizer.name = "words"
    config.tokenizer.context_length = 10
    config.tokenizer.vocabulary_file = os.path.join(REPO_ROOT, "input_pipeline",
                                                    "sounds_vocabulary.txt")

    config.model.embed_dim = 64
    config.model.image_tower = None
    config.model.audio_tower = ml_collections.ConfigDict(dict(
        name="ast", variant="mu/8", pooling="gap"))
    config.model.text_tower.update(variant="mu")

    # 198 distinct captions over 4,000 clips: a batch of 128 holds many copies of one caption,
    # which the loss must not push apart.
    config.identical_captions_match = True

    config.learning_rate = 2e-3
    config.warmup_steps = 50
    config.optimizer.weight_decay = 0.05
    return config
