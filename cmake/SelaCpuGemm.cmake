# Chooses the libraries behind kernels/cpu/gemm.h and kernels/cpu/conv2d.h.
#
# Included by CMakeLists.txt right after the `sela_kernels` target is created.
#
#   SELA_CPU_GEMM = auto | dnnl | blis | openblas | builtin      (cache option, default auto)
#   SELA_CPU_CONV = auto | dnnl | im2col                          (cache option, default auto)
#
# auto takes the fastest installed library as measured on the development machine with
# tools/bench/gemm_lab.cpp and tools/bench/conv_lab.cpp (figures in docs/perf.md), falling
# back in this order:
#   GEMM: dnnl (oneDNN's dnnl_sgemm, AVX-512 JIT) -> builtin -> openblas -> blis
#         when the compiler targets AVX-512, else dnnl -> openblas -> blis -> builtin
#   conv: dnnl (oneDNN convolution primitives)   -> im2col (im2col + our gemm_builtin)
# builtin is our own portable kernel (kernels/cpu/gemm_builtin.cpp): always there, so the
# build works with no BLAS at all; with AVX-512 it beats the Debian OpenBLAS / BLIS here.
# A name other than auto that is not installed is a configure error (never a silent swap).
# The choice is published as a PUBLIC compile definition SELA_CPU_GEMM_<NAME>=1 (and
# SELA_CPU_CONV_<NAME>=1) and printed in one configure message.

set(SELA_CPU_GEMM "auto" CACHE STRING "CPU GEMM backend: auto, dnnl, blis, openblas or builtin")
set_property(CACHE SELA_CPU_GEMM PROPERTY STRINGS auto dnnl blis openblas builtin)
set(SELA_CPU_CONV "auto" CACHE STRING "CPU convolution backend: auto, dnnl or im2col")
set_property(CACHE SELA_CPU_CONV PROPERTY STRINGS auto dnnl im2col)

# Our kernel relies on `acc += a * b` contracting to a fused multiply-add; ISO C++ mode
# (-std=c++17) turns contraction off unless asked.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/kernels/cpu/gemm_builtin.cpp
                            PROPERTIES COMPILE_OPTIONS "-ffp-contract=fast")
# tools/bench/gemm_lab.cpp opens the libraries at run time (dlopen) to time all of them.
if(CMAKE_DL_LIBS)
  target_link_libraries(sela_kernels PUBLIC ${CMAKE_DL_LIBS})
endif()

# --- what is installed ------------------------------------------------------------------
find_path(SELA_DNNL_INCLUDE_DIR dnnl.h PATH_SUFFIXES oneapi/dnnl)
find_library(SELA_DNNL_LIBRARY NAMES dnnl)
set(sela_have_dnnl OFF)
if(SELA_DNNL_INCLUDE_DIR AND SELA_DNNL_LIBRARY)
  # Our threads are OpenMP; a oneDNN built on TBB or sequential would not follow them.
  set(sela_dnnl_config "")
  foreach(candidate ${SELA_DNNL_INCLUDE_DIR}/dnnl_config.h
                    ${SELA_DNNL_INCLUDE_DIR}/oneapi/dnnl/dnnl_config.h)
    if(EXISTS ${candidate} AND NOT sela_dnnl_config)
      file(STRINGS ${candidate} sela_dnnl_config REGEX "define DNNL_CPU_RUNTIME ")
    endif()
  endforeach()
  if(sela_dnnl_config MATCHES "DNNL_RUNTIME_OMP" AND OpenMP_CXX_FOUND)
    set(sela_have_dnnl ON)
  else()
    message(STATUS "sela: oneDNN found but not usable here (needs its OpenMP build and "
                   "OpenMP in the compiler; its runtime: '${sela_dnnl_config}')")
  endif()
endif()

find_path(SELA_BLIS_INCLUDE_DIR blis.h PATH_SUFFIXES blis-openmp blis-pthread blis)
find_library(SELA_BLIS_LIBRARY NAMES blis)
set(sela_have_blis OFF)
if(SELA_BLIS_INCLUDE_DIR AND SELA_BLIS_LIBRARY)
  set(sela_have_blis ON)
endif()

# openblas_config.h only exists in OpenBLAS's own include folder, whose cblas.h is then
# OpenBLAS's (the plain <cblas.h> may belong to another BLAS on Debian).
find_path(SELA_OPENBLAS_INCLUDE_DIR openblas_config.h
          PATH_SUFFIXES openblas-pthread openblas-openmp openblas)
find_library(SELA_OPENBLAS_LIBRARY NAMES openblas)
set(sela_have_openblas OFF)
if(SELA_OPENBLAS_INCLUDE_DIR AND SELA_OPENBLAS_LIBRARY)
  set(sela_have_openblas ON)
endif()

# Our kernel is only a match for the libraries when it is compiled for AVX-512 (its 12x32
# register tile); with narrower vectors a tuned BLAS is the safer second choice.
include(CheckCXXSourceCompiles)
set(CMAKE_REQUIRED_FLAGS "")
if(SELA_NATIVE)
  set(CMAKE_REQUIRED_FLAGS "-march=native")
