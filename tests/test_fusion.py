"""Cross-modal models: CoCa decoding (cache, greedy, beam), fusion objectives against references."""

import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import evaluate, models, text_tokenizers
from mmjax.losses import classification
from mmjax.models import cross_attention, decoding

VOCAB, CONTEXT = 23, 7


def tiny_model(name: str, **extra):
    config = dict(
        name=name, embed_dim=16, dtype="float32",
        image_tower=dict(name="vit", width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=4,
                         pooling="gap"),
        text_tower=dict(name="transformer", width=16, depth=2, mlp_dim=32, num_heads=2,
                        context_length=CONTEXT, causal=name != "fusion"),
        **extra)
    run = ml_collections.ConfigDict(dict(model=config, seed=0, data=dict(
        image_size=8, normalization="minus_one_one", audio=dict(frames=16, num_mels=8))))
    tokenizer = types.SimpleNamespace(vocab_size=VOCAB, context_length=CONTEXT,
                                      pad_id=text_tokenizers.PAD_ID, eot_id=text_tokenizers.EOT_ID)
    return models.build_model(run.model, models.ModelInputs.from_data(run.data), tokenizer,
                              seed=run.seed)


@pytest.fixture(scope="module")
def coca():
    return tiny_model("coca", decoder=dict(depth=2))


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(1), (3, 8, 8, 3))


def test_cached_decoding_equals_the_full_pass(coca, images):
    """Teacher-forced: the cached step's logits equal the full causal pass's at every position."""
    tokens = jax.random.randint(jax.random.key(2), (3, CONTEXT), 4, VOCAB)
    full = coca({"image": images, "tokens": tokens})["caption_logits"]
    state = coca.start_decoding(images, 3)
    for position in range(CONTEXT):
        logits, state = coca.decode_step(tokens[:, position], position, state)
        np.testing.assert_allclose(logits, full[:, position], atol=1e-5)
        np.testing.assert_allclose(logits, coca.next_token_logits(images, tokens, position),
                                   atol=1e-5)


def test_greedy_with_and_without_cache_and_beam_of_one_agree(coca, images):
    ids = dict(max_length=CONTEXT, bos_id=text_tokenizers.BOS_ID, eot_id=text_tokenizers.EOT_ID,
               pad_id=text_tokenizers.PAD_ID)
    run = lambda fn, **kw: jax.jit(lambda m, x: fn(m, x, **ids, **kw))(coca, images)
    cached = run(decoding.greedy)
    uncached = run(decoding.greedy, use_cache=False)
    beam_one, _ = run(decoding.beam_search, beam_size=1)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(beam_one, cached)
    assert (cached[:, 0] == text_tokenizers.BOS_ID).all()


def test_beam_search_finds_the_best_sequence_of_a_known_model(images):
    """On a model whose next-token distribution we set by hand, greedy is fooled and a beam of
    2 finds the sequence of highest total log-probability (checked by enumerating all)."""
    # Token 4 then anything is likely first; but after 4 every continuation is flat, while
    # after 5 the end-of-text is near certain.
    table = np.full((VOCAB, VOCAB), -9.0)
    table[text_tokenizers.BOS_ID, 4], table[text_tokenizers.BOS_ID, 5] = 0.0, -0.3
    table[4, 6:16] = 0.0
    table[5, text_tokenizers.EOT_ID] = 5.0
    table[6:16, text_tokenizers.EOT_ID] = 5.0
    table = jnp.asarray(table)

    class TableModel:
        def start_decoding(self, images, rows):
            return {"rows": jnp.zeros((rows,))}

        def decode_step(self, token, position, state):
            return table[token], state

    ids = dict(max_length=4, bos_id=text_tokenizers.BOS_ID, eot_id=text_tokenizers.EOT_ID,
               pad_id=text_tokenizers.PAD_ID)
    greedy = decoding.greedy(TableModel(), images[:1], **ids)
    best, score = decoding.beam_search(TableModel(), images[:1], beam_size=2, **ids)
    log_probs = jax.nn.log_softmax(table)
    assert list(greedy[0, :2]) == [text_tokenizers.BOS_ID, 4]
    assert list(best[0, :3]) == [text_tokenizers.BOS_ID, 5, text_tokenizers.EOT_ID]
    expected = log_probs[text_tokenizers.BOS_ID, 5] + log_probs[5, text_tokenizers.EOT_ID]
    np.testing.assert_allclose(score[0], expected, rtol=1e-6)
    # Brute force over every continuation of 3 tokens (a finished sequence costs nothing more).
    lp = np.asarray(log_probs)
    eot = text_tokenizers.EOT_ID
    a, b, c = np.meshgrid(*[np.arange(VOCAB)] * 3, indexing="ij")
    total = lp[text_tokenizers.BOS_ID, a] + np.where(
        a == eot, 0.0, lp[a, b] + np.where(b == eot, 0.0, lp[b, c]))
    np.testing.assert_allclose(score[0], total.max(), rtol=1e-6)


