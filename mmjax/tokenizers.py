"""Tokenizers in pure Python, for inference and evaluation prompts.

The input pipeline tokenises inside the tf.data graph with the same rules
(`input_pipeline/text.py`); a test keeps the two equal. Every tokenizer reserves the same special
ids and lays a text out as `[bos, tokens..., eot, pad, ...]`; truncation keeps the end-of-text
token, which the text tower pools at.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

PAD_ID, BOS_ID, EOT_ID, UNK_ID = 0, 1, 2, 3
NUM_SPECIAL_IDS = 4
WORD_PATTERN = r"[^a-z0-9]+"


def _layout(ids: list[int], context_length: int) -> list[int]:
    ids = [BOS_ID] + ids[: context_length - 2] + [EOT_ID]
    return ids + [PAD_ID] * (context_length - len(ids))


class ByteTokenizer:
    """UTF-8 bytes shifted past the special ids: needs no vocabulary file."""

    name = "bytes"

    def __init__(self, context_length: int):
        self.context_length = context_length
        self.vocab_size = 256 + NUM_SPECIAL_IDS

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray([_layout([b + NUM_SPECIAL_IDS for b in text.encode("utf-8")],
                                   self.context_length) for text in texts], np.int32)


class WordTokenizer:
    """Lower-cased ASCII words from a vocabulary file (one word per line); others map to UNK."""

    name = "words"

    def __init__(self, context_length: int, vocabulary_file: str):
        with open(vocabulary_file) as f:
            self.vocabulary = [line.strip() for line in f if line.strip()]
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError(f"Vocabulary file {vocabulary_file} repeats words.")
        self.word_to_id = {w: i + NUM_SPECIAL_IDS for i, w in enumerate(self.vocabulary)}
        self.context_length = context_length
        self.vocab_size = len(self.vocabulary) + NUM_SPECIAL_IDS

    def split(self, text: str) -> list[str]:
        lowered = "".join(c.lower() if c.isascii() else c for c in text)
        return re.sub(WORD_PATTERN, " ", lowered).split()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray([_layout([self.word_to_id.get(w, UNK_ID) for w in self.split(text)],
                                   self.context_length) for text in texts], np.int32)


TOKENIZERS = {"bytes": ByteTokenizer, "words": WordTokenizer}


def build_tokenizer(tokenizer_config):
    kwargs = dict(tokenizer_config)
    name = kwargs.pop("name")
    if name not in TOKENIZERS:
        raise ValueError(f"Unknown tokenizer {name!r}; valid names: {sorted(TOKENIZERS)}.")
    try:
        return TOKENIZERS[name](**kwargs)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"Tokenizer {name!r}: {e}. Set config.tokenizer.vocabulary_file to an existing file."
        ) from e
