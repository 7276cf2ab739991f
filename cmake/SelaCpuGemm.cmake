# Chooses the CPU GEMM behind kernels/cpu/gemm.h. (Placeholder: our own kernel only.)
set(SELA_CPU_GEMM "builtin" CACHE STRING "CPU GEMM backend")
target_compile_definitions(sela_kernels PUBLIC SELA_CPU_GEMM_BUILTIN=1)
