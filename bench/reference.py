#!/usr/bin/env python3
"""Reference FPT (Frozen Pretrained Transformer) benchmark: PyTorch + HF transformers.

This is the way FPT is run today (Lu et al. 2021, github.com/kzl/universal-computation):
a Python training loop around HF `GPT2Model` (or `BertModel`) in fp32, fed `inputs_embeds`.
It is the baseline our Rust (tch-rs) implementation is compared against.

Recipe (mirrors universal-computation/universal_computation/fpt.py):
  * transformer = GPT2Model(config) / BertModel(config, add_pooling_layer=False), randomly
    initialised from a config of the real shapes (no download; speed does not depend on values),
    attention implementation "sdpa" (the transformers default), fed `inputs_embeds` only.
  * input layer  nn.Linear(dim, hidden), orthogonal_(gain=1.41), zero bias, then Dropout(0.1).
  * output head  nn.Linear(hidden, classes) on the hidden state of the LAST token.
  * frozen: every transformer parameter except layer norms (GPT-2 `ln_1/ln_2/ln_f`, BERT
    `LayerNorm`) and position embeddings (GPT-2 `wpe`, BERT `position_embeddings`).
    Input and output layers are trained.
  * training: model.train() (dropout on), Adam lr 1e-3, clip_grad_norm_(trainable, 1.0),
    cross-entropy on random integer labels.
  * inference: model.eval() + torch.inference_mode(), batches of the same size.
  * --precision bf16: torch.autocast("cpu", bfloat16) around forward (+ loss), train and infer;
    fp32: exactly as written above.

Timing uses time.perf_counter(); warmup steps are not timed; input batches are pre-built so
data generation is not timed. Peak memory is the process's peak RSS (ru_maxrss).

Prints ONE JSON line on stdout. `--profile` additionally prints a torch.profiler table (top-15
ops by self CPU time over 5 training steps) to stderr.
"""
import argparse
import contextlib
import json
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=["gpt2", "bert"], default="gpt2")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--positions", type=int, default=1024)
    p.add_argument("--inner", type=int, default=None,
                   help="FFN inner size (default: GPT-2 n_inner=None i.e. 4*hidden; BERT 4*hidden)")
    p.add_argument("--tokens", type=int, default=49)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--infer-batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the device)")
    p.add_argument("--profile", action="store_true",
                   help="print torch.profiler top-15 ops by self CPU time for 5 training steps (stderr)")
    a = p.parse_args()
    if a.tokens > a.positions:
        p.error("--tokens must be <= --positions")
    if a.hidden % a.heads:
        p.error("--hidden must be divisible by --heads")
    return a


def build_transformer(a):
    if a.arch == "gpt2":
        from transformers import GPT2Config, GPT2Model

        # GPT2Config defaults otherwise: n_inner=None (4*hidden), gelu_new, all dropouts 0.1.
        kw = dict(n_layer=a.layers, n_embd=a.hidden, n_head=a.heads, n_positions=a.positions,
                  attn_implementation="sdpa")
        if a.inner is not None:
            kw["n_inner"] = a.inner
        model = GPT2Model(GPT2Config(**kw))

        def trainable(name):
            return "ln" in name or "wpe" in name
    else:
        from transformers import BertConfig, BertModel

        cfg = BertConfig(hidden_size=a.hidden, num_hidden_layers=a.layers,
                         num_attention_heads=a.heads,
                         intermediate_size=a.inner if a.inner is not None else 4 * a.hidden,
                         max_position_embeddings=a.positions, attn_implementation="sdpa")
        # The pooler is never used (we read the last token's hidden state), so leave it out
        # rather than compute it needlessly (this only makes the reference faster).
        model = BertModel(cfg, add_pooling_layer=False)

        def trainable(name):
            return "LayerNorm" in name or "position_embeddings" in name
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    for name, p in model.named_parameters():
        p.requires_grad = trainable(name)
    return model


class FPT(nn.Module):
    def __init__(self, a, transformer):
        super().__init__()
        self.transformer = transformer
        self.in_net = nn.Linear(a.dim, a.hidden)
        nn.init.orthogonal_(self.in_net.weight, gain=1.41)
        nn.init.zeros_(self.in_net.bias)
        self.in_dropout = nn.Dropout(0.1)
        self.out_net = nn.Linear(a.hidden, a.classes)

    def forward(self, x):  # x: (B, T, dim)
        h = self.in_dropout(self.in_net(x))
        h = self.transformer(inputs_embeds=h).last_hidden_state
        return self.out_net(h[:, -1])  # (B, classes): hidden state of the last token


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    dev = torch.device("cuda" if a.device.startswith("cuda") else "cpu")
    model = FPT(a, build_transformer(a)).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable_params = sum(p.numel() for p in params)
    total_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def autocast():
        if a.precision == "bf16":
            return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # Pre-built inputs: data generation is not timed. A small pool of distinct batches.
    pool = 4
    xs = [torch.randn(a.batch, a.tokens, a.dim, device=dev) for _ in range(pool)]
    ys = [torch.randint(0, a.classes, (a.batch,), device=dev) for _ in range(pool)]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step(i):
        x, y = xs[i % pool], ys[i % pool]
        with autocast():
            logits = model(x)
            loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    # ---- training ----
    model.train()
    for i in range(a.warmup):
        train_step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(a.train_steps):
        loss = train_step(i)
    sync()
    loss_val = float(loss.detach()) if a.train_steps else float("nan")
    train_s = time.perf_counter() - t0

    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(5):
                train_step(i)
        print(f"# torch.profiler: 5 training steps, arch={a.arch} precision={a.precision} "
              f"threads={a.threads}", file=sys.stderr)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15),
              file=sys.stderr)

    # ---- inference ----
    model.eval()
    with torch.inference_mode():
        for i in range(a.warmup):
            with autocast():
                model(xs[i % pool])
        sync()
        t0 = time.perf_counter()
        for i in range(a.infer_batches):
            with autocast():
                out = model(xs[i % pool])
        sync()
        infer_s = time.perf_counter() - t0
    assert a.infer_batches == 0 or torch.isfinite(out.float()).all()

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB

    def rate(n, s):
        return round(n * a.batch / s, 3) if n and s > 0 else None

    def per(n, s):
        return round(s / n * 1000, 3) if n else None

    print(json.dumps({
        "arch": a.arch,
        "layers": a.layers,
        "hidden": a.hidden,
        "tokens": a.tokens,
        "dim": a.dim,
        "batch": a.batch,
        "precision": a.precision,
        "train_samples_per_s": rate(a.train_steps, train_s),
        "infer_samples_per_s": rate(a.infer_batches, infer_s),
        "train_step_ms": per(a.train_steps, train_s),
        "infer_batch_ms": per(a.infer_batches, infer_s),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "trainable_params": trainable_params,
        "total_params": total_params,
    }))
    print(f"# attn_implementation=sdpa threads={a.threads} torch={torch.__version__} "
          f"final_loss={loss_val:.4f}", file=sys.stderr)


if __name__ == "__main__":
    main()
