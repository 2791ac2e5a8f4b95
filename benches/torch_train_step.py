"""The PyTorch peer for benches/train_step.rs: the same MLP and CNN, SGD with momentum 0.9,
cross-entropy, batch 64, 256 and 4096, f32 (TF32 off), eager mode. One step = copy the batch to the
GPU, zero_grad, forward, loss, backward, optimizer step; CUDA-event timing, median of 30 runs.

    python3 benches/torch_train_step.py
"""
import torch
from torch import nn

from torch_models import cnn, mlp

from torch_timing import median_ms

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
for name, make, shape in [("mlp", mlp, (64,)), ("cnn", cnn, (1, 8, 8))]:
    for rows in [64, 256, 4096]:
        model = make().cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        x_host = (torch.rand(rows, *shape) * 2 - 1).pin_memory()
        y_host = (torch.arange(rows) % 10).pin_memory()

        def step():
            x = x_host.to("cuda", non_blocking=True)
            y = y_host.to("cuda", non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()

        ms = median_ms(step)
        print(f"torch train_step {name} batch {rows}: {ms:.4f} ms, {rows / ms * 1e3:.0f} samples/s")
