"""CPU smoke fine-tuning of a VQA-style answer classifier over the fusion encoder.

Starts from the fusion smoke run's towers and fusion encoder; the answer head starts fresh.
The embedded dataset's `mmjax_shapes_vqa` view asks one question per image ("what colour is
it", "how many are there", ...) whose answer (one of 22) only the image gives.

python main.py --config=configs/smoke_fusion.py --workdir=workdir/smoke_fusion   # pretrain
python main.py --config=configs/smoke_vqa.py --workdir=workdir/smoke_vqa
"""

from configs import smoke_fusion

NUM_ANSWERS = 22  # len(input_pipeline.generated.shapes.VQA_ANSWERS)


def get_config():
    config = smoke_fusion.get_config()
    config.name = "smoke_vqa"
    config.model.name = "fusion_classifier"
    config.model.num_classes = NUM_ANSWERS
    config.data.train = "tfds:mmjax_shapes_vqa:train"
    config.data.eval = "tfds:mmjax_shapes_vqa:test"
    config.losses = {"classification": 1.0}
    config.evals = ("classification",)
    config.total_steps = 600
    config.warmup_steps = 50
    config.learning_rate = 1e-3
    config.init_from.checkpoint = "workdir/smoke_fusion"
    config.init_from.params = ("image_tower", "text_tower", "fusion_encoder")
    return config
