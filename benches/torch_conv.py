"""The PyTorch (cuDNN) peer for benches/conv.rs: same layers, f32 with TF32 off, forward and backward
(input + weight gradients), CUDA-event timing, median of 30 runs.

    python3 benches/torch_conv.py
"""
import torch

from torch_timing import median_ms

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.benchmark = True

LAYERS = [
    ("64x56x56-64-3x3", 32, 64, 56, 64, 3, 1, 1),
    ("128x28x28-128-3x3", 32, 128, 28, 128, 3, 1, 1),
    ("256x14x14-256-3x3", 32, 256, 14, 256, 3, 1, 1),
    ("3x224x224-64-7x7s2", 32, 3, 224, 64, 7, 2, 3),
    ("1x28x28-32-3x3", 256, 1, 28, 32, 3, 1, 1),
]

print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
for name, n, cin, size, cout, k, stride, pad in LAYERS:
    x = (torch.rand(n, cin, size, size, device="cuda") * 2 - 1).requires_grad_()
    w = ((torch.rand(cout, cin, k, k, device="cuda") * 2 - 1) * 0.1).requires_grad_()
    out = torch.nn.functional.conv2d(x, w, stride=stride, padding=pad)
    gy = torch.rand_like(out) * 2 - 1
    flops = 2 * n * cout * out.shape[2] * out.shape[3] * cin * k * k
    fwd = median_ms(lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=pad))
    bwd = median_ms(lambda: torch.autograd.grad(out, (x, w), gy, retain_graph=True))
    print(f"torch conv2d {name} n{n}: forward {fwd:.4f} ms {flops / fwd / 1e9:.2f} TFLOP/s, "
          f"backward {bwd:.4f} ms {2 * flops / bwd / 1e9:.2f} TFLOP/s")
