import numpy as np
import pytest

from mmjax.evaluation import evaluators, metrics


def test_recall_on_hand_built_similarity():
    # Row i's match is column i. Row 0: best. Row 1: second. Row 2: fourth (last).
    similarity = np.array([
        [0.9, 0.1, 0.2, 0.3],
        [0.8, 0.7, 0.1, 0.0],
        [0.5, 0.6, 0.1, 0.7],
        [0.0, 0.0, 0.0, 1.0],
    ])
    recall = metrics.recall_at_k(similarity, ks=(1, 2, 4))
    assert recall == {1: 0.5, 2: 0.75, 4: 1.0}
    # Columns: col 0's best row is 0 (0.9 > 0.8); col 1's match 0.7 is beaten by none;
    # col 2's match 0.1 is beaten by 0.2; col 3 best.
    assert metrics.recall_at_k(similarity.T, ks=(1,)) == {1: 0.75}


def test_ties_count_against_the_query():
    assert metrics.recall_at_k(np.ones((3, 3)), ks=(1, 3)) == {1: 0.0, 3: 1.0}
    similarity = np.array([[1.0, 1.0], [0.0, 1.0]])
    assert metrics.recall_at_k(similarity, ks=(1,)) == {1: 0.5}


def test_retrieval_metrics_names_and_candidates():
    embeddings = np.eye(5)
    result = metrics.retrieval_metrics(embeddings, embeddings[[0, 1, 2, 4, 3]])
    assert result["i2t_recall@1"] == pytest.approx(0.6)
    assert result["t2i_recall@1"] == pytest.approx(0.6)
    assert result["i2t_recall@5"] == 1.0 and result["t2i_recall@10"] == 1.0
    audio = metrics.retrieval_metrics(embeddings, embeddings[[0, 1, 2, 4, 3]],
                                         pair=("audio", "text"))
    assert audio == {k.replace("i2t", "a2t").replace("t2i", "t2a"): v for k, v in result.items()}


def test_zeroshot_with_prompt_ensemble():
    classes = ["cat", "dog"]
    def encode_texts(texts):  # "a cat" / "the cat" -> near e0; dog -> e1
        return np.array(
            [[1.0, 0.1 * i] if "cat" in t else [0.1 * i, 1.0] for i, t in enumerate(texts)]
        )

    context = evaluators.EvalContext(
        embeddings={"image": np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 0.2]]),
                    "text": np.zeros((3, 2))}, labels=np.array([0, 1, 1]), class_names=classes,
        prompt_templates=["a {}", "the {}"], encode_texts=encode_texts)
    assert evaluators.evaluate_zeroshot(context) == {
        "zeroshot_top1": pytest.approx(2 / 3),
        "zeroshot_mean_per_class": pytest.approx((1 / 1 + 1 / 2) / 2)}


def test_zeroshot_among_present_classes_only():
    """ImageNet-A / -R style: 1,000 names, labels in a subset; candidates are that subset."""
    names = [f"class {i}" for i in range(10)]
    directions = np.eye(10)

    def encode_texts(texts):
        return np.stack([directions[int(t.split()[-1])] for t in texts])

    # Each image is nearest to class 9 (absent from the labels), then to its own class.
    images = np.stack([directions[label] + 1.5 * directions[9] for label in (2, 5, 5)])
    context = evaluators.EvalContext(
        embeddings={"image": images, "text": np.zeros((3, 10))}, labels=np.array([2, 5, 5]),
        class_names=names, prompt_templates=["{}"], encode_texts=encode_texts)
    assert evaluators.evaluate_zeroshot(context)["zeroshot_top1"] == 0.0
    context.present_classes_only = True
    assert evaluators.evaluate_zeroshot(context)["zeroshot_top1"] == 1.0
    assert context.details["zeroshot"]["class_names"] == ["class 2", "class 5"]


def test_bleu_and_cider_equal_pycocoevalcap_on_a_fixture():
    """Values written by scripts/make_caption_metrics_fixture.py with pycocoevalcap 1.2."""
    import json
    import os

    from mmjax.evaluation import caption_metrics

    with open(os.path.join(os.path.dirname(__file__), "fixtures", "caption_metrics.json")) as f:
        fixture = json.load(f)
    bleu = caption_metrics.bleu(fixture["hypotheses"], fixture["references"])
    np.testing.assert_allclose(bleu, fixture["bleu"], rtol=1e-9)
    cider = caption_metrics.cider(fixture["hypotheses"], fixture["references"])
    np.testing.assert_allclose(cider, fixture["cider"], rtol=1e-9)
    # Perfect captions: BLEU 1 and CIDEr 10 when each image's one reference is unique.
    refs = [["a red circle on the left"], ["two blue squares at the top now"]]
    assert caption_metrics.bleu([r[0] for r in refs], refs)[3] == pytest.approx(1.0)
    assert caption_metrics.cider([r[0] for r in refs], refs) == pytest.approx(10.0)


