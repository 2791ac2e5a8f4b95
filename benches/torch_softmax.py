"""The PyTorch peer for benches/softmax.rs: same shapes, f32, forward and backward, CUDA-event
timing, median of 30 runs. Bandwidth counts bytes read + written once, as the Rust bench does.

    python3 benches/torch_softmax.py
"""
import torch

from torch_timing import median_ms

SHAPES = [(4096, 4096), (65536, 1024), (1024, 32768), (256, 10)]


print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
for rows, cols in SHAPES:
    x = (torch.rand(rows, cols, device="cuda") * 2 - 1) * 8
    dy = torch.rand(rows, cols, device="cuda") * 2 - 1
    y = torch.softmax(x, dim=-1)
    n = rows * cols
    fwd = median_ms(lambda: torch.softmax(x, dim=-1))
    bwd = median_ms(lambda: torch._softmax_backward_data(dy, y, -1, torch.float32))
    print(f"torch softmax {rows}x{cols}: forward {fwd:.4f} ms {2 * n * 4 / fwd / 1e9:.3f} TB/s, "
          f"backward {bwd:.4f} ms {3 * n * 4 / bwd / 1e9:.3f} TB/s")
