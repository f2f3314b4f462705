"""The evaluation suite: several eval sets in one run, real-shaped TFDS datasets (imagenet2012
with WordNet-id labels, coco_captions with five captions per image) read through their real
feature specs, OpenAI's class names and templates, and clip_benchmark-style results."""

import json
import os
import shutil

import numpy as np
import pytest

from conftest import copy_run, make_tiny_config, one_device_mesh
from mmjax import evaluate, preflight
from mmjax.evaluation import eval_sets, evaluators


@pytest.fixture(scope="module")
def standin_tfds(tfds_dir, tmp_path_factory):
    """The tiny mmjax_shapes beside the imagenet2012 and coco_captions stand-ins."""
    from input_pipeline.generated import standins

    data_dir = str(tmp_path_factory.mktemp("standins") / "tfds")
    shutil.copytree(tfds_dir, data_dir)
    standins.build(data_dir, imagenet_sizes={"train": 48, "validation": 40},
                   coco_sizes={"train": 8, "val": 8, "test": 24, "restval": 8}, image_size=20)
    return data_dir


def test_standins_have_the_real_feature_specs(standin_tfds):
    import tensorflow_datasets as tfds

    from input_pipeline import datasets

    for name, split in (("imagenet2012", "validation"), ("coco_captions", "test")):
        stored = tfds.builder(name, data_dir=standin_tfds)
        real = tfds.builder_cls(name)(data_dir=str(standin_tfds) + "_unused")
        assert stored.info.features.to_json() == real.info.features.to_json()
        assert stored.version == real.version and split in stored.info.splits
    imagenet = datasets.open_source(datasets.parse_spec("tfds:imagenet2012:validation", "test"),
                                    standin_tfds).adapter
    # Labels are WordNet ids (n01440764, ...); zero-shot reads OpenAI's names and 80 templates.
    assert tfds.builder("imagenet2012", data_dir=standin_tfds).info.features[
        "label"].names[0] == "n01440764"
    assert imagenet.class_names[:3] == ("tench", "goldfish", "great white shark")
    assert imagenet.class_names[-1] == "toilet paper" and len(imagenet.class_names) == 1000
    assert len(imagenet.prompt_templates) == 80 and "itap of a {}." in imagenet.prompt_templates


def two_set_config(data_dir):
    config = make_tiny_config(data_dir)
    config.eval_sets.imagenet = dict(data="tfds:imagenet2012:validation",
                                     evals=("zeroshot", "linear_probe"),
                                     probe_train="tfds:imagenet2012:train", probe_examples=48)
    config.eval_sets.coco = dict(data="tfds:coco_captions:test", evals=("retrieval",),
                                 captions_per_image=5)
    return config


def test_one_evaluation_of_imagenet_and_coco_writes_both(finished_run, standin_tfds, tmp_path,
                                                       monkeypatch):
    workdir = copy_run(finished_run, tmp_path / "run")
    seen = {}
    original = evaluators.class_embeddings

    def spy(context, class_names=None):
        seen.update(names=list(class_names), templates=list(context.prompt_templates))
        return original(context, class_names)

    monkeypatch.setattr(evaluators, "class_embeddings", spy)
    metrics = evaluate.evaluate_checkpoint(two_set_config(standin_tfds), workdir,
                                             mesh=one_device_mesh())
    # Zero-shot prompts are made from the real class names, not the WordNet ids.
    assert seen["names"][0] == "tench" and len(seen["names"]) == 1000
    assert "a photo of a {}." in seen["templates"] and len(seen["templates"]) == 80
    assert {"eval/imagenet/zeroshot_top1", "eval/imagenet/zeroshot_top5",
            "eval/imagenet/linear_probe_top1", "eval/coco/i2t_recall@1",
            "eval/coco/t2i_recall@5"} <= set(metrics)
    assert metrics["eval/coco/num_texts"] == 5 * 24 and metrics["eval/coco/num_candidates"] == 24
    with open(os.path.join(workdir, "eval_results.json")) as f:
        assert set(metrics) <= set(json.load(f))

    def benchmark_file(name):
        with open(os.path.join(workdir, "clip_benchmark", name)) as f:
            return json.load(f)

    zeroshot = benchmark_file("imagenet_zeroshot_classification.json")
    assert zeroshot["dataset"] == "imagenet1k" and zeroshot["task"] == "zeroshot_classification"
    assert zeroshot["metrics"] == {"acc1": metrics["eval/imagenet/zeroshot_top1"],
                                   "acc5": metrics["eval/imagenet/zeroshot_top5"],
                                   "mean_per_class_recall":
                                   metrics["eval/imagenet/zeroshot_mean_per_class"]}
    probe = benchmark_file("imagenet_linear_probe.json")
    assert probe["metrics"]["lp_acc1"] == metrics["eval/imagenet/linear_probe_top1"]
    retrieval = benchmark_file("coco_zeroshot_retrieval.json")
    assert retrieval["dataset"] == "mscoco_captions" and retrieval["language"] == "en"
    assert retrieval["metrics"]["image_retrieval_recall@5"] == metrics["eval/coco/t2i_recall@5"]
    assert retrieval["metrics"]["text_retrieval_recall@1"] == metrics["eval/coco/i2t_recall@1"]
    # Each named set has its own embeddings and report.
    embeddings = np.load(os.path.join(workdir, "eval_embeddings_imagenet.npz"))
    assert embeddings["class_embeddings"].shape[0] == 1000
    assert np.load(os.path.join(workdir, "eval_embeddings_coco.npz"))["image"].shape[0] == 24
    with open(os.path.join(workdir, "eval_report_imagenet.md")) as f:
        assert "zeroshot_top1" in f.read()
    with open(os.path.join(workdir, "eval_report_coco.md")) as f:
        assert "i2t_recall@1" in f.read()


