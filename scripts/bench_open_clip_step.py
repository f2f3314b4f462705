"""open_clip's own CLIP training step on synthetic batches, timed as mmjax.tools.benchmark times
mmjax's.

Runs in an environment with torch and open_clip_torch (not needed by mmjax); prints JSON.
scripts/cpu_step_side_by_side.py calls it for the CPU comparison; on a GPU:

    python scripts/bench_open_clip_step.py --model=ViT-B-16 --batch_size=512 --device=cuda \
        --precision=amp_bf16 [--compile]

The step is open_clip_train's: forward under autocast, ClipLoss, backward, AdamW (no weight
decay on gains, biases and the logit scale, as open_clip_train/main.py groups them), then the
logit scale clamped to ln(100). Without --model, a small CLIP is built from the shape flags.
"""

import argparse
import json
import math
import time
from contextlib import nullcontext

import open_clip
import torch
from open_clip.loss import ClipLoss
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=None, help="an open_clip model name (e.g. ViT-B-16); "
                    "none: the small CLIP given by the shape flags")
parser.add_argument("--image_size", type=int, default=64)
parser.add_argument("--patch_size", type=int, default=8)
parser.add_argument("--vision_width", type=int, default=128)
parser.add_argument("--vision_layers", type=int, default=4)
parser.add_argument("--vision_heads", type=int, default=4)
parser.add_argument("--vision_mlp", type=int, default=512)
parser.add_argument("--text_width", type=int, default=128)
parser.add_argument("--text_layers", type=int, default=4)
parser.add_argument("--text_heads", type=int, default=4)
parser.add_argument("--context_length", type=int, default=32)
parser.add_argument("--vocab_size", type=int, default=49_408)
parser.add_argument("--embed_dim", type=int, default=128)
parser.add_argument("--batch_size", type=int, default=64)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--warmup", type=int, default=3)
parser.add_argument("--device", default="cpu")
parser.add_argument("--precision", default="fp32", choices=("fp32", "amp_bf16"))
parser.add_argument("--compile", action="store_true", help="torch.compile the model")
parser.add_argument("--grad_clip_norm", type=float, default=0.0, help="0: no clipping "
                    "(open_clip's default)")
parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
args = parser.parse_args()

if args.threads:
    torch.set_num_threads(args.threads)
torch.manual_seed(0)
device = torch.device(args.device)
if args.model:
    model = open_clip.create_model(args.model, pretrained=None, output_dict=True)
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    context_length, vocab_size = model.context_length, model.vocab_size
else:
    vision = CLIPVisionCfg(layers=args.vision_layers, width=args.vision_width,
                           head_width=args.vision_width // args.vision_heads,
                           mlp_ratio=args.vision_mlp / args.vision_width,
                           patch_size=args.patch_size, image_size=args.image_size)
    text = CLIPTextCfg(context_length=args.context_length, vocab_size=args.vocab_size,
                       width=args.text_width, heads=args.text_heads, layers=args.text_layers)
    model = CLIP(embed_dim=args.embed_dim, vision_cfg=vision, text_cfg=text, output_dict=True)
    image_size, context_length, vocab_size = args.image_size, args.context_length, args.vocab_size
model = model.to(device).train()
parameters = sum(p.numel() for p in model.parameters())

exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
named = list(model.named_parameters())
optimizer = torch.optim.AdamW(
    [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
     {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.2}],
    lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
loss_fn = ClipLoss()
forward = torch.compile(model) if args.compile else model
autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "amp_bf16"
            else nullcontext())

generator = torch.Generator().manual_seed(0)
images = torch.randn(args.batch_size, 3, image_size, image_size, generator=generator).to(device)
texts = torch.randint(1, vocab_size, (args.batch_size, context_length),
                      generator=generator).to(device)


def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
        out = forward(images, texts)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
    loss.backward()
    if args.grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm)
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss


def synchronize():
    if device.type == "cuda":
        torch.cuda.synchronize()


compile_start = time.perf_counter()
for _ in range(args.warmup):
    loss = step()
synchronize()
warmup_seconds = time.perf_counter() - compile_start
start = time.perf_counter()
for _ in range(args.steps):
    loss = step()
synchronize()
step_seconds = (time.perf_counter() - start) / args.steps
result = {
    "open_clip": open_clip.__version__, "torch": torch.__version__,
    "model": args.model or "small", "device": args.device, "precision": args.precision,
    "compile": args.compile, "threads": torch.get_num_threads(), "parameters": parameters,
    "global_batch_size": args.batch_size, "step_seconds": step_seconds,
    "pairs_per_second": args.batch_size / step_seconds, "warmup_seconds": warmup_seconds,
    "final_loss": float(loss),
}
if device.type == "cuda":
    result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
print(json.dumps(result))
