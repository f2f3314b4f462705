"""CPU smoke run of three modalities: image, audio and text towers on the embedded
mmjax_triples (a shapes image, the sound it maps to, the image's caption), every pair aligned.

python main.py --config=configs/smoke_trimodal.py --workdir=/tmp/mmjax_smoke_trimodal

By default the image-audio pair is trained on directly (the triples). With
--config.contrastive_pairs='("image-text","audio-text")' images and sounds never meet in the
loss: audio-image retrieval then measures what they learnt only through the text. Evaluated on
the whole test split and on its held-out colour-shape pairs alone (eval set `held_out`).
"""

import ml_collections

from configs import smoke, smoke_audio


def get_config():
    config = smoke.get_config()
    audio = smoke_audio.get_config()
    config.name = "smoke_trimodal"
    config.total_steps = 600
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 300
    config.data.train = "tfds:mmjax_triples:train"
    config.data.eval = "tfds:mmjax_triples:test"
    config.data.audio = audio.data.audio
    config.eval_sets = ml_collections.ConfigDict(dict(
        all=dict(data="tfds:mmjax_triples:test"),
        held_out=dict(data="tfds:mmjax_triples:test", where="unseen_combination")))
    config.model.audio_tower = audio.model.audio_tower
    config.identical_captions_match = True  # 216 distinct captions over 4,000 triples
    config.warmup_steps = 50
    return config
