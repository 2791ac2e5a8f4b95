"""The PyTorch peer for benches/generate.rs: the same GPT (vocab 80, context 64, 2 pre-norm blocks of
64, 4 heads, GELU MLP of 256), eager PyTorch with a key/value cache, one decode step (embed, the
blocks over the cache, the final norm and head, greedy argmax, the token ids copied to the host)
for batch 1, 8 and 32 sequences each attending to 48 cached positions, f32; CUDA-event timing,
median of 30 runs. Prints ms per step and tokens/s beside wgnn's `generate/decode_step/batch{n}`.

    python3 benches/torch_generate.py
"""
import math

import torch
import torch.nn.functional as F

from torch_timing import median_ms

VOCAB, CONTEXT, DIM, HEADS, LAYERS = 80, 64, 64, 4, 2
HEAD_DIM = DIM // HEADS
CACHED = 48


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(DIM)
        self.qkv = torch.nn.Linear(DIM, 3 * DIM)
        self.proj = torch.nn.Linear(DIM, DIM)
        self.ln2 = torch.nn.LayerNorm(DIM)
        self.fc1 = torch.nn.Linear(DIM, 4 * DIM)
        self.fc2 = torch.nn.Linear(4 * DIM, DIM)

    def step(self, x, k_cache, v_cache, pos):
        """x [B, DIM] at position `pos` of every sequence; caches [B, HEADS, CONTEXT, HEAD_DIM]."""
        b = x.shape[0]
        q, k, v = self.qkv(self.ln1(x)).view(b, 3, HEADS, HEAD_DIM).unbind(1)
        k_cache[:, :, pos] = k
        v_cache[:, :, pos] = v
        keys, values = k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1]
        scores = torch.einsum("bhd,bhtd->bht", q, keys) / math.sqrt(HEAD_DIM)
        att = torch.einsum("bht,bhtd->bhd", scores.softmax(-1), values).reshape(b, DIM)
        x = x + self.proj(att)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Gpt(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.token = torch.nn.Embedding(VOCAB, DIM)
        self.position = torch.nn.Embedding(CONTEXT, DIM)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln = torch.nn.LayerNorm(DIM)
        self.head = torch.nn.Linear(DIM, VOCAB)

    @torch.no_grad()
    def step(self, tokens, caches, pos):
        x = self.token(tokens) + self.position.weight[pos]
        for block, (k, v) in zip(self.blocks, caches):
            x = block.step(x, k, v, pos)
        return self.head(self.ln(x)).argmax(-1)


print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
model = Gpt().cuda().eval()
for batch in (1, 8, 32):
    caches = [tuple(torch.randn(batch, HEADS, CONTEXT, HEAD_DIM, device="cuda") for _ in range(2))
              for _ in range(LAYERS)]
    tokens = torch.randint(0, VOCAB, (batch,), device="cuda")

    def decode():
        model.step(tokens, caches, CACHED).cpu()

    ms = median_ms(decode)
    print(f"torch eager decode step, batch {batch}, {CACHED} cached positions: {ms:.3f} ms "
          f"({batch / ms * 1e3:.0f} tokens/s)")
