"""PyTorch's CPU eager LoRA training loop, the anchor of `npm run bench:train`.

A plain Llama (RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU, tied embedding) in fp32, LoRA on the
chosen projections (A Kaiming-uniform, B zero, dropout on the input, scale alpha/r), AdamW on the adapter only,
gradient-norm clipping at 1.0, next-token cross-entropy. Weights are read from a Hugging Face safetensors
checkpoint. Prints one JSON line: tokens/s over the measured steps and the process's peak RSS.

  /usr/bin/python3 bench-train-pytorch.py MODEL_DIR --rows 4 --tokens 256 --rank 16 --steps 3 --threads 2
"""
import argparse
import json
import math
import os
import resource
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def read_safetensors(path):
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: only F32 checkpoints are read"
        begin, end = info["data_offsets"]
        tensors[name] = torch.from_numpy(np.frombuffer(data, dtype=np.float32, count=(end - begin) // 4, offset=begin).reshape(info["shape"]).copy())
    return tensors


class LoraLinear(torch.nn.Module):
    def __init__(self, weight, rank, alpha, dropout):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        out_features, in_features = weight.shape
        self.lora_A = torch.nn.Parameter(torch.empty(rank, in_features))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = torch.nn.Parameter(torch.zeros(out_features, rank))
        self.dropout = torch.nn.Dropout(dropout)
        self.scale = alpha / rank

    def forward(self, x):
        return F.linear(x, self.weight) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scale


class Frozen(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)

    def forward(self, x):
        return F.linear(x, self.weight)


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Llama(torch.nn.Module):
    def __init__(self, config, weights, rank, alpha, dropout):
        super().__init__()
        self.c = config
        self.embed = torch.nn.Parameter(weights["model.embed_tokens.weight"], requires_grad=False)
        self.layers = torch.nn.ModuleList()
        for l in range(config["num_hidden_layers"]):
            p = f"model.layers.{l}."
            layer = torch.nn.Module()
            for group, names in (("self_attn", TARGETS[:4]), ("mlp", TARGETS[4:])):
                for name in names:
                    w = weights[f"{p}{group}.{name}.weight"]
                    setattr(layer, name, LoraLinear(w, rank, alpha, dropout) if name in TARGETS else Frozen(w))
            layer.norm1 = torch.nn.Parameter(weights[f"{p}input_layernorm.weight"], requires_grad=False)
            layer.norm2 = torch.nn.Parameter(weights[f"{p}post_attention_layernorm.weight"], requires_grad=False)
            self.layers.append(layer)
        self.norm = torch.nn.Parameter(weights["model.norm.weight"], requires_grad=False)

    def forward(self, ids):
        c = self.c
        batch, tokens = ids.shape
        heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
        head_dim = c["hidden_size"] // heads
        eps = c["rms_norm_eps"]
        inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(tokens, dtype=torch.float32), inv_freq)
        cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
        mask = torch.full((tokens, tokens), float("-inf")).triu(1)
        x = F.embedding(ids, self.embed)
        for layer in self.layers:
            h = rms_norm(x, layer.norm1, eps)
            q = layer.q_proj(h).view(batch, tokens, heads, head_dim).transpose(1, 2)
            k = layer.k_proj(h).view(batch, tokens, kv_heads, head_dim).transpose(1, 2)
            v = layer.v_proj(h).view(batch, tokens, kv_heads, head_dim).transpose(1, 2)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
            probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + mask, dim=-1)
            x = x + layer.o_proj((probs @ v).transpose(1, 2).reshape(batch, tokens, heads * head_dim))
            h = rms_norm(x, layer.norm2, eps)
            x = x + layer.down_proj(F.silu(layer.gate_proj(h)) * layer.up_proj(h))
        return F.linear(rms_norm(x, self.norm, eps), self.embed)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(f"{args.model}/config.json") as f:
        config = json.load(f)
    model = Llama(config, read_safetensors(f"{args.model}/model.safetensors"), args.rank, args.alpha, args.dropout)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    ids = torch.randint(0, config["vocab_size"], (args.rows, args.tokens + 1))

    def step():
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "tokensPerSecond": args.rows * args.tokens * args.steps / seconds,
        "peakRssBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch": torch.__version__,
        "blas": loaded_blas(),
    }))


def loaded_blas():
    """The BLAS library this process runs its matmuls with: Debian's torch takes whichever libblas.so.3 the
    system's alternatives select, and the reference implementation is about ten times slower than OpenBLAS."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "blas" in line or "mkl" in line}
    return sorted(os.path.realpath(path) for path in paths if path.startswith("/"))


if __name__ == "__main__":
    main()
