"""Tokenizers in pure Python, for inference and evaluation prompts.

The input pipeline tokenises inside the tf.data graph with the same rules
(`input_pipeline/text.py`); a test keeps the two equal. Every tokenizer lays a text out as
`[bos, tokens..., eot, pad, ...]`; truncation keeps the end-of-text token, which the text tower
pools at. `bytes` and `words` reserve ids 0-3 (pad, bos, eot, unk); `clip_bpe` uses CLIP's own
(pad 0, start 49406, end 49407).
"""

from __future__ import annotations

import gzip
import hashlib
import html
import inspect
import re
from collections.abc import Sequence

import numpy as np

from mmjax import paths

PAD_ID, BOS_ID, EOT_ID, UNK_ID = 0, 1, 2, 3
NUM_SPECIAL_IDS = 4
WORD_PATTERN = r"[^a-z0-9]+"


def _layout(ids: list[int], context_length: int, bos_id: int | None = BOS_ID,
            eot_id: int = EOT_ID, pad_id: int = PAD_ID) -> list[int]:
    """[bos, ids..., eot, pad, ...]; without a bos id (SigLIP's SentencePiece) [ids..., eot,
    pad, ...]."""
    start = [] if bos_id is None else [bos_id]
    ids = start + ids[: context_length - 1 - len(start)] + [eot_id]
    return ids + [pad_id] * (context_length - len(ids))


class ByteTokenizer:
    """UTF-8 bytes shifted past the special ids: needs no vocabulary file."""

    name = "bytes"
    bos_id, eot_id, pad_id = BOS_ID, EOT_ID, PAD_ID
    unk_id = None  # every text has its bytes

    def __init__(self, context_length: int):
        self.context_length = context_length
        self.vocab_size = 256 + NUM_SPECIAL_IDS

    def content_ids(self, text: str) -> list[int]:
        return [b + NUM_SPECIAL_IDS for b in text.encode("utf-8")]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray([_layout(self.content_ids(text), self.context_length)
                           for text in texts], np.int32)

    def decode(self, ids) -> str:
        content = [i - NUM_SPECIAL_IDS for i in _content_ids(ids, self.bos_id, self.eot_id)
                   if i >= NUM_SPECIAL_IDS]
        return bytes(content).decode("utf-8", errors="replace")


class WordTokenizer:
    """Lower-cased ASCII words from a vocabulary file (one word per line); others map to UNK."""

    name = "words"
    bos_id, eot_id, pad_id, unk_id = BOS_ID, EOT_ID, PAD_ID, UNK_ID

    def __init__(self, context_length: int, vocabulary_file: str):
        data = paths.read_bytes(vocabulary_file)
        self.vocabulary_sha256 = hashlib.sha256(data).hexdigest()
        lines = data.decode("utf-8").splitlines()
        self.vocabulary = [line.strip() for line in lines if line.strip()]
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError(f"Vocabulary file {vocabulary_file} repeats words.")
        self.word_to_id = {w: i + NUM_SPECIAL_IDS for i, w in enumerate(self.vocabulary)}
        self.context_length = context_length
        self.vocab_size = len(self.vocabulary) + NUM_SPECIAL_IDS

    def split(self, text: str) -> list[str]:
        lowered = "".join(c.lower() if c.isascii() else c for c in text)
        return re.sub(WORD_PATTERN, " ", lowered).split()

    def content_ids(self, text: str) -> list[int]:
        return [self.word_to_id.get(w, UNK_ID) for w in self.split(text)]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray([_layout(self.content_ids(text), self.context_length)
                           for text in texts], np.int32)

    def decode(self, ids) -> str:
        words = {UNK_ID: "<unk>", PAD_ID: "<pad>", BOS_ID: "<bos>"}
        return " ".join(words.get(i) or self.vocabulary[i - NUM_SPECIAL_IDS]
                        for i in _content_ids(ids, self.bos_id, self.eot_id))


