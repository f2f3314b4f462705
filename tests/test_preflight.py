"""Bad and unusual inputs, tried as a new user would: each works, or stops before anything is
compiled with a message that names the field and the fix (mmjax.preflight)."""

import os
import re

import jax
import ml_collections
import numpy as np
import pytest

from conftest import REPO_ROOT, copy_run
from input_pipeline import pipeline
from mmjax import evaluate, generate, preflight, sharding
from mmjax.training.trainer import Trainer

FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures")


def problems(config, **kwargs) -> str:
    """The preflight's message for `config` (it must find a problem)."""
    with pytest.raises(preflight.ConfigError) as error:
        preflight.check(config, **kwargs)
    return str(error.value)


def set_field(config, dotted: str, value):
    *parents, last = dotted.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[last] = value


# (field to set, value, what the message must say): one bad input each, config alone.
BAD_FIELDS = [
    ("losses", {"sigmoid": 1.0}, r"config\.losses = .*unknown losses \['sigmoid'\].*Fix: use names "
     r"from \['caption', 'classification', 'clip', 'distill', 'itm', 'masked_image_tokens', "
     r"'mlm', 'reconstruction', 'siglip'\]"),
    ("losses", {"clip": -1.0}, r"config\.losses\.clip = .*positive number"),
    ("evals", ("retrieval", "bleu"), r"config\.evals = .*'bleu' is not an evaluator.*'zeroshot'\]"),
    ("batch_size", 12, r"config\.batch_size = 12: does not split .* over the 8 devices.*"
     r"Fix: use a multiple of 8, e.g\. 8 or 16"),
    ("grad_accum_steps", 3, r"config\.batch_size = 16: does not split into 3 micro-batch.*"
     r"multiple of 24"),
    ("mesh.data", 3, r"config\.mesh = .*3.*Fix: make the sizes multiply to the 8 devices"),
    ("mesh.fsdp", -1, r"config\.mesh = .*at most one axis to -1"),
    ("sharding_rules", "zero3", r"config\.sharding_rules = 'zero3': Unknown sharding rules preset"),
    ("total_steps", 0, r"config\.total_steps = 0: must be an integer of at least 1"),
    ("learning_rate", 0.0, r"config\.learning_rate = 0\.0: must be a positive number"),
    ("data.max_bad_fraction", 5, r"config\.data\.max_bad_fraction = 5\.0: must be a fraction"),
    ("data.normalization", "imagenet", r"config\.data\.normalization = 'imagenet'.*\['clip', "
     r"'minus_one_one'\]"),
    ("tokenizer.name", "wordpiece", r"config\.tokenizer\.name = 'wordpiece': is not a tokenizer.*"
     r"'sentencepiece'"),
    ("tokenizer.vocabulary_file", "/nowhere/vocab.txt", r"config\.tokenizer\.vocabulary_file = "
     r"'/nowhere/vocab.txt'.*No such file.*Fix: give the words tokenizer's vocabulary file"),
    ("tokenizer.vocabulary_file", None, r"config\.tokenizer\.vocabulary_file = None: The 'words' "
     r"tokenizer needs config\.tokenizer\.vocabulary_file"),
    ("data.probe_examples", 0, r"config\.data\.probe_examples = 0: must be an integer"),
    ("model.text_tower.context_length", 20, r"config\.model\.text_tower\.context_length = 20: "
     r"differs from the tokenizer's \(12\).*leave it unset"),
    ("tokenizer.context_length", 2, r"config\.tokenizer\.context_length = 2: leaves no room"),
    ("data.image_size", 18, r"config\.model: image_size 18 is not divisible by patch size 4"),
    ("model.dtype", "float8", r"config\.model\.dtype = 'float8': is not a valid choice\. Fix: use "
     r"one of \['bfloat16', 'float16', 'float32'\]\.$"),
    ("model.remat", "everything", r"config\.model\.remat = 'everything'.*'save_dots'"),
    ("model.image_tower.patch_dropout", 1.0, r"config\.model\.image_tower\.patch_dropout = "
     r"1\.0: must be a fraction in \[0, 1\)\. Fix: for example 0\.5"),
    ("model.image_tower.pooling", "max", r"config\.model: Unknown ViT pooling 'max'.*'map'"),
    ("model.image_tower.variant", "X/16", r"config\.model: Unknown ViT variant 'X/16'"),
    ("model.name", "blip", r"config\.model: Unknown model 'blip'; valid names: \['clip', "
     r"'coca', 'fusion', 'fusion_classifier', 'image_tokenizer', 'text_to_image'\]"),
    ("evals", ("retrieval", "captioning"), r"config\.evals = .*'captioning' evaluator needs a "
     r"model that has \['start_decoding', 'decode_step'\], which the 'clip' model has not"),
    ("losses", {"clip": 1.0, "mlm": 1.0}, r"the 'mlm' loss reads \['mlm_logits', 'mlm_mask'\], "
     r"which the 'clip' model does not output.*Fix: use a model with a fusion encoder"),
    ("losses", {"siglip": 1.0}, r"the 'siglip' loss reads \['logit_bias'\].*config\.model\."
     r"logit_bias_init"),
    ("losses", {"clip": 1.0, "distill": 1.0}, r"config\.distill\.teacher = None: the distill "
     r"loss needs a trained teacher"),
    ("init_from.checkpoint", "/nowhere/run", r"config\.init_from\.checkpoint = '/nowhere/run': "
     r"holds no mmjax checkpoint"),
    ("init_from.params", ("text_tower",), r"config\.init_from\.params = .*no checkpoint is given"),
    ("frozen_params", ("vision_tower",), r"config\.frozen_params = .*'vision_tower' names no "
     r"parameter.*'image_tower'"),
    ("optimizer.lr_mults", (("vision_tower", 0.5),), r"config\.optimizer\.lr_mults = .*"
     r"'vision_tower' names no parameter.*'image_tower'"),
    ("optimizer.lr_mults", (("text_tower", 0),), r"config\.optimizer\.lr_mults = .*not "
     r"\(prefix, multiplier\) pairs with multipliers above 0.*config\.frozen_params"),
    ("model.attention_implementation", "cudnn", r"'cudnn' needs NVIDIA GPUs .*found cpu.*"
     r"Fix: set it to 'xla'"),
    ("keep_best_mode", "maximum", r"config\.keep_best_mode = 'maximum': must be 'max' or 'min'"),
    ("keep_best_by", "i2t_recall@1", r"config\.keep_best_by = 'i2t_recall@1': is not an eval "
     r"metric name.*'eval/mmjax_shapes/i2t_recall@1'"),
    ("caption.beam_size", 0, r"config\.caption\.beam_size = 0"),
    ("profile_steps", (5, 2), r"config\.profile_steps = \[5, 2\]: must be \(first, last\)"),
    ("keep_best_by", "eval/mmjax_shapes/i2t_recall@7", r"config\.keep_best_by = .*recall@7': is "
     r"not a metric this run's evaluation logs.*i2t_recall@10"),
]


