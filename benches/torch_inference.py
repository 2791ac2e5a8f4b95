"""The PyTorch peer for benches/inference.rs: the same MLP and CNN, eval mode, f32 (TF32 off) and
f16, batch 1, 8, 64, 512 and 4096. One call = copy the batch to the GPU, forward, softmax, argmax
and top-3, copy the results back (the host->GPU->host round trip), wall clock with
torch.cuda.synchronize; median and p99 of 200 runs after warm-up.

    python3 benches/torch_inference.py
"""
import statistics
import time

import torch
from torch import nn

from torch_models import cnn, mlp

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
with torch.inference_mode():
    for name, make, shape in [("mlp", mlp, (64,)), ("cnn", cnn, (1, 8, 8))]:
        for dtype in [torch.float32, torch.float16]:
            model = make().cuda().eval().to(dtype)
            for rows in [1, 8, 64, 512, 4096]:
                x = torch.rand(rows, *shape) * 2 - 1

                def call():
                    p = torch.softmax(model(x.to("cuda", dtype)), dim=-1)
                    top = torch.topk(p, 3, dim=-1)
                    return p.cpu(), p.argmax(-1).cpu(), top.values.cpu(), top.indices.cpu()

                for _ in range(20):
                    call()
                times = []
                for _ in range(200):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    call()
                    torch.cuda.synchronize()
                    times.append((time.perf_counter() - t0) * 1e3)
                times.sort()
                med, p99 = statistics.median(times), times[int(0.99 * (len(times) - 1))]
                print(f"torch inference {name} {str(dtype)[6:]} batch {rows}: median {med:.4f} ms, "
                      f"p99 {p99:.4f} ms, {rows / med * 1e3:.0f} samples/s")
