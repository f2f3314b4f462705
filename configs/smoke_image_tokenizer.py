"""CPU smoke run of the image tokenizer (issue 16, stage 1): a ViT autoencoder with FSQ on the
embedded mmjax_shapes images, 32 px -> a 4x4 grid of tokens (8 px patches) from 8,000 codes.

python main.py --config=configs/smoke_image_tokenizer.py --workdir=/tmp/mmjax_tokenizer

The eval reports reconstruction error (normalised units and PSNR of 8-bit pixels) and code usage
(perplexity of the code distribution, share of the 8,000 codes used). A 4x4 grid rather than
8x8 (4 px patches, 1,000 codes: 27.3 dB after 800 steps): the smoke generator over 16 tokens
draws whole objects where over 64 it scattered fragments (BENCHMARKS.md).
"""

from configs import common, smoke


def get_config():
    config = common.as_image_tokenizer(smoke.get_config(), encoder="mu/8", decoder="mu/8",
                                       levels=(8, 8, 5, 5, 5))
    config.name = "smoke_image_tokenizer"
    config.total_steps = 1500
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    return config
