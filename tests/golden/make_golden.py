#!/usr/bin/python3
"""Writes tests/golden/alexnet32_golden.safetensors: PyTorch reference numbers for sela.

With --fc-batch-norm it writes tests/golden/alexnet32_fcbn_golden.safetensors instead: the
same run for the network with BatchNorm1d after both fc layers (sela's --fc-batch-norm on),
at width multiplier 0.03125 so that the file stays near 1 MB.

How to run (from the repository root; Debian's /usr/bin/python3 has torch (python3-torch);
the `safetensors` package comes from PyPI:
    /usr/bin/python3 -m pip install --break-system-packages safetensors
):
    /usr/bin/python3 tests/golden/make_golden.py [--fc-batch-norm] [--out PATH]
It is deterministic (fixed seeds, one thread, deterministic algorithms): running it twice on
one machine gives the same tensors, bit for bit (the bytes of the file may differ: the
safetensors package writes the metadata keys in varying order; it prints the sha256).

What it builds is exactly the network the C++ engine builds, `alexnet-32` at width
multiplier 0.0625, in_channels 3, T = 3 heads with K = (10, 16, 7), with PyTorch-style
parameter names (`features.0.weight`, `classifier.1.bias`, `top_layer0.weight`): these names
are the contract with the C++ side, which loads the initial weights from this file (so the
seed only makes the file reproducible; sela does not re-create PyTorch's random numbers).

    features = Sequential(                       # width w(c) = max(1, round(c * 0.0625))
      0 Conv2d(3, 4, 5, p2)   1 BatchNorm2d 2 ReLU 3 MaxPool2d(3, 2)      # 32 -> 15
      4 Conv2d(4, 12, 5, p2)  5 BatchNorm2d 6 ReLU 7 MaxPool2d(3, 2)      # 15 -> 7
      8 Conv2d(12, 24, 3, p1) 9 BatchNorm2d 10 ReLU
     11 Conv2d(24, 16, 3, p1) 12 BatchNorm2d 13 ReLU
     14 Conv2d(16, 16, 3, p1) 15 BatchNorm2d 16 ReLU 17 MaxPool2d(3, 2)   # 7 -> 3
    )                                            # flatten: 16 * 3 * 3 = 144
    classifier = Sequential(0 Dropout(p) 1 Linear(144, 256) 2 ReLU 3 Dropout(p)
                            4 Linear(256, 256) 5 ReLU)
    with --fc-batch-norm (width 0.03125: conv widths 2, 6, 12, 8, 8, fc 128):
    classifier = Sequential(0 Dropout(p) 1 Linear(72, 128) 2 BatchNorm1d 3 ReLU 4 Dropout(p)
                            5 Linear(128, 128) 6 BatchNorm1d 7 ReLU)
    top_layer0 = Linear(128, 10); top_layer1 = Linear(128, 16); top_layer2 = Linear(128, 7)
    top_layer0 = Linear(256, 10); top_layer1 = Linear(256, 16); top_layer2 = Linear(256, 7)

The width is 0.0625 (not 0.125) so that the committed file stays under 5 MB.

Dropout p = 0 here: sela's dropout random numbers are not PyTorch's, so no golden data can
match a p > 0 run; the modules are kept so that the indices (and names) stay the same.
Init: conv weights N(0, sqrt(2 / (kh * kw * out_channels))), linear weights N(0, 0.01), all
biases 0, BatchNorm weight 1 and bias 0 (eps 1e-5, momentum 0.1).

The run: batch of 8 inputs 3x32x32 ~ N(0, 1), targets per head uniform in [0, K_t). Training
mode (BatchNorm normalises with batch statistics and updates its running stats).
Loss = (1/T) * sum over heads of CrossEntropyLoss (mean over the batch).
Optimiser: torch.optim.SGD(lr 0.05, momentum 0.9, weight_decay 5e-4, nesterov False),
3 steps on the same batch. The whole run is done in float32 and again in float64 (a copy of
the same initial model, `.double()`, on the same input cast to float64).

Entries (float32 run; the float64 run's entries have the same names under `f64/`, except
init/, input and targets, which would be exact float64 casts of the float32 ones: the C++
test converts those):
  init/<name>        every parameter and BatchNorm buffer before training (running_mean,
                     running_var; num_batches_tracked as int64 with shape [])
  input              (8, 3, 32, 32)
  targets            (3, 8) int64, row t = targets of head t
  logits/<t>         (8, K_t) head t's logits at step 0
  loss               (1,) the loss at step 0
  grad/<param>       every parameter's gradient at step 0 (the loss gradient alone: SGD adds
                     the weight decay to a copy, not to .grad)
  step3/<name>       every parameter and buffer after the 3 SGD steps
  loss_steps         (3,) the loss at steps 0, 1, 2 (each before that step's update)
Metadata: the torch version and the configuration as JSON.
"""
import argparse
import copy
import hashlib
import json
import math
import os
import sys

