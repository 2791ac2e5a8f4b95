"""The PyTorch peer for benches/matmul.rs: same shapes, f32 (TF32 off) and f16, CUDA-event timing,
median of 30 runs after warm-up. Run on the GPU machine beside `bash .gpu/run matmul --bench`:

    python3 benches/torch_matmul.py
"""
import torch

from torch_timing import median_ms

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

SHAPES = [(s, s, s) for s in (256, 512, 1024, 2048, 4096)] + [
    (1, 4096, 4096), (64, 4096, 4096), (4097, 4095, 4099)]



print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
for dtype in (torch.float32, torch.float16):
    for m, n, k in SHAPES:
        a = torch.rand(m, k, device="cuda", dtype=dtype) * 2 - 1
        b = torch.rand(k, n, device="cuda", dtype=dtype) * 2 - 1
        c = torch.empty(m, n, device="cuda", dtype=dtype)
        ms = median_ms(lambda: torch.matmul(a, b, out=c))
        print(f"torch matmul {dtype} {m}x{n}x{k}: {ms:.4f} ms, {2 * m * n * k / ms / 1e9:.2f} TFLOP/s")
