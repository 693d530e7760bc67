// Whether this build can launch its kernels on a given CUDA device: a build holds SASS for some
// architectures and PTX for one (setup.py), and a GPU outside them fails every launch with "no
// kernel image". mtlkernels._backend asks this before listing the "cuda" backend as available.
#include <c10/cuda/CUDAGuard.h>

#include <string>

#include "mtlkernels/cuda_launch.h"

namespace mtlkernels {

std::string cuda_kernel_image_error(int64_t device) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const cudaError_t err = cuda::kernel_image_status();
  if (err == cudaSuccess) return "";
  (void)cudaGetLastError();  // not sticky: clear it, or torch's next error check would report it
  return cudaGetErrorString(err);
}

}  // namespace mtlkernels
