"""In-graph tokenisation with the rules of `mmjax.text_tokenizers` (a test keeps them equal)."""

from __future__ import annotations

import tensorflow as tf

from mmjax import text_tokenizers


def _layout(
    ids: tf.Tensor,
    context_length: int,
    bos_id: int | None = text_tokenizers.BOS_ID,
    eot_id: int = text_tokenizers.EOT_ID,
    pad_id: int = text_tokenizers.PAD_ID,
) -> tf.Tensor:
    start = [] if bos_id is None else [bos_id]
    ids = tf.cast(ids[: context_length - 1 - len(start)], tf.int32)
    ids = tf.concat([tf.constant(start, tf.int32), ids, [eot_id]], axis=0)
    padding = context_length - tf.shape(ids)[0]
    return tf.ensure_shape(tf.pad(ids, [[0, padding]], constant_values=pad_id),
                           [context_length])


def make_tokenize_fn(tokenizer):
    """A function from a scalar string tensor to `[context_length]` int32 ids."""
    length = tokenizer.context_length
    if isinstance(tokenizer, text_tokenizers.ByteTokenizer):
        def tokenize_bytes(text):
            ids = (
                tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32)
                + text_tokenizers.NUM_SPECIAL_IDS
            )
            return _layout(ids, length)
        return tokenize_bytes
    if isinstance(tokenizer, text_tokenizers.WordTokenizer):
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(tokenizer.vocabulary),
                tf.constant([tokenizer.word_to_id[w] for w in tokenizer.vocabulary], tf.int64)),
            default_value=text_tokenizers.UNK_ID)

        def tokenize_words(text):
            text = tf.strings.regex_replace(
                tf.strings.lower(text), text_tokenizers.WORD_PATTERN, " "
            )
            words = tf.strings.split(tf.strings.strip(text))
            return _layout(table.lookup(words), length)
        return tokenize_words
    if isinstance(tokenizer, text_tokenizers.SentencePieceTokenizer):
        import tensorflow_text

        model = tensorflow_text.SentencepieceTokenizer(model=tokenizer.model_proto,
                                                       out_type=tf.int32)

        def tokenize_pieces(text):
            return _layout(model.tokenize(text), length, tokenizer.bos_id, tokenizer.eot_id,
                           tokenizer.pad_id)
        return tokenize_pieces
    # Any other tokenizer runs its Python code through tf.numpy_function: exact, but it holds the
    # GIL, so an in-graph version is worth adding where throughput matters.
    def tokenize_in_python(text):
        ids = tf.numpy_function(lambda t: tokenizer([t.decode("utf-8")])[0], [text], tf.int32,
                                stateful=False)
        return tf.ensure_shape(ids, [length])
    return tokenize_in_python