@pytest.mark.parametrize("field,value,expected", BAD_FIELDS,
                         ids=[f"{f}={v}" for f, v, _ in BAD_FIELDS])
def test_a_bad_field_is_named_with_its_fix(tiny_config, field, value, expected):
    set_field(tiny_config, field, value)
    assert re.search(expected, problems(tiny_config), re.S), problems(tiny_config)


def test_a_learning_rate_multiplier_on_a_frozen_part_is_named(tiny_config):
    tiny_config.frozen_params = ("image_tower",)
    tiny_config.optimizer.lr_mults = (("image_tower/blocks", 0.5), ("text_tower", 2.0))
    message = problems(tiny_config)
    assert re.search(r"config\.optimizer\.lr_mults = .*'image_tower/blocks' is frozen", message)
    assert "'text_tower' is frozen" not in message


def test_every_problem_is_reported_at_once(tiny_config):
    tiny_config.total_steps = 0
    tiny_config.batch_size = 12
    tiny_config.tokenizer.name = "wordpiece"
    tiny_config.evals = ("bleu",)
    message = problems(tiny_config)
    assert message.startswith("The preflight found 4 problem(s) before compiling anything:")
    for field in ("config.total_steps = 0", "config.evals = ['bleu']", "config.batch_size = 12",
                  "config.tokenizer.name = 'wordpiece'"):
        assert f"\n  - {field}: " in message, field


