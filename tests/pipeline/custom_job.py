"""A user's own job for tests/pipeline/test_custom.py: a small segmentation network, a
fine-tune loop with an optimizer of its own, and a metric (pixel accuracy, in %).

Run as `python custom_job.py OUT [--resume] [--kill-at N]`: with --kill-at the process kills
itself (SIGKILL) halfway through the N-th fine-tune epoch it runs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal

import torch
from torch import nn
from torch.nn import functional as F

from prunewise.pipeline import FinetuneConfig, FinetuneSession, LoopConfig, prune_iteratively


class Seg(nn.Module):
    """Two-class segmentation: conv-BN-ReLU encoder, a 1x1 head, logits per pixel."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = [2, 16, 16, 16]
        for cin, cout in itertools.pairwise(width):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
            layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.head(self.body(x))}


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, 12, 12, generator=g)
    return x, (x[:, 0] > x[:, 1]).long()


TRAIN, VAL = data(64, 1), data(32, 2)
KILL = {"at": 0, "seen": 0}


def finetune(
    model: nn.Module, epochs: int, teacher: nn.Module | None, *, session: FinetuneSession
) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if session.state is not None:
        opt.load_state_dict(session.state["optimizer"])
    x, y = TRAIN
    for epoch in range(session.start_epoch, epochs):
        KILL["seen"] += 1
        torch.manual_seed(1000 * session.iteration + epoch)
        order = torch.randperm(len(x))
        for step, i in enumerate(order.split(16)):
            if KILL["seen"] == KILL["at"] and step == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            loss = F.cross_entropy(model(x[i])["out"], y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        session.epoch_done({"optimizer": opt.state_dict()}, loss=loss.item())


def pixel_accuracy(model: nn.Module) -> float:
    x, y = VAL
    with torch.no_grad():
        return 100.0 * float((model(x)["out"].argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", type=int, default=0)
    args = parser.parse_args()
    KILL["at"] = args.kill_at
    torch.manual_seed(0)
    model = Seg()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.1, 1.0)
    config = LoopConfig(
        metric="pixel accuracy",
        unit="%",
        tolerance=100.0,
        max_iterations=3,
        analysis_images=16,
        progress=False,
        finetune=FinetuneConfig(epochs=3),
    )
    prune_iteratively(
        model,
        VAL[0],
        finetune=finetune,
        evaluate=pixel_accuracy,
        out=args.out,
        config=config,
        resume=args.resume,
    )


if __name__ == "__main__":
    main()