@pytest.mark.parametrize("pad_id", [0, 8])
def test_caption_loss_masks_the_tokenizers_padding_and_matches_a_reference(pad_id):
    """With pad id 8 (a SentencePiece model's own, say), id 0 is a real token that counts."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 9)).astype(np.float32)
    tokens = np.array([[1, 5, 0 if pad_id else 6, 2, pad_id], [1, 7, 2, pad_id, pad_id]])
    loss, metrics = classification.caption_loss({"caption_logits": jnp.asarray(logits)},
                                        {"tokens": jnp.asarray(tokens)}, pad_id=pad_id)
    terms, hits = [], []
    for b in range(2):
        for t in range(4):
            target = tokens[b, t + 1]
            if target != pad_id:
                row = logits[b, t]
                terms.append(np.log(np.exp(row - row.max()).sum()) + row.max() - row[target])
                hits.append(row.argmax() == target)
    assert len(terms) == 5
    np.testing.assert_allclose(float(loss), np.mean(terms), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["caption_token_accuracy"]), np.mean(hits))


def test_itm_and_mlm_losses_match_references():
    rng = np.random.default_rng(1)
    itm_logits = rng.normal(size=(6, 2)).astype(np.float32)
    itm_labels = np.array([1, 1, 0, 0, 0, 0])
    loss, metrics = classification.itm_loss({"itm_logits": jnp.asarray(itm_logits),
                                     "itm_labels": jnp.asarray(itm_labels)}, {})
    log_probs = itm_logits - np.log(np.exp(itm_logits).sum(1, keepdims=True))
    np.testing.assert_allclose(float(loss), -log_probs[np.arange(6), itm_labels].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["itm_accuracy"]),
                               (itm_logits.argmax(1) == itm_labels).mean())

    mlm_logits = rng.normal(size=(2, 4, 7)).astype(np.float32)
    tokens = np.array([[1, 5, 6, 2], [1, 4, 2, 0]])
    mask = np.array([[0, 1, 0, 0], [0, 1, 0, 0]], np.float32)
    loss, _ = classification.mlm_loss({"mlm_logits": jnp.asarray(mlm_logits), "mlm_mask": mask},
                              {"tokens": jnp.asarray(tokens)})
    log_probs = mlm_logits - np.log(np.exp(mlm_logits).sum(-1, keepdims=True))
    expected = -(log_probs[0, 1, 5] + log_probs[1, 1, 4]) / 2
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_masking_follows_bert_80_10_10():
    tokens = jnp.asarray(np.random.default_rng(2).integers(4, 100, size=(400, 50)))
    tokens = tokens.at[:, 0].set(text_tokenizers.BOS_ID).at[:, 40].set(text_tokenizers.EOT_ID)
    tokens = tokens.at[:, 41:].set(text_tokenizers.PAD_ID)
    masked, selected = cross_attention.mask_tokens(
        jax.random.key(0),
        tokens,
        100,
        0.15,
        mask_id=3,
        pad_id=text_tokenizers.PAD_ID,
        eot_id=text_tokenizers.EOT_ID,
    )
    masked, selected, tokens = map(np.asarray, (masked, selected, tokens))
    chosen = selected.astype(bool)
    assert not chosen[:, 0].any() and not chosen[:, 40:].any()  # BOS, EOT, padding never
    np.testing.assert_array_equal(masked[~chosen], tokens[~chosen])
    real = 400 * 39
    assert abs(chosen.sum() / real - 0.15) < 0.01
    as_mask = (masked[chosen] == 3).mean()
    kept = (masked[chosen] == tokens[chosen]).mean()
    assert abs(as_mask - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.02 + 0.01  # random replacements can hit the original id (1 %)


def test_hard_negatives_follow_the_similarities_and_skip_identical_captions():
    similarity = jnp.asarray([[1.0, 0.9, -1.0, 0.9],
                              [0.2, 1.0, 0.8, -1.0],
                              [-1.0, 0.1, 1.0, 0.7],
                              [0.3, 0.3, 0.3, 1.0]])
    # Examples 0 and 3 share a caption: 3 is never a negative for 0, nor 0 for 3.
    excluded = jnp.eye(4, dtype=bool).at[0, 3].set(True).at[3, 0].set(True)
    draws = jax.vmap(lambda key: cross_attention.sample_hard_negatives(
        key, similarity, excluded, jnp.asarray(20.0)))(jax.random.split(jax.random.key(0), 2000))
    draws = np.asarray(draws)
    assert set(np.unique(draws[:, 0])) == {1}  # 2 is possible but e^-38 unlikely
    assert (draws[:, 3] != 0).all() and (draws != np.arange(4)).all()
    # Row 1: candidates 0 (0.2), 2 (0.8), 3 (-1): p(2) = 1 / (1 + e^-12 + e^-36).
    assert (draws[:, 1] == 2).mean() > 0.99
    # With no hard share, the allowed columns are drawn uniformly: row 0 takes 1 or 2 evenly.
    uniform = np.asarray(jax.vmap(lambda key: cross_attention.sample_hard_negatives(
        key, similarity, excluded, jnp.asarray(20.0), hard_fraction=0.0))(
            jax.random.split(jax.random.key(1), 2000)))
    assert abs((uniform[:, 0] == 2).mean() - 0.5) < 0.05
    assert set(np.unique(uniform[:, 0])) == {1, 2} and (uniform[:, 3] != 0).all()


def test_fusion_model_outputs_and_itm_labels():
    model = tiny_model("fusion", fusion_encoder=dict(depth=1))
    images = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
    tokens = jnp.asarray([[1, 5, 6, 2, 0, 0, 0], [1, 7, 2, 0, 0, 0, 0],
                          [1, 5, 6, 2, 0, 0, 0], [1, 9, 10, 11, 2, 0, 0]])
    outputs = model({"image": images, "tokens": tokens}, rng=jax.random.key(0))
    assert outputs["itm_logits"].shape == (12, 2)
    np.testing.assert_array_equal(outputs["itm_labels"], [1] * 4 + [0] * 8)
    assert outputs["mlm_logits"].shape == (4, CONTEXT, VOCAB)
    with pytest.raises(ValueError, match="rng"):
        model({"image": images, "tokens": tokens})


def test_the_mask_token_is_no_text_token():
    """Every id of a tokenizer can be real text (all of CLIP BPE's are; words gives UNK to
    unknown words): [MASK] is one more id, past the tokenizer's, with its own embedding row."""
    model = tiny_model("fusion", fusion_encoder=dict(depth=1))
    assert model.mask_token_id == VOCAB
    assert model.text_tower.token_embedding.shape[0] == VOCAB + 1
    tokens = jnp.asarray(np.random.default_rng(0).integers(4, VOCAB, size=(64, CONTEXT)))
    masked, selected = cross_attention.mask_tokens(
        jax.random.key(1), tokens, model.vocab_size, 0.5, mask_id=model.mask_token_id,
        pad_id=text_tokenizers.PAD_ID, eot_id=text_tokenizers.EOT_ID)
    assert int((masked == VOCAB).sum()) > 0 and bool(jnp.all((masked == VOCAB) <= (selected > 0)))
    assert int(masked.max()) == VOCAB and int(jnp.where(masked == VOCAB, 0, masked).max()) < VOCAB


