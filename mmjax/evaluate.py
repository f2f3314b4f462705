"""`--mode=eval` and `--mode=caption`: a finished run's latest checkpoint, evaluated.

The trainer built here holds what evaluation reads (the model, the mesh, the state to restore
into) and no distillation teacher; the preflight sees the workdir and the eval data only.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
from jax.sharding import Mesh

from input_pipeline import pipeline
from mmjax import conventions, paths, preflight
from mmjax.evaluation import evaluators, report
from mmjax.evaluation.suite import EvalSuite, Evaluation, all_rows, open_eval_data
from mmjax.training import checkpoint
from mmjax.training.trainer import Trainer


def restore_latest(trainer: Trainer, workdir: str):
    """(the checkpoint manager, the latest step, the state restored onto the trainer's mesh)."""
    manager = checkpoint.create_manager(workdir, keep=None)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"No checkpoint under {manager.directory}: train first, or point "
                                "--workdir at a run that has one.")
    return manager, step, trainer.restore(manager, step)


def planned_trainer(config, workdir: str, mesh: Mesh | None, required_evals=(),
                    mode_methods=()) -> Trainer:
    """A trainer for a finished run: the preflight sees its workdir and the eval data only, and
    whether the model has the `mode_methods` the mode calls."""
    plan = preflight.check(config, mesh=mesh, data=pipeline,
                           roles=("eval",), workdir=workdir, required_evals=required_evals,
                           mode_methods=mode_methods, needs_checkpoint=True)
    plan.print_notes()
    return Trainer(config, mesh=mesh, plan=plan, with_teacher=False)


def caption_checkpoint(config, workdir: str, mesh: Mesh | None = None) -> dict[str, float]:
    """`--mode=caption`: captions the eval split with the workdir's latest checkpoint.

    Writes WORKDIR/captions.jsonl (reference and generated text per image) and prints the
    captioning metrics next to the most-frequent-caption baseline's.
    """
    trainer = planned_trainer(config, workdir, mesh, required_evals=("captioning",))
    captioning = evaluators.EVALUATORS["captioning"]
    evaluation = Evaluation(trainer, dataclasses.replace(trainer.plan.eval_sets[0],
                                                         evals=("captioning",)))
    manager, step, state = restore_latest(trainer, workdir)
    generated, references = [], []
    for local_batch in open_eval_data(evaluation).batches():
        key = conventions.BATCH_KEYS[trainer.model_modalities[0]]  # the captioned modality's
        batch = trainer.global_batch(local_batch, keys=(key,))
        tokens = jax.device_get(evaluation.caption_step(state["params"], batch[key]))
        keep = all_rows(local_batch["valid"]).astype(bool)
        generated.append(tokens[keep])
        references.append(all_rows(local_batch["tokens"])[keep])
    generated, references = np.concatenate(generated), np.concatenate(references)
    context = evaluators.EvalContext(
        embeddings={}, labels=None, class_names=(),
        prompt_templates=(), encode_texts=None, tokens=references,
        extra={"caption_tokens": generated}, tokenizer=trainer.tokenizer)
    metrics = {"step": step, **captioning.compute(context)}
    if jax.process_index() == 0:
        decode = trainer.tokenizer.decode
        paths.write_text(paths.join(workdir, "captions.jsonl"), "".join(
            json.dumps({"reference": decode(reference), "generated": decode(caption_row)}) + "\n"
            for reference, caption_row in zip(references, generated)))
        for reference, caption_row in list(zip(references, generated))[:5]:
            print(f"  {decode(caption_row)!r}  (reference: {decode(reference)!r})")
        for name, value in metrics.items():
            print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    manager.close()
    return metrics


def evaluate_checkpoint(config, workdir: str, mesh: Mesh | None = None) -> dict[str, float]:
    """`--mode=eval`: evaluates the workdir's latest checkpoint on every eval set; writes
    eval_results.json, clip_benchmark/*.json, the embeddings (eval_embeddings.npz) and the report
    (eval_report.md with PNG figures; those of a named eval set have its name:
    eval_report_coco.md).

    The checkpoint may come from any mesh; it is laid out for this one (`mesh`, or config.mesh).
    """
    trainer = planned_trainer(config, workdir, mesh)
    manager, step, state = restore_latest(trainer, workdir)
    reports: list = []
    suite = EvalSuite(trainer)
    metrics = suite.run(state["params"], step, reports=reports)
    if jax.process_index() == 0:
        paths.write_text(paths.join(workdir, "eval_results.json"),
                         json.dumps({"step": step, **metrics}, indent=2))
        suite.write_benchmark_results(config, workdir, step, metrics)
        for name, value in metrics.items():
            print(f"{name}: {value:.4f}")

        for eval_set, data, details in reports:
            suffix = f"_{eval_set.name}" if eval_set.name else ""
            zeroshot = next((v for k, v in details["details"].items()
                             if k.endswith("zeroshot")), {})
            with paths.Path(paths.join(workdir, f"eval_embeddings{suffix}.npz")).open("wb") as f:
                np.savez(f, **details["embeddings"], labels=details["labels"],
                         captions=np.asarray(details.get("captions", ())), **(
                             {"class_embeddings": zeroshot["class_embeddings"]} if zeroshot
                             else {}))
            set_metrics = {k: v for k, v in metrics.items()
                           if k.startswith(f"eval/{data.name}/")}
            path = report.write_report(workdir, step=step, metrics=set_metrics, details=details,
                                       config_name=config.get("name", ""),
                                       set_name=suffix.lstrip("_"))
            print(f"Report: {path}")
    manager.close()
    return metrics
