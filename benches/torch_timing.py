"""CUDA-event timing shared by the PyTorch peer scripts."""
import statistics

import torch


def median_ms(fn, runs=30):
    """Median milliseconds of `fn` over `runs` runs after 5 warm-up runs, timed with CUDA events."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