def _tiny_cross_modal_config(tiny_config, name):
    import ml_collections

    tiny_config.model.name = name
    tiny_config.total_steps = 4
    if name == "coca":
        tiny_config.model.decoder = ml_collections.ConfigDict(dict(depth=1))
        tiny_config.losses = {"clip": 1.0, "caption": 2.0}
        tiny_config.evals = ("retrieval", "captioning")
        tiny_config.caption = ml_collections.ConfigDict(dict(beam_size=1))
    else:
        tiny_config.model.text_tower.causal = False
        tiny_config.model.fusion_encoder = ml_collections.ConfigDict(dict(depth=1))
        tiny_config.losses = {"clip": 1.0, "itm": 1.0, "mlm": 1.0}
        tiny_config.evals = ("itm",)
    return tiny_config


def test_coca_trains_evaluates_and_captions_a_checkpoint(tiny_config, tmp_path, capsys):
    import json

    from conftest import one_device_mesh
    from mmjax import train
    from mmjax.evaluation import caption_metrics as bleu_and_cider
    from mmjax.evaluation import evaluators

    config = _tiny_cross_modal_config(tiny_config, "coca")
    metrics = train.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh())
    names = {m.split("/")[-1] for m in metrics if m.startswith("eval/mmjax_shapes/")}
    # What the evaluators declare for an image-text model (num_texts only with several
    # captions per image; no audio pairs).
    declared = {m for e in ("retrieval", "captioning") for m in evaluators.EVALUATORS[e].metrics
                if not re.match(r"[av]2|.2[av]_", m)}
    assert names == declared - {"num_texts"}
    history = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert all("train/caption_loss" in row for row in history if "train/loss" in row)

    caption_metrics = evaluate.caption_checkpoint(config, str(tmp_path), mesh=one_device_mesh())
    assert caption_metrics["caption_token_accuracy"] == pytest.approx(
        metrics["eval/mmjax_shapes/caption_token_accuracy"])
    rows = [json.loads(line) for line in open(tmp_path / "captions.jsonl")]
    assert len(rows) == 128 and rows[0]["reference"].split()[0] in ("one", "two", "three")
    # The numbers recounted from the captions written.
    generated, references = [r["generated"] for r in rows], [[r["reference"]] for r in rows]
    assert caption_metrics["caption_exact_match"] == pytest.approx(
        np.mean([g == r[0] for g, r in zip(generated, references)]))
    assert caption_metrics["caption_bleu4"] == pytest.approx(
        bleu_and_cider.bleu(generated, references)[3])


