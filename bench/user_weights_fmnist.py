"""A user's own training script, which knows nothing of prunewise (issue 15's measurement).

It trains torchvision's ResNet-18 with its first convolution replaced for 1-channel images on
raw 28 x 28 Fashion-MNIST and saves `model.state_dict()` to w.pt. Then:

    .venv/bin/python bench/user_weights_fmnist.py 2          # epochs; writes w.pt
    .venv/bin/prunewise run --model torchvision:resnet18 --weights w.pt --image-size 28 \\
        --max-iterations 2 --no-latency --out runs/r18

Measured 2026-12-01 on 2 shared cores: see the closing note of issue 15 (baseline val 92.46 %,
test 90.52 %; iteration 1 -28.4 % params, -30.7 % FLOPs).
"""

import gzip
import sys
import time

import numpy as np
import torch
import torchvision
from torch import nn

DATA = "/usr/share/datasets/fashion-mnist"


def idx(name: str, offset: int) -> np.ndarray:
    with gzip.open(f"{DATA}/{name}") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def main() -> None:
    x = torch.tensor(idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)).float() / 255
    y = torch.tensor(idx("train-labels-idx1-ubyte.gz", 8)).long()
    x = (x - 0.2860) / 0.3530
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    steps = len(x) // 128
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=epochs * steps)
    for epoch in range(epochs):
        start, perm = time.time(), torch.randperm(len(x))
        model.train()
        for i in range(steps):
            b = perm[i * 128 : (i + 1) * 128]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f} ({time.time() - start:.0f} s)")
    torch.save(model.state_dict(), "w.pt")


if __name__ == "__main__":
    main()