endif()
check_cxx_source_compiles("
#ifndef __AVX512F__
#error no AVX-512
#endif
int main() { return 0; }" SELA_COMPILER_TARGETS_AVX512)
unset(CMAKE_REQUIRED_FLAGS)

# --- GEMM -------------------------------------------------------------------------------
# auto's order, fastest measured first (gemm_lab on the AMD Zen AVX-512 development machine,
# docs/perf.md): dnnl > builtin (AVX-512) > openblas (Haswell kernels there) > blis (Debian's
# 0.9.0 does not know the CPU and runs its generic kernels).
if(SELA_COMPILER_TARGETS_AVX512)
  set(sela_gemm_auto_order dnnl builtin openblas blis)
else()
  set(sela_gemm_auto_order dnnl openblas blis builtin)
endif()
set(sela_gemm_backends dnnl openblas blis builtin)
set(sela_have_builtin ON)
string(TOLOWER "${SELA_CPU_GEMM}" sela_gemm_request)
if(sela_gemm_request STREQUAL "auto")
  foreach(candidate ${sela_gemm_auto_order})
    if(sela_have_${candidate})
      set(sela_gemm ${candidate})
      break()
    endif()
  endforeach()
elseif(sela_gemm_request IN_LIST sela_gemm_backends)
  if(NOT sela_have_${sela_gemm_request})
    message(FATAL_ERROR "sela: SELA_CPU_GEMM=${SELA_CPU_GEMM} but that library is not installed "
                        "(Debian: libdnnl-dev, libblis-dev or libopenblas-dev). Install it or "
                        "configure with -DSELA_CPU_GEMM=auto.")
  endif()
  set(sela_gemm ${sela_gemm_request})
else()
  message(FATAL_ERROR "sela: SELA_CPU_GEMM must be auto, dnnl, blis, openblas or builtin; "
                      "got '${SELA_CPU_GEMM}'")
endif()

if(sela_gemm STREQUAL "dnnl")
  target_include_directories(sela_kernels SYSTEM PRIVATE ${SELA_DNNL_INCLUDE_DIR})
  target_link_libraries(sela_kernels PRIVATE ${SELA_DNNL_LIBRARY})
  set(sela_gemm_note "oneDNN dnnl_sgemm for float (${SELA_DNNL_LIBRARY}); builtin for double")
elseif(sela_gemm STREQUAL "blis")
  target_include_directories(sela_kernels SYSTEM PRIVATE ${SELA_BLIS_INCLUDE_DIR})
  target_link_libraries(sela_kernels PRIVATE ${SELA_BLIS_LIBRARY})
  set(sela_gemm_note "BLIS (${SELA_BLIS_LIBRARY})")
elseif(sela_gemm STREQUAL "openblas")
  target_include_directories(sela_kernels SYSTEM PRIVATE ${SELA_OPENBLAS_INCLUDE_DIR})
  target_link_libraries(sela_kernels PRIVATE ${SELA_OPENBLAS_LIBRARY})
  set(sela_gemm_note "OpenBLAS (${SELA_OPENBLAS_LIBRARY})")
elseif(sela_have_dnnl)
  set(sela_gemm_note "the builtin kernel (chosen; oneDNN is installed but not used for GEMM)")
else()
  set(sela_gemm_note "the builtin portable kernel: no oneDNN found. For speed install "
                     "Debian's libdnnl-dev (fastest measured), or libopenblas-dev")
  string(REPLACE ";" "" sela_gemm_note "${sela_gemm_note}")
endif()
string(TOUPPER ${sela_gemm} sela_gemm_upper)
target_compile_definitions(sela_kernels PUBLIC SELA_CPU_GEMM_${sela_gemm_upper}=1)
message(STATUS "sela: CPU GEMM backend = ${sela_gemm} (SELA_CPU_GEMM=${SELA_CPU_GEMM}): "
               "${sela_gemm_note}")

# --- convolution ------------------------------------------------------------------------
string(TOLOWER "${SELA_CPU_CONV}" sela_conv_request)
if(sela_conv_request STREQUAL "auto")
  if(sela_have_dnnl)
    set(sela_conv dnnl)
  else()
    set(sela_conv im2col)
  endif()
elseif(sela_conv_request STREQUAL "dnnl")
  if(NOT sela_have_dnnl)
    message(FATAL_ERROR "sela: SELA_CPU_CONV=dnnl but oneDNN (OpenMP build) is not usable "
                        "here (Debian: libdnnl-dev). Install it or configure with "
                        "-DSELA_CPU_CONV=auto.")
  endif()
  set(sela_conv dnnl)
elseif(sela_conv_request STREQUAL "im2col")
  set(sela_conv im2col)
else()
  message(FATAL_ERROR "sela: SELA_CPU_CONV must be auto, dnnl or im2col; got '${SELA_CPU_CONV}'")
endif()
if(sela_conv STREQUAL "dnnl")
  target_include_directories(sela_kernels SYSTEM PRIVATE ${SELA_DNNL_INCLUDE_DIR})
  target_link_libraries(sela_kernels PRIVATE ${SELA_DNNL_LIBRARY})
  set(sela_conv_note "oneDNN convolution primitives (convolution_auto) for float; im2col + builtin GEMM for double")
else()
  set(sela_conv_note "im2col + builtin GEMM")
endif()
string(TOUPPER ${sela_conv} sela_conv_upper)
target_compile_definitions(sela_kernels PUBLIC SELA_CPU_CONV_${sela_conv_upper}=1)
message(STATUS "sela: CPU conv2d backend = ${sela_conv} (SELA_CPU_CONV=${SELA_CPU_CONV}): "
               "${sela_conv_note}")
