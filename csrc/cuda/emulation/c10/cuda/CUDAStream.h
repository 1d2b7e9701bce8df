// Emulation stand-in: launches run synchronously, on no stream.
#pragma once

namespace c10::cuda {
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace c10::cuda