def test_the_trainer_runs_the_preflight_before_building_anything(tiny_config, monkeypatch):
    """The trainer's state is not even traced (let alone compiled) for a config with a problem."""
    tiny_config.batch_size = 12
    traced = []
    monkeypatch.setattr(Trainer, "_init_state", lambda self: traced.append(1))
    with pytest.raises(preflight.ConfigError, match="config.batch_size = 12"):
        Trainer(tiny_config)
    assert not traced


def test_bytes_from_the_command_line_switches_tokenizer(tiny_config):
    """`--config.tokenizer.name=bytes` alone (the words list's vocabulary_file left in place, or
    set to None) works: fields a tokenizer does not take are ignored."""
    tiny_config.tokenizer.name = "bytes"
    tiny_config.tokenizer.context_length = 48
    assert Trainer(tiny_config).tokenizer.vocab_size == 260
    tiny_config.tokenizer.vocabulary_file = None
    preflight.check(tiny_config)


def test_an_odd_number_of_devices(tiny_config):
    """3 devices: a batch of 16 cannot split over them (the fix names 15 and 18); the eval
    batch is padded to a multiple of 3 instead of failing."""
    mesh = sharding.create_mesh({"data": 3}, jax.devices()[:3])
    assert re.search(r"batch_size = 16: .*over the 3 devices.*e\.g\. 15 or 18",
                     problems(tiny_config, mesh=mesh))
    tiny_config.batch_size = 15
    tiny_config.data.eval_batch_size = 250
    plan = preflight.check(tiny_config, mesh=mesh)
    assert plan.eval_batch_size == 252
    assert any("padded to 252" in note for note in plan.notes)


def test_the_smoke_config_on_8_devices_pads_its_eval_batch(tfds_dir):
    """configs/smoke.py's eval batch of 250 over 8 devices: padded to 256, not refused (the
    shared finished run trains and evaluates with it on 8 devices)."""
    from configs import smoke

    config = smoke.get_config()
    config.data.tfds_data_dir = tfds_dir
    plan = preflight.check(config)
    assert plan.eval_batch_size == 256 and plan.evals == ("retrieval", "zeroshot", "linear_probe")


def test_metric_and_preprocessing_names_are_checked_against_the_data(tiny_config):
    tiny_config.keep_best_by = "eval/coco/i2t_recall@1"
    tiny_config.data.train_preprocess = "decode|blur(radius=2)"
    tiny_config.data.eval_preprocess = "decode|resize(size=)"
    message = problems(tiny_config, data=pipeline)
    assert re.search(r"config\.keep_best_by = 'eval/coco/i2t_recall@1': is not a metric this "
                     r"run's evaluation logs\. Fix: name one of eval/mmjax_shapes/\{", message)
    assert re.search(r"config\.data\.train_preprocess = 'decode\|blur\(radius=2\)': Unknown "
                     r"preprocessing op 'blur'.*'inception_crop'", message)
    assert re.search(r"config\.data\.eval_preprocess = .*not of the form name or name\(literal",
                     message)


def test_data_problems_name_the_spec_and_the_fix(tiny_config, tmp_path):
    tiny_config.data.train = "mmjax_shapes"
    tiny_config.data.eval = f"shards:{tmp_path}/missing"
    tiny_config.data.probe_train = "tfds:not_prepared_here"
    message = problems(tiny_config, data=pipeline)
    assert re.search(r"config\.data\.train = 'mmjax_shapes': Dataset spec .*not of the form "
                     r"'tfds:NAME\[:SPLIT\]'", message)
    assert re.search(r"config\.data\.eval = .*missing", message)


def test_a_classification_loss_on_data_without_labels(tiny_config, user_data):
    tiny_config.model.name = "fusion_classifier"
    tiny_config.model.num_classes = 3
    tiny_config.model.text_tower.causal = False
    tiny_config.model.fusion_encoder = {"depth": 1}
    tiny_config.losses = {"classification": 1.0}
    tiny_config.evals = ("classification",)
    tiny_config.tokenizer.update(name="bytes", context_length=64)
    tiny_config.data.train = f"shards:{user_data['output']}:train"
    tiny_config.data.eval = f"shards:{user_data['output']}:test"
    message = problems(tiny_config, data=pipeline)
    assert re.search(r"config\.losses = .*a loss reads labels and shards:.*:train has none.*"
                     r"`label` column", message)


