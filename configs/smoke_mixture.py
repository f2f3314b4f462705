"""The smoke run on a weighted mixture: the embedded dataset (60 %) and two shard sets of new
renderings as a user's JPEG and PNG files (30 % and 10 %), which one command writes first:

python -m input_pipeline.generated.mixture_demo --out=data/mixture_demo
python main.py --config=configs/smoke_mixture.py --workdir=/tmp/mmjax_mixture

Kill it at any moment and run the second command again: it resumes with exactly the examples
the uninterrupted run would have read. Each source's examples so far are logged as
data/source/NAME.
"""

import os

from configs import smoke

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
    config = smoke.get_config()
    config.name = "smoke_mixture"
    demo = os.path.join(REPO_ROOT, "data", "mixture_demo")
    config.data.train = (f"mix(tfds:mmjax_shapes:train=0.6, shards:{demo}/large:train=0.3, "
                         f"shards:{demo}/small:train=0.1)")
    return config
