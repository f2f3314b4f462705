import numpy as np
import pytest

from mmjax import evaluators


def test_recall_on_hand_built_similarity():
    # Row i's match is column i. Row 0: best. Row 1: second. Row 2: fourth (last).
    similarity = np.array([
        [0.9, 0.1, 0.2, 0.3],
        [0.8, 0.7, 0.1, 0.0],
        [0.5, 0.6, 0.1, 0.7],
        [0.0, 0.0, 0.0, 1.0],
    ])
    recall = evaluators.recall_at_k(similarity, ks=(1, 2, 4))
    assert recall == {1: 0.5, 2: 0.75, 4: 1.0}
    # Columns: col 0's best row is 0 (0.9 > 0.8); col 1's match 0.7 is beaten by none;
    # col 2's match 0.1 is beaten by 0.2; col 3 best.
    assert evaluators.recall_at_k(similarity.T, ks=(1,)) == {1: 0.75}


def test_ties_count_against_the_query():
    assert evaluators.recall_at_k(np.ones((3, 3)), ks=(1, 3)) == {1: 0.0, 3: 1.0}
    similarity = np.array([[1.0, 1.0], [0.0, 1.0]])
    assert evaluators.recall_at_k(similarity, ks=(1,)) == {1: 0.5}


def test_retrieval_metrics_names_and_candidates():
    embeddings = np.eye(5)
    metrics = evaluators.retrieval_metrics(embeddings, embeddings[[0, 1, 2, 4, 3]])
    assert metrics["num_candidates"] == 5
    assert metrics["i2t_recall@1"] == pytest.approx(0.6)
    assert metrics["t2i_recall@1"] == pytest.approx(0.6)
    assert metrics["i2t_recall@5"] == 1.0


def test_zeroshot_with_prompt_ensemble():
    classes = ["cat", "dog"]
    def encode_texts(texts):  # "a cat" / "the cat" -> near e0; dog -> e1
        return np.array([[1.0, 0.1 * i] if "cat" in t else [0.1 * i, 1.0] for i, t in enumerate(texts)])
    context = evaluators.EvalContext(
        image_embeddings=np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 0.2]]),
        text_embeddings=np.zeros((3, 2)), labels=np.array([0, 1, 1]), class_names=classes,
        prompt_templates=["a {}", "the {}"], encode_texts=encode_texts)
    assert evaluators.evaluate_zeroshot(context) == {"zeroshot_top1": pytest.approx(2 / 3)}


def test_unknown_evaluator_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['bleu'\].*\['retrieval', 'zeroshot'\]"):
        evaluators.check_evaluator_names(["retrieval", "bleu"])
