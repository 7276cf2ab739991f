// Which device a `sela` subcommand runs on: the --device flag's values and their errors.
//
// "auto" takes the first GPU where this build has the CUDA backend and the machine a usable
// device, else the CPU, so that the default run uses a GPU when there is one. An explicit
// cuda:N that cannot be used is an Error saying why (no CUDA in this build, no device, or
// fewer devices) and what to do; it never falls back silently.
#pragma once

#include <string>

#include "engine/dtype.h"

namespace sela {

// Parses "auto" | "cpu" | "cuda" | "cuda:N" (an Error names anything else).
Device resolve_device(const std::string& text);

// Checks that `device` can be used by `command` (an Error otherwise) and returns one line
// describing it: "cpu", or the GPU's banner (name, memory, CUDA/cuDNN/cuBLAS versions).
std::string checked_device_description(Device device, const std::string& command);

}  // namespace sela
