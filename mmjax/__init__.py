"""mmjax: multimodal (image + text) pretraining and fine-tuning in JAX / Flax NNX."""