def test_own_captions_with_the_words_tokenizer_stop_with_the_fix(tiny_config, user_data):
    """The smoke config's 41-word list on a user's captions: most of their words would become
    one unknown id. The preflight stops and names both fixes."""
    tiny_config.data.train = f"shards:{user_data['output']}:train"
    tiny_config.data.eval = f"shards:{user_data['output']}:test"
    message = problems(tiny_config, data=pipeline)
    assert re.search(r"config\.tokenizer\.name = 'words': \d+% of the tokens of \d+ sampled "
                     r"captions of shards:.* are unknown to this words vocabulary \(45 ids\)",
                     message), message
    assert re.search(r"Fix: --config\.tokenizer\.name=bytes --config\.tokenizer\.context_length="
                     r"\d+ .*make_vocab --input=shards:.*sentencepiece", message)


def test_bytes_with_a_short_context_would_truncate(tiny_config, user_data):
    tiny_config.tokenizer.name = "bytes"  # 12 tokens: 10 bytes of text
    tiny_config.data.train = f"shards:{user_data['output']}:train"
    message = problems(tiny_config, data=pipeline, roles=("train",))
    match = re.search(r"config\.tokenizer\.context_length = 12: (\d+)% of \d+ sampled captions "
                      r".* would lose their ends\. Fix: raise it to (\d+)", message)
    assert match and int(match.group(1)) > 90 and int(match.group(2)) > 40


def test_unlabeled_own_data_skips_the_evaluators_it_cannot_feed(tiny_config, user_data):
    tiny_config.tokenizer.update(name="bytes", context_length=80)
    tiny_config.data.train = f"shards:{user_data['output']}:train"
    tiny_config.data.eval = f"shards:{user_data['output']}:test"
    tiny_config.evals = ("retrieval", "zeroshot", "linear_probe")
    plan = preflight.check(tiny_config, data=pipeline)
    assert plan.evals == ("retrieval",)
    assert [n for n in plan.notes if "skipped" in n] == [
        f"evaluator 'zeroshot' skipped: shards:{user_data['output']}:test has no class names.",
        f"evaluator 'linear_probe' skipped: shards:{user_data['output']}:test has no labels (for "
        "your own shards: a `label` column in make_shards' input)."]


def test_a_batch_larger_than_the_dataset(tiny_config, user_data):
    tiny_config.tokenizer.update(name="bytes", context_length=80)
    tiny_config.data.train = f"shards:{user_data['output']}:test"  # 32 images
    tiny_config.batch_size = 64
    assert re.search(r"config\.batch_size = 64: is larger than the 32 examples",
                     problems(tiny_config, data=pipeline,
                              roles=("train",)))