import torch
import torch.nn as nn
from safetensors.torch import save_file

CONFIG = {
    "model": "alexnet-32",
    "width_multiplier": 0.0625,
    "in_channels": 3,
    "heads": [10, 16, 7],
    "batch": 8,
    "image_size": 32,
    "dropout": 0.0,
    "batchnorm_eps": 1e-5,
    "batchnorm_momentum": 0.1,
    "sgd_lr": 0.05,
    "sgd_momentum": 0.9,
    "sgd_weight_decay": 5e-4,
    "sgd_nesterov": False,
    "steps": 3,
    "seed": 1911053,  # arXiv 1911.05371
    "loss": "mean over heads of CrossEntropyLoss(reduction=mean)",
}


def width(channels):
    """w(c) = max(1, round(c * multiplier)), rounding halves away from zero like std::round."""
    return max(1, int(math.floor(channels * CONFIG["width_multiplier"] + 0.5)))


class AlexNet32(nn.Module):
    def __init__(self, in_channels, heads, dropout, fc_batch_norm):
        super().__init__()
        w64, w192, w384, w256, w4096 = (width(c) for c in (64, 192, 384, 256, 4096))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w64, 5, stride=1, padding=2, bias=True),  # 0
            nn.BatchNorm2d(w64), nn.ReLU(inplace=False), nn.MaxPool2d(3, 2),  # 1 2 3
            nn.Conv2d(w64, w192, 5, padding=2),  # 4
            nn.BatchNorm2d(w192), nn.ReLU(), nn.MaxPool2d(3, 2),  # 5 6 7
            nn.Conv2d(w192, w384, 3, padding=1),  # 8
            nn.BatchNorm2d(w384), nn.ReLU(),  # 9 10
            nn.Conv2d(w384, w256, 3, padding=1),  # 11
            nn.BatchNorm2d(w256), nn.ReLU(),  # 12 13
            nn.Conv2d(w256, w256, 3, padding=1),  # 14
            nn.BatchNorm2d(w256), nn.ReLU(), nn.MaxPool2d(3, 2),  # 15 16 17
        )
        def fc_norm():  # BatchNorm1d after each fc layer, or nothing
            return [nn.BatchNorm1d(w4096)] if fc_batch_norm else []
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(w256 * 3 * 3, w4096), *fc_norm(), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(w4096, w4096), *fc_norm(), nn.ReLU(),
        )
        self.heads = len(heads)
        for t, k in enumerate(heads):
            setattr(self, f"top_layer{t}", nn.Linear(w4096, k))

    def forward(self, x):  # x: (N, C, 32, 32)
        x = self.features(x)  # (N, w256, 3, 3)
        x = x.reshape(x.shape[0], -1)  # (N, w256 * 9)
        x = self.classifier(x)  # (N, w4096)
        return [getattr(self, f"top_layer{t}")(x) for t in range(self.heads)]  # T x (N, K_t)


def initialise(model, generator):
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                std = math.sqrt(2.0 / (kh * kw * module.out_channels))
                module.weight.normal_(0.0, std, generator=generator)
                module.bias.zero_()
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                module.num_batches_tracked.zero_()
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.01, generator=generator)
                module.bias.zero_()


