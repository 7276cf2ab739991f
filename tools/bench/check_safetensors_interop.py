#!/usr/bin/python3
"""Checks that PyTorch's `safetensors` package reads a file that sela wrote.

Usage (Debian's python3 has torch; `safetensors` comes from PyPI:
`/usr/bin/python3 -m pip install --break-system-packages safetensors`):
    /usr/bin/python3 tools/bench/check_safetensors_interop.py FILE [--expect-arange]

Loads FILE twice, with safetensors.torch.load_file and with safe_open (which also gives the
metadata), prints every tensor's name, shape and dtype and the metadata, and exits 1 if
anything fails: the package refuses the file, the two loads disagree, or a floating tensor
holds NaN/Inf. With --expect-arange every tensor must also hold arange(numel) in its dtype
(wrapped mod 256 for uint8), reshaped to its shape: the pattern the interop file written by
tests/engine/test_safetensors.cpp uses (set SELA_KEEP_TEST_FILES=DIR when running that test
to keep DIR/interop.safetensors).
"""
import argparse
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file


def expected_arange(tensor):
    count = tensor.numel()
    values = torch.arange(count, dtype=torch.int64)
    if tensor.dtype == torch.uint8:
        values = values % 256
    return values.to(tensor.dtype).reshape(tensor.shape)


def main():
    parser = argparse.ArgumentParser(description="check that safetensors/PyTorch read FILE")
    parser.add_argument("file")
    parser.add_argument("--expect-arange", action="store_true",
                        help="every tensor must hold arange(numel) in its dtype")
    args = parser.parse_args()

    try:
        tensors = load_file(args.file)
        with safe_open(args.file, framework="pt") as handle:
            metadata = handle.metadata() or {}
            lazily = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # any refusal by the reference reader is the failure we test
        print(f"FAIL: safetensors could not read {args.file}: {error}")
        return 1

    failures = []
    if sorted(tensors) != sorted(lazily):
        failures.append("load_file and safe_open list different tensors")
    print(f"{args.file}: {len(tensors)} tensors, torch {torch.__version__}")
    for name in sorted(tensors):
        tensor = tensors[name]
        print(f"  {name:40s} {str(list(tensor.shape)):20s} {tensor.dtype}")
        other = lazily.get(name)
        if other is None or other.dtype != tensor.dtype or not torch.equal(other, tensor):
            failures.append(f"{name}: load_file and safe_open disagree")
        if tensor.is_floating_point() and not torch.isfinite(tensor.double()).all():
            failures.append(f"{name}: holds NaN or Inf")
        if args.expect_arange and not torch.equal(tensor, expected_arange(tensor)):
            failures.append(f"{name}: does not hold arange(numel)")
    for key in sorted(metadata):
        print(f"  metadata {key} = {metadata[key]!r}")
    for failure in failures:
        print(f"FAIL: {failure}")
    if failures:
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
