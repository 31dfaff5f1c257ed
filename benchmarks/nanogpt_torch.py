"""The peer of the LM training-step benchmark: nanoGPT's model and optimizer in PyTorch.

Written to match nanoGPT's ``model.py`` (Karpathy, https://github.com/karpathy/nanoGPT, MIT;
a GPT-2-style decoder, Radford et al. 2019) layer for layer: token + learned position
embeddings, pre-LayerNorm blocks (LayerNorm without bias when ``bias=False``), causal
self-attention through ``F.scaled_dot_product_attention``, a 4x GELU MLP, a final LayerNorm and
an LM head tied to the token embedding; init N(0, 0.02) with the residual projections scaled by
1 / sqrt(2 n_layer). The step is nanoGPT's ``train.py`` loop body with ``compile=False``:
forward, cross-entropy, backward, gradient clipping at 1.0, AdamW (weight decay 0.1 on the
2-D weights only), ``zero_grad(set_to_none=True)``.

:data:`SHAKESPEARE_CHAR_CPU` is nanoGPT's ``config/train_shakespeare_char.py`` with the README's
CPU overrides (n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0,
bias=False) and lr 1e-3, betas (0.9, 0.99).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    batch_size: int = 12
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.1
    grad_clip: float = 1.0


SHAKESPEARE_CHAR_CPU = GPTConfig()


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.n_head, self.dropout = c.n_head, c.dropout

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))


class MLP(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.mlp = MLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.h = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, targets):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def optimizer(model: GPT, c: GPTConfig) -> torch.optim.AdamW:
    """nanoGPT's ``configure_optimizers``: decay the >= 2-D tensors, not the norms' weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": c.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=c.lr, betas=c.betas)


def make_step(c: GPTConfig = SHAKESPEARE_CHAR_CPU, seed: int = 0):
    """(model, step(x, y) -> loss float): one training step of nanoGPT's loop."""
    torch.manual_seed(seed)
    model = GPT(c).train()
    opt = optimizer(model, c)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return model, step


def batches(tokens, c: GPTConfig, n: int, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """``n`` random (x, y) windows of ``tokens`` (a 1-D int array), as nanoGPT's get_batch."""
    data = torch.as_tensor(tokens, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ix = torch.randint(len(data) - c.block_size - 1, (c.batch_size,), generator=gen)
        x = torch.stack([data[i:i + c.block_size] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + c.block_size] for i in ix])
        out.append((x, y))
    return out


def num_params(model: GPT) -> int:
    """Parameters counted as nanoGPT reports them (tied head once, positions excluded)."""
    return sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
