"""The PyTorch peer for benches/attention.rs: causal multi-head attention, batch 1, 4 heads of 64,
T = 256, 1,024, 2,048 and 4,096, through torch.nn.functional.scaled_dot_product_attention
(FlashAttention-2 on CUDA where it applies), forward and forward + backward, f32 and f16, CUDA-event
timing, median of 30 runs. FLOPs count the causal half only: 2·T²·H·D forward, 2.5× that backward.

    python3 benches/torch_attention.py
"""
import torch
import torch.nn.functional as F

from torch_timing import median_ms

HEADS, HEAD_DIM = 4, 64

print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
for dtype in (torch.float32, torch.float16):
    for t in (256, 1024, 2048, 4096):
        q, k, v = (torch.randn(1, HEADS, t, HEAD_DIM, device="cuda", dtype=dtype,
                               requires_grad=True) for _ in range(3))
        dout = torch.randn(1, HEADS, t, HEAD_DIM, device="cuda", dtype=dtype)
        flops = 2 * t * t * HEADS * HEAD_DIM

        def forward():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def forward_backward():
            out = forward()
            torch.autograd.grad(out, (q, k, v), dout)

        fwd = median_ms(forward)
        both = median_ms(forward_backward)
        print(f"torch sdpa causal {dtype} T={t}: forward {fwd:.4f} ms "
              f"({flops / fwd / 1e9:.2f} TFLOP/s, {t / fwd * 1e3:.0f} tokens/s), "
              f"forward+backward {both:.4f} ms ({3.5 * flops / both / 1e9:.2f} TFLOP/s)")
