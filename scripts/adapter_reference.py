"""Reproduce an fpt adapter's logits with PyTorch + Hugging Face transformers.

This is the independent reference that proves the fpt adapter file is
self-describing: given only the adapter, the frozen base checkpoint and some
inputs, it recomputes the logits without any fpt code.

Adapter format ("fpt-adapter/2"; "/1" is the same without task_state): one
safetensors file holding
  * the trained backbone tensors, named as in the HF model (GPT2Model names
    without "transformer.", e.g. h.0.ln_1.weight, ln_f.bias, wpe.weight;
    BertModel names, e.g. embeddings.position_embeddings.weight,
    encoder.layer.0.output.LayerNorm.weight);
  * input.weight [hidden, d_in] + input.bias [hidden]   (input_kind=continuous)
    or input.embedding [vocab, hidden]                  (input_kind=tokens);
  * output.weight [d_out, hidden], output.bias [d_out];
and string metadata: format, arch ("gpt2"|"bert"), base_model,
base_model_sha256, task (JSON), fpt (JSON), input_kind, input_dim,
output_dim, readout_tokens (k), hidden_size, and task_state (JSON: what the
task fitted on its training split; {} when it fitted nothing).

Forward (eval, dropout off, fp32, eager attention):
  h  = x @ input.weight.T + input.bias      (or input.embedding[x])
  hs = GPT2Model(inputs_embeds=h)                         (no mask: right
       padding + causal attention leaves real tokens untouched)
     | BertModel(inputs_embeds=h, attention_mask=mask_from_lengths)
  ro = hs[i, n_i-k .. n_i-1]  for each sample i of real length n_i
  logits = ro @ output.weight.T + output.bias   -> [B, k, d_out]
           (squeezed to [B, d_out] when k == 1)

Inputs file: `inputs` float32 [B, L, D] or int64 [B, L]; optional int64
`lengths` [B] (default: all L). Output file: float32 `logits`.

Any inconsistency (bad format, base checkpoint hash mismatch, an adapter
tensor that does not name a base parameter of the same shape, shapes that
contradict the metadata) exits with status 2 and a message on stderr.

Usage:
  adapter_reference.py --adapter A.safetensors --base BASE_DIR \
      --inputs IN.safetensors --out OUT.safetensors
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

FORMATS = ("fpt-adapter/1", "fpt-adapter/2")
HEAD_PREFIXES = ("input.", "output.")
# Keys a base checkpoint may carry that are not parameters of the bare model.
IGNORED_BASE_SUFFIXES = (".attn.bias", ".attn.masked_bias", "position_ids")


def die(msg):
    """Print an error and exit with status 2."""
    print(f"adapter_reference: error: {msg}", file=sys.stderr)
    sys.exit(2)


def sha256_file(path):
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_adapter(path):
    """(tensors, metadata) of an adapter file; validates the format tag."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") not in FORMATS:
        die(f"{path}: metadata format is {meta.get('format')!r}, expected one of {FORMATS!r}")
    required = ["arch", "base_model", "base_model_sha256", "task", "fpt",
                "input_kind", "input_dim", "output_dim", "readout_tokens",
                "hidden_size"]
    missing = [k for k in required if k not in meta]
    if missing:
        die(f"{path}: metadata lacks {missing}")
    for key in ("task", "fpt"):
        try:
            json.loads(meta[key])
        except json.JSONDecodeError as e:
            die(f"{path}: metadata {key!r} is not JSON: {e}")
    for key in ("input_dim", "output_dim", "readout_tokens", "hidden_size"):
        if not meta[key].isdigit():
            die(f"{path}: metadata {key!r}={meta[key]!r} is not a decimal integer")
    if meta["arch"] not in ("gpt2", "bert"):
        die(f"{path}: unknown arch {meta['arch']!r}")
    if meta["input_kind"] not in ("continuous", "tokens"):
        die(f"{path}: unknown input_kind {meta['input_kind']!r}")
    return tensors, meta


def check_head_shapes(tensors, meta):
    """The input/output tensors must exist and agree with the metadata."""
    hidden, d_in, d_out = (int(meta[k]) for k in ("hidden_size", "input_dim", "output_dim"))
    if meta["input_kind"] == "continuous":
        want = {"input.weight": (hidden, d_in), "input.bias": (hidden,)}
    else:
        want = {"input.embedding": (d_in, hidden)}
    want.update({"output.weight": (d_out, hidden), "output.bias": (d_out,)})
    for name, shape in want.items():
        if name not in tensors:
            die(f"adapter lacks {name} (input_kind={meta['input_kind']})")
        if tuple(tensors[name].shape) != shape:
            die(f"{name} has shape {tuple(tensors[name].shape)}, metadata implies {shape}")
    extra = [k for k in tensors if k.startswith(HEAD_PREFIXES) and k not in want]
    if extra:
        die(f"unexpected head tensors {extra}")


def check_base_hash(base_dir, meta):
    """BASE_DIR/model.safetensors must hash to base_model_sha256."""
    path = base_dir / "model.safetensors"
    if not path.is_file():
        die(f"{path} does not exist")
    got = sha256_file(path)
    want = meta["base_model_sha256"].lower()
    if got != want:
        die(f"base checkpoint mismatch: sha256({path}) = {got}, "
            f"adapter was trained on {meta['base_model']!r} with sha256 {want}")


def base_state_dict(base_dir, arch):
    """Base weights with the GPT2LMHeadModel 'transformer.' prefix stripped."""
    raw = load_file(str(base_dir / "model.safetensors"))
    prefix = "transformer." if arch == "gpt2" else "bert."
    if any(k.startswith(prefix) for k in raw):
        raw = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    return raw


