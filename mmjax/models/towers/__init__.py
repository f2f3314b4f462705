"""Encoders of one modality each: image (ViT), text (Transformer), audio (AST)."""