def snapshot(model, prefix):
    return {f"{prefix}{name}": value.detach().clone().contiguous()
            for name, value in model.state_dict().items()}


def loss_of(logits, targets):
    criterion = nn.CrossEntropyLoss()
    total = criterion(logits[0], targets[0])
    for t in range(1, len(logits)):
        total = total + criterion(logits[t], targets[t])
    return total / len(logits)


def run(model, inputs, targets, prefix):
    """Trains MODEL for CONFIG['steps'] SGD steps on one batch; returns the entries."""
    entries = {}
    if not prefix:  # the float64 run starts from exact casts of these
        entries.update(snapshot(model, "init/"))
        entries["input"] = inputs.clone()
        entries["targets"] = targets.clone()
    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=CONFIG["sgd_lr"],
                                momentum=CONFIG["sgd_momentum"],
                                weight_decay=CONFIG["sgd_weight_decay"],
                                nesterov=CONFIG["sgd_nesterov"])
    losses = []
    for step in range(CONFIG["steps"]):
        optimiser.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = loss_of(logits, targets)
        loss.backward()
        if step == 0:
            for t, head_logits in enumerate(logits):
                entries[f"{prefix}logits/{t}"] = head_logits.detach().clone()
            entries[prefix + "loss"] = loss.detach().reshape(1).clone()
            for name, parameter in model.named_parameters():
                entries[f"{prefix}grad/{name}"] = parameter.grad.detach().clone()
        losses.append(loss.detach().reshape(1))
        optimiser.step()
    entries[prefix + "loss_steps"] = torch.cat(losses)
    entries.update(snapshot(model, prefix + "step3/"))
    return entries


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fc-batch-norm", action="store_true",
                        help="BatchNorm1d after both fc layers, width 0.03125")
    parser.add_argument("--out", help="output file (default: alexnet32_golden.safetensors or, "
                                      "with --fc-batch-norm, alexnet32_fcbn_golden.safetensors "
                                      "beside this script)")
    args = parser.parse_args()
    name = "alexnet32_fcbn_golden.safetensors" if args.fc_batch_norm else "alexnet32_golden.safetensors"
    if args.out is None:
        args.out = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    if args.fc_batch_norm:
        CONFIG["width_multiplier"] = 0.03125
        CONFIG["fc_batch_norm"] = True

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(CONFIG["seed"])
    generator = torch.Generator().manual_seed(CONFIG["seed"])

    heads = CONFIG["heads"]
    model32 = AlexNet32(CONFIG["in_channels"], heads, CONFIG["dropout"], args.fc_batch_norm)
    initialise(model32, generator)
    model64 = copy.deepcopy(model32).double()  # same initial weights, cast exactly

    size = CONFIG["image_size"]
    inputs = torch.randn((CONFIG["batch"], CONFIG["in_channels"], size, size),
                         generator=generator)  # (N, C, H, W) float32
    targets = torch.stack([torch.randint(0, k, (CONFIG["batch"],), generator=generator)
                           for k in heads])  # (T, N) int64

    entries = run(model32, inputs, targets, "")
    entries.update(run(model64, inputs.double(), targets, "f64/"))

    for name, value in entries.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise SystemExit(f"make_golden: entry {name} is not finite")

    metadata = {
        "torch_version": torch.__version__,
        "config": json.dumps(CONFIG, sort_keys=True),
        "written_by": "tests/golden/make_golden.py",
    }
    save_file(entries, args.out, metadata=metadata)
    with open(args.out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    losses32 = ", ".join(f"{v:.6f}" for v in entries["loss_steps"].tolist())
    losses64 = ", ".join(f"{v:.6f}" for v in entries["f64/loss_steps"].tolist())
    print(f"wrote {args.out}: {len(entries)} entries, {os.path.getsize(args.out)} bytes, "
          f"sha256 {digest}")
    print(f"loss_steps float32 [{losses32}]  float64 [{losses64}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
