#!/usr/bin/env python3
"""The MNIST worked example, trained the way FPT is run today: PyTorch + HF transformers.

Same recipe as `fpt train --task mnist` (and universal-computation's fpt.py): 4x4 patches of the
[0, 1] pixels -> 49 tokens of 16 values; input nn.Linear(16, hidden) with orthogonal_(gain=1.41)
and zero bias, dropout 0.1; the pretrained backbone frozen except layer norms and position
embeddings; output head on the last token's hidden state; Adam, grad-norm clip 1.0, cosine or
constant learning rate; evaluation of the whole held-out split every --eval-every steps.

It is the wall-time reference for the README's worked example: run it on the same machine, under
the same conditions, as `fpt train` and compare the `wall_seconds` of the two summaries.

Prints ONE JSON line: best and final held-out accuracy, wall_seconds, samples_per_second.
"""
import argparse
import json
import math
import os
import struct
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from transformers import AutoConfig, AutoModel  # noqa: E402


def read_idx(images_path):
    """(images [N, 28, 28] uint8, labels [N] int64) from an IDX pair (labels beside the images)."""
    labels_path = images_path.replace("images-idx3-ubyte", "labels-idx1-ubyte")
    with open(images_path, "rb") as f:
        _, n, rows, cols = struct.unpack(">IIII", f.read(16))
        images = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).view(n, rows, cols)
    with open(labels_path, "rb") as f:
        _, m = struct.unpack(">II", f.read(8))
        labels = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
    assert n == m, f"{images_path}: {n} images, {m} labels"
    return images, labels


def patches(images, p=4):
    """[N, 28, 28] uint8 -> [N, 49, 16] float in [0, 1], each token one p x p patch."""
    x = images.float() / 255.0
    n, h, w = x.shape
    x = x.view(n, h // p, p, w // p, p).permute(0, 1, 3, 2, 4)
    return x.reshape(n, (h // p) * (w // p), p * p)


class Fpt(nn.Module):
    def __init__(self, model_dir, dim, classes):
        super().__init__()
        config = AutoConfig.from_pretrained(model_dir)
        self.backbone = AutoModel.from_pretrained(model_dir, add_pooling_layer=False) \
            if config.model_type == "bert" else AutoModel.from_pretrained(model_dir)
        hidden = config.hidden_size
        self.input = nn.Linear(dim, hidden)
        nn.init.orthogonal_(self.input.weight, gain=1.41)
        nn.init.zeros_(self.input.bias)
        self.dropout = nn.Dropout(0.1)
        self.output = nn.Linear(hidden, classes)
        for name, p in self.backbone.named_parameters():
            p.requires_grad = any(k in name for k in ("LayerNorm", "ln_", "position_embeddings", "wpe"))

    def forward(self, x):
        h = self.backbone(inputs_embeds=self.dropout(self.input(x))).last_hidden_state
        return self.output(h[:, -1])


def evaluate(model, x, y, batch=256):
    model.eval()
    correct, loss = 0, 0.0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            logits = model(x[i:i + batch])
            loss += nn.functional.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
            correct += (logits.argmax(-1) == y[i:i + batch]).sum().item()
    model.train()
    return correct / len(x), loss / len(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--train", default="datasets/mnist/train-images-idx3-ubyte")
    ap.add_argument("--valid", default="datasets/mnist/test-images-idx3-ubyte")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--schedule", choices=["constant", "cosine"], default="cosine")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    xtr, ytr = read_idx(args.train)
    xva, yva = read_idx(args.valid)
    xtr, xva = patches(xtr), patches(xva)
    model = Fpt(args.model, xtr.shape[-1], 10)
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trained, lr=args.lr)
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * s / args.steps))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine if args.schedule == "cosine" else lambda s: 1.0)

    best, history = 0.0, []
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(xtr), (args.batch_size,))
        loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            acc, vloss = evaluate(model, xva, yva)
            best = max(best, acc)
            history.append({"step": step, "valid_accuracy": acc, "valid_loss": round(vloss, 4)})
    wall = time.perf_counter() - start
    print(json.dumps({
        "steps": args.steps, "best_valid_accuracy": best, "valid_accuracy": history[-1]["valid_accuracy"],
        "wall_seconds": round(wall, 1), "samples_per_second": round(args.steps * args.batch_size / wall, 1),
        "trainable_parameters": sum(p.numel() for p in trained), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "history": history,
    }))


if __name__ == "__main__":
    main()