def test_fusion_model_trains_and_reports_matching_accuracy(tiny_config, tmp_path):
    from conftest import one_device_mesh
    from mmjax import train
    from mmjax.training.trainer import Trainer

    config = _tiny_cross_modal_config(tiny_config, "fusion")
    pretrained = tmp_path / "fusion"
    metrics = train.train_and_evaluate(config, str(pretrained), mesh=one_device_mesh())
    assert 0.0 <= metrics["eval/mmjax_shapes/itm_accuracy"] <= 1.0
    assert 0.0 <= metrics["eval/mmjax_shapes/itm_hard_accuracy"] <= 1.0

    # Fine-tuning a VQA-style answer head from that checkpoint: towers and fusion encoder load,
    # the head starts fresh, and the answers' accuracy is evaluated.
    from input_pipeline.generated import shapes
    from mmjax.training import checkpoint

    config.model.name = "fusion_classifier"
    config.model.num_classes = len(shapes.VQA_ANSWERS)
    config.data.train = "tfds:mmjax_shapes_vqa/tiny:train"
    config.data.eval = "tfds:mmjax_shapes_vqa/tiny:test"
    config.losses = {"classification": 1.0}
    config.evals = ("classification",)
    config.init_from.checkpoint = str(pretrained)
    config.init_from.params = ("image_tower", "text_tower", "fusion_encoder")
    trainer = Trainer(config, mesh=one_device_mesh())
    manager = checkpoint.create_manager(str(tmp_path / "vqa"), keep=1)
    state, _ = trainer.initial_state(manager)
    loaded = checkpoint.load_params(str(pretrained))
    got = state["params"]["fusion_encoder"]["itm_head"]["kernel"][...]
    np.testing.assert_array_equal(got, loaded["fusion_encoder/itm_head/kernel"])
    manager.close()
    metrics = train.train_and_evaluate(config, str(tmp_path / "vqa"), mesh=one_device_mesh())
    assert 0.0 <= metrics["eval/mmjax_shapes_vqa/classification_accuracy"] <= 1.0