def test_each_eval_set_keeps_its_own_interval(tiny_config, tmp_path):
    from mmjax import train

    tiny_config.total_steps = 3
    tiny_config.eval_sets.often = dict(data="tfds:mmjax_shapes/tiny:test", evals=("retrieval",),
                                       every_steps=1, max_examples=32)
    tiny_config.eval_sets.at_end = dict(data="tfds:mmjax_shapes/tiny:test", evals=("zeroshot",),
                                        max_examples=32)
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config, workdir, mesh=one_device_mesh())
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps_with = lambda metric: [r["step"] for r in rows if metric in r]
    assert steps_with("eval/often/i2t_recall@1") == [1, 2, 3]
    assert steps_with("eval/at_end/zeroshot_top1") == [3]
    assert [r for r in rows if "eval/often/num_candidates" in r][0][
        "eval/often/num_candidates"] == 32
    with open(os.path.join(workdir, "clip_benchmark", "at_end_zeroshot_classification.json")) as f:
        assert json.load(f)["dataset"] == "mmjax_shapes"


def test_preflight_names_each_bad_eval_set(tiny_config):
    tiny_config.eval_sets.coco = dict(data="", evals=("retrieval", "bleu"), every_step=5)
    tiny_config.eval_sets.imagenet = dict(data="tfds:imagenet2012", captions_per_image=0)
    with pytest.raises(preflight.ConfigError) as error:
        preflight.check(tiny_config)
    message = str(error.value)
    assert ("config.eval_sets.coco.every_step = 5: no such field; did you mean every_steps?"
            in message)
    assert "config.eval_sets.coco" in message and "names no dataset" in message
    assert "'bleu' is not an evaluator" in message
    assert "captions_per_image = 0 must be an integer of at least 1" in message
    sets = eval_sets.eval_sets(make_tiny_config("unused"))
    assert [s.name for s in sets] == [None] and sets[0].evals == ("retrieval", "zeroshot")


def test_prompt_tables_by_dataset_name():
    from input_pipeline import prompts

    assert len(prompts.zeroshot("imagenet_v2").templates) == 80
    assert prompts.zeroshot("imagenet_r").present_classes_only
    assert not prompts.zeroshot("imagenet2012/5.1.0").present_classes_only
    cifar = prompts.zeroshot("cifar100").templates
    assert (
        len(cifar) == 18
        and cifar[0] == "a photo of a {}."
        and cifar[-1] == "a photo of the big {}."
    )
    assert prompts.zeroshot("food101").templates == ("a photo of {}, a type of food.",)
    assert prompts.zeroshot("oxford_iiit_pet").clip_benchmark_name == "pets"
    assert prompts.zeroshot("my_dataset").templates == prompts.GENERAL_TEMPLATES
    # WordNet ids read as ImageNet names in any dataset; other names lose their underscores.
    assert prompts.class_names(["n01443537", "n15075141"]) == ("goldfish", "toilet paper")
    assert prompts.class_names(["aquarium_fish", "maple_tree"]) == ("aquarium fish", "maple tree")
    assert len(set(prompts.imagenet_class_names())) == 1000