def test_a_workdir_that_is_a_file_or_holds_another_model(finished_run, tiny_config, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert re.search(r"--workdir = .*notes.txt': is a file", problems(tiny_config,
                                                                      workdir=str(a_file)))
    workdir = copy_run(finished_run, tmp_path / "run")
    before = {name: os.path.getmtime(os.path.join(workdir, name)) for name in os.listdir(workdir)}
    tiny_config.model.text_tower.width = 48
    message = problems(tiny_config, workdir=workdir)
    assert re.search(r"holds checkpoints of another model.*text_tower/.*\(32, 2, 16\) saved, "
                     r"\(48, 2, 24\) here.*Fix: use a new --workdir, or this run's own config",
                     message, re.S)
    after = {name: os.path.getmtime(os.path.join(workdir, name)) for name in os.listdir(workdir)}
    assert after == before  # nothing was written


def test_a_run_that_resumes_needs_not_the_run_it_started_from(finished_run, tiny_config,
                                                              tmp_path):
    """Generating from a finished run whose init_from run is gone: the run resumes from its own
    checkpoint, so init_from is not checked; a fresh workdir still needs it."""
    tiny_config.init_from.checkpoint = str(tmp_path / "deleted_run")
    tiny_config.init_from.params = ("text_tower",)
    preflight.check(tiny_config, workdir=copy_run(finished_run, tmp_path / "run"))
    assert re.search(r"config.init_from.checkpoint = .*deleted_run': holds no mmjax checkpoint",
                     problems(tiny_config, workdir=str(tmp_path / "fresh")))


def test_a_workdir_of_the_older_checkpoint_layout_is_refused_its_parameters_load(
        finished_run, tiny_config, tmp_path):
    """Checkpoints saved as orbax's single item with data_state.json beside them (before the
    input position moved into the checkpoint): not resumed, said so, left as they are; their
    parameters still load (init_from, a teacher, inference)."""
    import orbax.checkpoint as ocp

    from mmjax.training import checkpoint

    directory, step = checkpoint.find_checkpoint(finished_run[0])
    with ocp.CheckpointManager(directory, item_handlers={
            "state": ocp.StandardCheckpointHandler()}) as manager:
        state = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))["state"]
    old = tmp_path / "old"
    with ocp.CheckpointManager(str(old / "checkpoints"),
                               item_handlers=ocp.StandardCheckpointHandler()) as manager:
        manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
    (old / "data_state.json").write_text("{}")
    before = sorted(os.listdir(old / "checkpoints" / str(step)))
    assert re.search(r"--workdir = .*old': holds checkpoints in the layout of mmjax before "
                     r"2026-12-02.*Fix: finish that run .* --config.init_from.checkpoint=",
                     problems(tiny_config, workdir=str(old)), re.S)
    assert sorted(os.listdir(old / "checkpoints" / str(step))) == before
    assert "default" in before and "state" not in before
    loaded, expected = checkpoint.load_params(str(old)), checkpoint.load_params(finished_run[0])
    assert sorted(loaded) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(loaded[name], expected[name])


def test_evaluating_nothing_or_writing_nowhere(tiny_config, tmp_path, monkeypatch):

    with pytest.raises(preflight.ConfigError, match=r"--workdir = .*empty': holds no checkpoint "
                       r"to evaluate\. Fix: train first"):
        evaluate.evaluate_checkpoint(tiny_config, str(tmp_path / "empty"))
    # A folder this user cannot write to (made so by the check's view of it: root writes
    # anywhere a real permission would forbid).
    from mmjax.preflight import path_checks

    locked = str(tmp_path / "locked")
    os.mkdir(locked)
    real_access = os.access
    monkeypatch.setattr(path_checks.os, "access",
                        lambda path, mode: path != locked and real_access(path, mode))
    assert re.search(r"--workdir = .*/locked/run': cannot be written \(.*/locked is not "
                     r"writable\)", problems(tiny_config, workdir=os.path.join(locked, "run")))


def test_captions_of_a_model_that_cannot_caption(finished_run, tiny_config):

    with pytest.raises(preflight.ConfigError, match=r"config\.model\.name = 'clip': this mode "
                       r"runs the 'captioning' evaluator, which needs a model that has "
                       r"\['start_decoding', 'decode_step'\]"):
        evaluate.caption_checkpoint(tiny_config, finished_run[0])


def test_images_from_a_model_that_cannot_generate(finished_run, tiny_config):
    with pytest.raises(preflight.ConfigError, match=r"config\.model\.name = 'clip': this mode "
                       r"calls \['generate_candidates', 'as_uint8'\], which the 'clip' model "
                       r"has not"):
        generate.generate_checkpoint(tiny_config, finished_run[0])


def test_a_warmup_longer_than_the_run_is_noted(tiny_config):
    tiny_config.warmup_steps = 50
    notes = preflight.check(tiny_config).notes
    assert any("warmup_steps (50) is more than config.total_steps (8)" in n for n in notes)


def test_a_workdir_from_an_older_version_still_evaluates(finished_run, tmp_path):
    """configs/from_workdir.py fills fields an older config.json lacks from the base config."""
    import json

    from configs import from_workdir

    workdir = copy_run(finished_run, tmp_path / "old")
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        saved = json.load(f)
    for newer in ("caption", "distill", "profile_steps"):
        del saved[newer]
    with open(path, "w") as f:
        json.dump(saved, f)
    config = from_workdir.get_config(workdir)
    assert config.caption.beam_size == 1 and config.profile_steps == ()
    assert config.model.text_tower.width == 32  # saved values stay
    preflight.check(config, workdir=workdir)