def _content_ids(ids, bos_id: int, eot_id: int) -> list[int]:
    """The ids of one row between the beginning-of-text and the first end-of-text token."""
    ids = [int(i) for i in ids]
    if ids and ids[0] == bos_id:
        ids = ids[1:]
    return ids[:ids.index(eot_id)] if eot_id in ids else ids


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from bytes to printable characters."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


class ClipBpeTokenizer:
    """OpenAI CLIP's byte-level BPE (open_clip's SimpleTokenizer with its default 'lower' cleaning),
    from CLIP's merges file (bpe_simple_vocab_16e6.txt.gz, gzipped or not).

    Needs the `ftfy` and `regex` packages, as open_clip does.
    """

    name = "clip_bpe"
    pad_id = PAD_ID
    unk_id = None  # byte-level: every text has its tokens

    def __init__(self, context_length: int, vocabulary_file: str):
        try:
            import ftfy
            import regex
        except ImportError as e:
            raise ImportError("The clip_bpe tokenizer needs the ftfy and regex packages "
                              "(pip install -r requirements.txt).") from e
        self._fix_text = ftfy.fix_text
        data = paths.read_bytes(vocabulary_file)
        self.vocabulary_sha256 = hashlib.sha256(data).hexdigest()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        merges = [tuple(m.split()) for m in data.decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
        self.byte_encoder = _bytes_to_unicode()
        vocabulary = list(self.byte_encoder.values())
        vocabulary += [v + "</w>" for v in vocabulary] + ["".join(m) for m in merges]
        vocabulary += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {token: i for i, token in enumerate(vocabulary)}
        self.bpe_ranks = {merge: i for i, merge in enumerate(merges)}
        self.bos_id = self.encoder["<start_of_text>"]
        self.eot_id = self.encoder["<end_of_text>"]
        self.vocab_size = len(self.encoder)
        self.context_length = context_length
        self.pattern = regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)
        self._findall = regex.findall
        self.cache = {"<start_of_text>": "<start_of_text>", "<end_of_text>": "<end_of_text>"}

    def clean(self, text: str) -> str:
        text = html.unescape(html.unescape(self._fix_text(text))).strip()
        return " ".join(text.split()).strip().lower()

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == bigram:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def content_ids(self, text: str) -> list[int]:
        ids = []
        for token in self._findall(self.pattern, self.clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray([_layout(self.content_ids(text), self.context_length, self.bos_id,
                                   self.eot_id) for text in texts], np.int32)

    def decode(self, ids) -> str:
        if not hasattr(self, "decoder"):
            self.decoder = {i: token for token, i in self.encoder.items()}
            self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        text = "".join(self.decoder.get(i, "") for i in _content_ids(ids, self.bos_id, self.eot_id))
        # As open_clip: characters back to bytes, then word ends back to spaces.
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()


class SentencePieceTokenizer:
    """A SentencePiece model file (`python -m input_pipeline.convert.make_vocab` trains one from a
    dataset's captions). The input pipeline runs the same model in-graph (tensorflow-text);
    a test keeps the two equal. Uses the model's own pad, bos and eos ids; `add_bos=False` lays
    texts out without a begin-of-text token and `pad_id` pads with another id, as SigLIP's
    tokenisation does (big_vision's c4_en model: no bos, padded with eos, id 1)."""

    name = "sentencepiece"

    def __init__(self, context_length: int, vocabulary_file: str, add_bos: bool = True,
                 pad_id: int | None = None):
        try:
            import sentencepiece
        except ImportError as e:
            raise ImportError("The sentencepiece tokenizer needs the sentencepiece package "
                              "(pip install -r requirements.txt).") from e
        self.model_proto = paths.read_bytes(vocabulary_file)
        self.vocabulary_sha256 = hashlib.sha256(self.model_proto).hexdigest()
        self.processor = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)
        self.pad_id = self.processor.pad_id() if pad_id is None else int(pad_id)
        self.bos_id = self.processor.bos_id() if add_bos else None
        self.eot_id, self.unk_id = self.processor.eos_id(), self.processor.unk_id()
        self.vocab_size = self.processor.get_piece_size()
        needed = {"pad": self.pad_id, "eos": self.eot_id, **({"bos": self.bos_id} if add_bos
                                                            else {})}
        lacking = [name for name, i in needed.items() if not 0 <= i < self.vocab_size]
        if lacking:
            raise ValueError(
                f"SentencePiece model {vocabulary_file} lacks a {' and a '.join(lacking)} piece "
                f"(ids {needed}); mmjax lays texts out as [bos, ..., eos, pad, ...]. Train one "
                "with `python -m input_pipeline.convert.make_vocab`"
                + (", or set config.tokenizer.add_bos=False" if "bos" in lacking else "")
                + (", or set config.tokenizer.pad_id" if "pad" in lacking else "") + ".")
        self.context_length = context_length

    def content_ids(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray([_layout(self.content_ids(text), self.context_length, self.bos_id,
                                   self.eot_id, self.pad_id) for text in texts], np.int32)

    def decode(self, ids) -> str:
        return self.processor.decode(_content_ids(ids, self.bos_id, self.eot_id))


class IdsOnlyTokenizer:
    """For a model whose vocabulary file is not at hand (an import without --vocab): token ids are
    accepted as they are, strings are refused with the fix."""

    name = "ids_only"
    unk_id = None

    def __init__(self, context_length: int, vocab_size: int, bos_id: int, eot_id: int,
                 pad_id: int = PAD_ID):
        self.context_length, self.vocab_size = context_length, vocab_size
        self.bos_id, self.eot_id, self.pad_id = bos_id, eot_id, pad_id

    def content_ids(self, text: str) -> list[int]:
        return self([text])

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        raise ValueError("This model has no tokenizer: pass token ids, or set "
                         "config.tokenizer to one with its vocabulary (for an imported open_clip "
                         "model, import it again with --vocab=bpe_simple_vocab_16e6.txt.gz).")

    def decode(self, ids) -> str:
        return " ".join(str(i) for i in _content_ids(ids, self.bos_id, self.eot_id))


def identity(tokenizer) -> dict:
    """What a tokenizer's ids depend on (not where its file lies): shards tokenized at conversion
    record it, and are read with their stored tokens only by the same tokenizer."""
    identity = {"name": tokenizer.name, "context_length": int(tokenizer.context_length),
                "vocab_size": int(tokenizer.vocab_size),
                "vocabulary_sha256": getattr(tokenizer, "vocabulary_sha256", "")}
    if isinstance(tokenizer, SentencePieceTokenizer):  # only where not the default layout
        if tokenizer.bos_id is None:
            identity["add_bos"] = False
        if tokenizer.pad_id != tokenizer.processor.pad_id():
            identity["pad_id"] = tokenizer.pad_id
    return identity


TOKENIZERS = {"bytes": ByteTokenizer, "words": WordTokenizer, "clip_bpe": ClipBpeTokenizer,
              "sentencepiece": SentencePieceTokenizer, "ids_only": IdsOnlyTokenizer}


def build_tokenizer(tokenizer_config):
    """The tokenizer config.tokenizer names. Fields the tokenizer does not take (a
    vocabulary_file left from another tokenizer, for `bytes`) and unset ones are ignored, so
    `--config.tokenizer.name=bytes` alone switches to bytes."""
    kwargs = dict(tokenizer_config)
    name = kwargs.pop("name")
    if name not in TOKENIZERS:
        raise ValueError(f"Unknown tokenizer {name!r}; valid names: {sorted(TOKENIZERS)}.")
    parameters = inspect.signature(TOKENIZERS[name]).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in parameters and v is not None}
    missing = [k for k, p in parameters.items() if p.default is p.empty and k not in kwargs]
    if missing:
        raise ValueError(f"The {name!r} tokenizer needs config.tokenizer.{missing[0]}"
                         + (" (a vocabulary file)." if missing[0] == "vocabulary_file" else "."))
    try:
        return TOKENIZERS[name](**kwargs)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"Tokenizer {name!r}: {e}. Set config.tokenizer.vocabulary_file to an existing file."
        ) from e
