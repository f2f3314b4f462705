"""Helpers the configs share (big_vision style): one change applied to any base."""

import ml_collections


def as_coca(config, decoder_depth: int):
    """A CLIP config made CoCa: a multimodal decoder over the text tower, captioning loss."""
    config.model.name = "coca"
    # The multimodal decoder: its width and heads are the text tower's; depth is its own.
    config.model.decoder = ml_collections.ConfigDict(dict(depth=decoder_depth))
    # CoCa weights captioning twice as much as the contrastive loss.
    config.losses = {"clip": 1.0, "caption": 2.0}
    config.evals = ("retrieval", "zeroshot", "captioning")
    return config
