#!/usr/bin/env python3
"""PyTorch side of `benchmark_conv_training_parts` (core/src/kernels/autodiff/): the three parts of
a training 3x3 convolution (forward, input gradient, weight gradient) at the demo teacher's sizes,
batch 16, best of 7, on 2 threads. GFLOP/s count 2 * B * O * C * 9 * H * W for each part.

    OMP_NUM_THREADS=2 python bench/pytorch_conv.py
"""
import time

import torch

torch.set_num_threads(2)
SHAPES = [(3, 32, 64), (32, 32, 64), (64, 64, 64), (64, 32, 64), (32, 3, 64), (32, 64, 32),
          (64, 64, 32), (64, 64, 16), (64, 128, 8), (128, 128, 8), (128, 32, 8)]
BATCH = 16


def best(f, n=7):
    f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


for c, o, h in SHAPES:
    x = torch.randn(BATCH, c, h, h)
    w = torch.randn(o, c, 3, 3)
    g = torch.randn(BATCH, o, h, h)
    conv_backward = torch.ops.aten.convolution_backward

    def part(mask):
        return lambda: conv_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    times = [best(lambda: torch.nn.functional.conv2d(x, w, padding=1)),
             best(part([True, False, False])), best(part([False, True, False]))]
    flops = 2 * BATCH * o * c * 9 * h * h / 1e9
    f, d, wg = (f"{t:7.2f} ({flops / t * 1e3:4.0f})" for t in times)
    print(f"{c:4}->{o:4} @{h:3}: fwd {f}  bwd-data {d}  bwd-weight {wg}   ms (GFLOP/s)")