def test_distillation_from_a_trained_teacher_checkpoint(finished_run, tfds_dir, tmp_path):
    """A student (smaller towers) trains against the shared finished run as its teacher: the
    distill loss is logged and falls."""
    import json

    from conftest import make_tiny_config, one_device_mesh
    from mmjax import train

    student_dir = tmp_path / "student"
    student = make_tiny_config(tfds_dir)
    student.total_steps = 6
    student.data.eval = ""  # no evaluation: not what this tests
    student.warmup_steps = 0
    student.model.image_tower.update(width=16, mlp_dim=32)
    student.model.text_tower.update(width=16, mlp_dim=32)
    student.losses = {"clip": 1.0, "distill": 1.0}
    student.distill.teacher = finished_run[0]
    train.train_and_evaluate(student, str(student_dir), mesh=one_device_mesh())
    rows = [json.loads(line) for line in open(student_dir / "metrics.jsonl")]
    distill = [row["train/distill_loss"] for row in rows if "train/distill_loss" in row]
    assert len(distill) == 6 and np.isfinite(distill).all() and distill[-1] < distill[0]


def test_fusion_memory_of_image_and_audio_with_modality_dropout():
    """Image and audio towers feed one fusion memory, each with its modality embedding. An
    example that modality dropout leaves with only its image fuses exactly as the image alone
    would (the audio tokens are masked out, not merely diluted); without dropout every example
    sees both; the training pass runs with dropout and its matching labels are unchanged."""
    model = tiny_model("fusion", fusion_encoder=dict(depth=1), modality_dropout=0.5,
                       audio_tower=dict(name="ast", width=16, depth=1, mlp_dim=32, num_heads=2,
                                        patch_size=4, pooling="gap"))
    assert model.memory_modalities == ("image", "audio")
    images = jax.random.normal(jax.random.key(1), (16, 8, 8, 3))
    spectrograms = jax.random.normal(jax.random.key(2), (16, 16, 8))  # 8 tokens; images 4
    tokens = jax.random.randint(jax.random.key(3), (16, CONTEXT), 4, VOCAB).at[:, -1].set(
        text_tokenizers.EOT_ID)
    aux = {"image": model.image_tower(images)[1], "audio": model.audio_tower(spectrograms)[1]}
    memory, lengths = model.memory(aux, jax.random.key(4))
    image_tokens = aux["image"]["tokens"].shape[1]
    embedding = model.modality_embedding[...]
    dropped = np.flatnonzero(np.asarray(lengths) < memory.shape[1])
    assert 0 < len(dropped) < 16
    text = model.text_tower(tokens)[1]["tokens"]
    text_lengths = model.text_lengths(tokens)
    fused = model.fusion_encoder(text, memory, text_lengths, lengths)
    for kept, modality in enumerate(("image", "audio")):  # tokens: image 4, audio 8
        rows = dropped[np.asarray(lengths)[dropped] == (4, 8)[kept]]
        alone = aux[modality]["tokens"][rows] + embedding[kept]
        np.testing.assert_allclose(
            model.fusion_encoder(text[rows], alone, text_lengths[rows]), fused[rows], atol=1e-5)
    full, no_lengths = model.memory(aux)
    assert no_lengths is None and full.shape == memory.shape
    np.testing.assert_allclose(full[:, :image_tokens], aux["image"]["tokens"] + embedding[0],
                               atol=1e-6)
    outputs = model({"image": images, "audio": spectrograms, "tokens": tokens},
                    rng=jax.random.key(5))
    assert outputs["itm_logits"].shape == (48, 2) and np.isfinite(outputs["mlm_logits"]).all()
    with pytest.raises(ValueError, match="widths must agree"):
        tiny_model("fusion", fusion_encoder=dict(depth=1), audio_tower=dict(
            name="ast", width=24, depth=1, mlp_dim=32, num_heads=2, patch_size=4))
