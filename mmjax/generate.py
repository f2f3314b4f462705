"""`--mode=generate`: images from a text-to-image run's checkpoint for its eval captions."""

from __future__ import annotations

import copy
import dataclasses
import io

import jax
import numpy as np
from jax.sharding import Mesh

from mmjax import evaluate, inference, paths, sharding
from mmjax.evaluation import report, suite


def generate_checkpoint(config, workdir: str, mesh: Mesh | None = None) -> dict[str, object]:
    """`--mode=generate` (text-to-image models): an image for each caption of the eval split
    with the workdir's latest checkpoint, at config.generation's guidance scale, steps and seed
    (the best of its candidates by its rerank_with run, when it draws more than one).

    Writes WORKDIR/generated/images.npz (uint8 `images` and the `real_images` of the same
    captions, `captions`, `step`) and grid_0.png ... grid_7.png (the first 64, eight a figure,
    beside the real ones).
    """
    config = copy.deepcopy(config)
    with config.unlocked():
        config.evals = ()  # generating needs no judge
    trainer = evaluate.planned_trainer(config, workdir, mesh,
                                       mode_methods=("generate_candidates", "as_uint8"))
    evaluation = suite.Evaluation(
        trainer, dataclasses.replace(trainer.plan.eval_sets[0], evals=()))
    settings = config.generation
    manager, step, state = evaluate.restore_latest(trainer, workdir)
    candidates = int(settings.get("candidates", 1))

    def generate(params, tokens):
        with sharding.use_mesh_rules(trainer.mesh, trainer.rules):
            model = trainer.model(params)
            return model.as_uint8(model.generate_candidates(
                tokens, jax.random.key(int(settings.seed)), candidates, steps=int(settings.steps),
                guidance_scale=float(settings.guidance_scale),
                temperature=float(settings.temperature)))
    generate_step = evaluation.compile_over_batch(generate, 2)
    generated, real, tokens = [], [], []
    for local_batch in suite.open_eval_data(evaluation).batches():
        batch = trainer.global_batch(local_batch, keys=("tokens",))
        keep = suite.all_rows(local_batch["valid"]).astype(bool)
        generated.append(jax.device_get(generate_step(state["params"], batch["tokens"]))[keep])
        real.append(suite.all_rows(local_batch["image"])[keep])
        tokens.append(suite.all_rows(local_batch["tokens"])[keep])
    generated, real = np.concatenate(generated), np.concatenate(real)
    captions = [trainer.tokenizer.decode(row) for row in np.concatenate(tokens)]
    generated = inference.keep_one(generated, captions, settings.get("rerank_with"))
    out = paths.join(workdir, "generated")
    if jax.process_index() == 0:
        paths.makedirs(out)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, images=generated, captions=np.asarray(captions),
                            real_images=real, step=step)
        paths.write_bytes(paths.join(out, "images.npz"), buffer.getvalue())
        plt = report._pyplot()
        for start in range(0, min(len(captions), 64), 8):
            report.generation_figure(
                plt, paths.join(out, f"grid_{start // 8}.png"), captions[start:start + 8],
                {"real": real[start:start + 8],
                 f"generated (scale {float(settings.guidance_scale):g}"
                 + (f", best of {candidates})" if candidates > 1 else ")"):
                     generated[start:start + 8]})
        print(f"{len(captions)} images for the eval captions at step {step} in {out} "
              "(images.npz, grid_*.png).", flush=True)
    manager.close()
    return {"step": step, "images": generated, "captions": captions}