def test_distillation_teacher_must_see_the_same_inputs(finished_run, tiny_config):
    teacher, _ = finished_run
    tiny_config.losses = {"clip": 1.0, "distill": 1.0}
    tiny_config.distill.teacher = teacher
    preflight.check(tiny_config)
    tiny_config.data.image_size = 8
    assert re.search(r"config\.data\.image_size = 8: differs from the teacher's \(16\)",
                     problems(tiny_config))


def test_init_from_params_that_do_not_fit(finished_run, tiny_config):
    tiny_config.init_from.checkpoint = finished_run[0]
    tiny_config.init_from.params = ("text_tower",)
    tiny_config.model.text_tower.width = 64
    assert re.search(r"config\.init_from\.params = .*shapes differ.*text_tower/.*\(32, 2, 16\) "
                     r"saved, \(64, 2, 32\) here", problems(tiny_config), re.S)


def test_grad_accumulation_with_a_model_that_draws_batch_labels(tiny_config):
    tiny_config.model.name = "fusion"
    tiny_config.model.text_tower.causal = False
    tiny_config.model.fusion_encoder = {"depth": 1}
    tiny_config.losses = {"clip": 1.0, "itm": 1.0}
    tiny_config.grad_accum_steps = 2
    assert re.search(r"config\.grad_accum_steps = 2: micro-batches cannot be used with a model "
                     r"that draws batch-wide labels \(\['itm_labels'\]\)", problems(tiny_config))


CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO_ROOT, "configs"))
                 if f.endswith(".py") and f not in ("__init__.py", "common.py", "from_workdir.py"))
# Runs these configs start from, which a fresh clone has not trained.
UNTRAINED_PATHS = {"smoke_distill": "config.distill.teacher",
                   "smoke_vqa": "config.init_from.checkpoint",
                   "smoke_t2i": "config.init_from.checkpoint",
                   "clip_b16_flip_unmasked": "config.init_from.checkpoint"}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_passes_the_preflight(name, tfds_dir, tmp_path, monkeypatch):
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config()
    config.data.tfds_data_dir = tfds_dir
    if name not in UNTRAINED_PATHS:
        preflight.check(config)
        return
    # Their relative workdir/... paths read from an empty folder: README's first command may
    # have trained workdir/smoke in this checkout.
    monkeypatch.chdir(tmp_path)
    message = problems(config)
    assert message.count("\n  - ") == 1 and f"- {UNTRAINED_PATHS[name]} = 'workdir/" in message


def test_evaluating_a_distilled_run_needs_no_teacher(tiny_config):
    tiny_config.losses = {"clip": 1.0, "distill": 1.0}
    tiny_config.distill.teacher = "/nowhere/teacher"
    assert "config.distill.teacher" in problems(tiny_config)  # training reads it
    preflight.check(tiny_config, roles=("eval",))  # evaluation never loads it


def test_eval_set_filters_and_audio_chains_are_checked_against_the_data(tiny_config):
    tiny_config.eval_sets = {"held_out": dict(data=tiny_config.data.eval, evals=("retrieval",),
                                              where="not unseen_combo")}
    message = problems(tiny_config, data=pipeline)
    assert ("config.eval_sets.held_out.where = 'not unseen_combo': selects by 'unseen_combo', a "
            "feature" in message and "'unseen_combination'" in message), message

    tiny_config.eval_sets = {}
    tiny_config.model.audio_tower = ml_collections.ConfigDict(dict(name="ast", variant="mu/16"))
    tiny_config.data.audio.train_preprocess = "decode_wav|resample|crop_or_pad"
    tiny_config.data.audio.eval_preprocess = "decode_wav|resample|mel"
    message = problems(tiny_config, data=pipeline)
    assert ("config.data.audio.train_preprocess = 'decode_wav|resample|crop_or_pad': Audio chain "
            "'decode_wav|resample|crop_or_pad' gives no spectrogram: it needs a log_mel op"
            in message), message
    assert "config.data.audio.eval_preprocess = " in message
    assert "Unknown preprocessing op 'mel'" in message