def test_retrieval_with_several_captions_per_image():
    """COCO style: 2 images with 3 and 2 captions. An image query is right if any of its
    captions is in the top k; a caption query if its image is."""
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    texts = np.array([[0.2, 1.0],    # image 0's, but closer to image 1
                      [1.0, 0.1],    # image 0's
                      [1.0, 0.3],    # image 0's
                      [0.9, 0.5],    # image 1's, but closer to image 0
                      [0.0, 1.0]])   # image 1's
    result = metrics.retrieval_metrics(images, texts, ks=(1, 2),
                                           text_image=np.array([0, 0, 0, 1, 1]))
    # Image 0's best text is text 1 (its own); image 1's best is text 4 (its own).
    assert result["i2t_recall@1"] == 1.0
    # Texts 1, 2, 4 find their image first; texts 0 and 3 find the other image first.
    assert result["t2i_recall@1"] == pytest.approx(3 / 5)
    assert result["t2i_recall@2"] == 1.0


def test_identical_captions_are_right_answers_for_each_other():
    """Clips 0 and 1 have word-for-word the same caption: their texts embed identically, so
    either one is a right answer for both (a tie with the other copy must not count against
    the query, as it would with only the diagonal)."""
    audio = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])
    texts = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    strict = metrics.retrieval_metrics(audio, texts, ks=(1,), pair=("audio", "text"))
    assert strict["a2t_recall@1"] == pytest.approx(1 / 3)  # the copies tie: 0 and 1 miss
    groups = metrics.caption_groups(np.array([[5, 6, 0], [5, 6, 0], [7, 0, 0]]))
    assert groups[0] == groups[1] != groups[2]
    result = metrics.retrieval_metrics(audio, texts, ks=(1,), pair=("audio", "text"),
                                           same_caption=groups)
    assert result["a2t_recall@1"] == 1.0 and result["t2a_recall@1"] == 1.0
    assert result["caption_chance@1"] == pytest.approx((2 + 2 + 1) / 9)


def test_itm_accuracy_counts_positives_and_negatives_of_images_that_have_one():
    # 3 images: right on both pairs; wrong on its positive; no differing caption (no negative).
    match, no_match = [0.0, 1.0], [1.0, 0.0]
    context = evaluators.EvalContext(
        embeddings={}, labels=None, class_names=(),
        prompt_templates=(), encode_texts=None, extra={
            "itm_positive": np.array([match, no_match, match]),
            "itm_negative": np.array([no_match, no_match, match]),
            "itm_hard_negative": np.array([match, no_match, match]),
            "itm_has_negative": np.array([True, True, False])})
    metrics = evaluators.evaluate_itm(context)
    # Next differing: positives right 2 of 3, negatives right 2 of 2 -> 4 / 5.
    assert metrics["itm_accuracy"] == pytest.approx(4 / 5)
    # Hardest: the first image's hard negative is called a match -> 3 / 5.
    assert metrics["itm_hard_accuracy"] == pytest.approx(3 / 5)


def test_matching_pairs_each_image_with_the_next_and_the_hardest_differing_caption():
    import jax.numpy as jnp

    class PairModel:  # the "logits" say which caption row each image was paired with
        def match_logits(self, batch, tokens=None):
            tokens = batch["tokens"] if tokens is None else tokens
            return tokens[:, :1].astype(jnp.float32)

        def memory_embedding(self, encoded):
            return encoded["image"]

    tokens = jnp.asarray([[0, 7], [1, 7], [0, 7], [3, 7]])  # rows 0 and 2 are the same caption
    batch = {"image": jnp.zeros((4, 2, 2, 3)), "tokens": tokens,
             "valid": jnp.asarray([True, True, True, False])}
    encoded = {"image": jnp.eye(4), "text": jnp.asarray([[1.0, 0, 0, 0], [0, 0, 1, 0],
                                                          [0, 1, 0, 0], [1.0, 0, 0, 0]])}
    out = evaluators.matching_logits(PairModel(), batch, encoded)
    # Next differing valid caption: 0 -> 1, 1 -> 2, 2 -> 1 (3 is padding, 0 is the same), 3 -> 0.
    assert out["itm_negative"][:, 0].tolist() == [1, 0, 1, 0]
    # Hardest differing: image 1 is most similar to text 2, image 2 to text 1; images 0 and 3
    # see only zeros among what is allowed (the first allowed wins).
    assert out["itm_hard_negative"][:, 0].tolist() == [1, 0, 1, 0]
    assert out["itm_positive"][:, 0].tolist() == [0, 1, 0, 3]
    assert out["itm_has_negative"].tolist() == [True, True, True, True]


def test_classification_accuracy():
    context = evaluators.EvalContext(
        embeddings={}, labels=np.array([2, 0, 1]),
        class_names=(), prompt_templates=(), encode_texts=None,
        extra={"class_logits": np.array([[0, 0, 5.0], [1.0, 0, 0], [1.0, 0, 0]])})
    assert evaluators.evaluate_classification(context) == {
        "classification_accuracy": pytest.approx(2 / 3)}