def build_base(base_dir, arch):
    """The bare GPT2Model/BertModel with the base checkpoint loaded exactly."""
    sd = base_state_dict(base_dir, arch)
    if arch == "gpt2":
        model = GPT2Model(GPT2Config.from_pretrained(str(base_dir), attn_implementation="eager"))
    else:
        pooler = any(k.startswith("pooler.") for k in sd)
        model = BertModel(BertConfig.from_pretrained(str(base_dir), attn_implementation="eager"),
                          add_pooling_layer=pooler)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not k.endswith(IGNORED_BASE_SUFFIXES)}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        die(f"base checkpoint {base_dir} does not fit {type(model).__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.float().eval()


def apply_adapter(model, tensors):
    """Overwrite the adapter's backbone tensors into the model (strict)."""
    params = dict(model.state_dict())
    names = [k for k in tensors if not k.startswith(HEAD_PREFIXES)]
    for name in names:
        if name not in params:
            die(f"adapter tensor {name!r} is not a parameter of the base model")
        if tuple(params[name].shape) != tuple(tensors[name].shape):
            die(f"adapter tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                f"base parameter has {tuple(params[name].shape)}")
    with torch.no_grad():
        for name in names:
            params[name].copy_(tensors[name].float())
    return names


def read_inputs(path, meta):
    """(inputs, lengths) from IN.safetensors, validated against the adapter."""
    t = load_file(str(path))
    if "inputs" not in t:
        die(f"{path} has no 'inputs' tensor")
    x = t["inputs"]
    if meta["input_kind"] == "continuous":
        if x.dim() != 3 or x.shape[2] != int(meta["input_dim"]):
            die(f"inputs shape {tuple(x.shape)} is not [B, L, {meta['input_dim']}]")
        x = x.float()
    else:
        if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
            die(f"token inputs must be int64 [B, L], got {x.dtype} {tuple(x.shape)}")
        x = x.long()
    b, length = x.shape[:2]
    lengths = t.get("lengths", torch.full((b,), length, dtype=torch.int64)).long()
    if tuple(lengths.shape) != (b,) or (lengths < 1).any() or (lengths > length).any():
        die(f"lengths must be [B={b}] with values in 1..{length}, got {lengths.tolist()}")
    return x, lengths


def embed_inputs(x, lengths, tensors, meta):
    """h [B, L, hidden] from the adapter's input layer."""
    if meta["input_kind"] == "continuous":
        return x @ tensors["input.weight"].float().T + tensors["input.bias"].float()
    emb = tensors["input.embedding"].float()
    pad = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
    x = x.masked_fill(pad, 0)  # padding ids never reach a real position
    if (x < 0).any() or (x >= emb.shape[0]).any():
        die(f"token ids outside 0..{emb.shape[0] - 1}")
    return emb[x]


def backbone_forward(model, h, lengths, arch):
    """last_hidden_state of the (adapted) backbone."""
    max_pos = model.config.n_positions if arch == "gpt2" else model.config.max_position_embeddings
    if h.shape[1] > max_pos:
        die(f"sequence length {h.shape[1]} exceeds the model's {max_pos} positions")
    if arch == "gpt2":
        return model(inputs_embeds=h, use_cache=False).last_hidden_state
    mask = (torch.arange(h.shape[1])[None, :] < lengths[:, None]).long()
    return model(inputs_embeds=h, attention_mask=mask).last_hidden_state


def read_out(hs, lengths, k, tensors):
    """Logits from the last k real positions of every sample."""
    if (lengths < k).any():
        die(f"readout_tokens={k} but some lengths are shorter: {lengths.tolist()}")
    idx = lengths[:, None] - k + torch.arange(k)[None, :]  # [B, k]
    ro = torch.gather(hs, 1, idx[:, :, None].expand(-1, -1, hs.shape[2]))
    logits = ro @ tensors["output.weight"].float().T + tensors["output.bias"].float()
    return logits[:, 0] if k == 1 else logits


def parse_args():
    """Command-line arguments."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", type=Path, required=True, help="adapter .safetensors")
    ap.add_argument("--base", type=Path, required=True,
                    help="folder with config.json + model.safetensors of the base model")
    ap.add_argument("--inputs", type=Path, required=True, help="IN.safetensors")
    ap.add_argument("--out", type=Path, required=True, help="OUT.safetensors (logits)")
    return ap.parse_args()


def main():
    args = parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    tensors, meta = read_adapter(args.adapter)
    check_head_shapes(tensors, meta)
    check_base_hash(args.base, meta)
    model = build_base(args.base, meta["arch"])
    if model.config.hidden_size != int(meta["hidden_size"]):
        die(f"base hidden size {model.config.hidden_size} != metadata {meta['hidden_size']}")
    replaced = apply_adapter(model, tensors)
    x, lengths = read_inputs(args.inputs, meta)
    with torch.no_grad():
        h = embed_inputs(x, lengths, tensors, meta)
        hs = backbone_forward(model, h, lengths, meta["arch"])
        logits = read_out(hs, lengths, int(meta["readout_tokens"]), tensors)
    save_file({"logits": logits.float().contiguous()}, str(args.out))
    print(f"arch={meta['arch']} base={meta['base_model']} fpt={meta['fpt']} "
          f"replaced {len(replaced)} backbone tensors; logits {tuple(logits.shape)} -> {args.out}")


if __name__ == "__main__":
    main()
