#!/usr/bin/python3
"""Writes tests/golden/torch_written.safetensors with PyTorch's `safetensors` package.

The file lets tests/engine/test_safetensors.cpp check that sela reads what the reference
implementation writes. Every tensor's contents follow a closed form (an arange, scaled and
shifted so that every value is exact in its dtype), so the C++ test recomputes each value
without any stored expectation. Keep this table and the test's table in step.

Run (from the repository root; Debian's python3 has torch, the `safetensors` package comes
from PyPI: `/usr/bin/python3 -m pip install --break-system-packages safetensors`):
    /usr/bin/python3 tests/golden/make_safetensors_fixture.py
The output is deterministic: running it again gives the same bytes.
"""
import os
import sys

import torch
from safetensors.torch import save_file


def arange(n, dtype):
    return torch.arange(n, dtype=torch.float64).to(dtype)


def fixture_tensors():
    # name: tensor                                         value of flat element i
    return {
        "f32_grid": (arange(24, torch.float64) * 0.5 - 3.0).to(torch.float32).reshape(2, 3, 4),
        #                                                  0.5 i - 3
        "f64_column": (arange(10, torch.float64) / 8.0 - 1.0).reshape(5, 2),
        #                                                  i / 8 - 1
        "f16_square": (arange(16, torch.float64) * 0.25 - 2.0).to(torch.float16).reshape(4, 4),
        #                                                  0.25 i - 2
        "bf16_row": (arange(12, torch.float64) * 4.0 - 24.0).to(torch.bfloat16).reshape(1, 12),
        #                                                  4 i - 24
        "i64_big": torch.arange(6, dtype=torch.int64) * 1_000_000_000_007 - 3,
        #                                                  1000000000007 i - 3
        "i32_negative": (-torch.arange(7, dtype=torch.int32) * 100_003).reshape(7, 1),
        #                                                  -100003 i
        "u8_all": torch.arange(256, dtype=torch.int64).to(torch.uint8).reshape(16, 16),
        #                                                  i
        "scalar": torch.tensor(2.5, dtype=torch.float32),  # shape [], value 2.5
        "empty": torch.zeros(0, 3, dtype=torch.float32),   # shape [0, 3]
        "block.0.weight": (arange(6, torch.float64) + 1.0).to(torch.float32).reshape(3, 2),
        #                                                  i + 1
    }


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_written.safetensors")
    tensors = fixture_tensors()
    metadata = {"written_by": "make_safetensors_fixture.py", "format": "pt"}
    save_file(tensors, out, metadata=metadata)
    print(f"wrote {out} ({os.path.getsize(out)} bytes, {len(tensors)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
