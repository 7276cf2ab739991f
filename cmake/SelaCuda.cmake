# The CUDA backend: option, architectures, toolkit libraries, the hand-written kernels
# (kernels/cuda) and their tests (tests/cuda).
#
# Included by CMakeLists.txt right after the `sela_kernels` target and the CPU GEMM choice.
#
#   SELA_CUDA = AUTO | ON | OFF            (cache, default AUTO)
#     AUTO builds the backend when nvcc is found (check_language(CUDA)); ON without nvcc
#     is a configure error; OFF skips it. One status line says what was decided and why.
#   SELA_CUDA_ARCHITECTURES                (cache, default: the GPUs present, else 90)
#     What nvcc compiles for (CMake's CUDA_ARCHITECTURES syntax: "90", "80;90", "90-real").
#     CMake's own `native` needs a GPU at configure time, so the default asks nvidia-smi for
#     the compute capability of the cards present and falls back to 90 (H100/H200) on a
#     machine without one (CI, the development box). Only one architecture is compiled by
#     default, which keeps the CUDA compile time of the kernels low. This is the only place
#     an architecture is named.
#   CUDNN_ROOT                             (cache path or environment variable, optional)
#     Where cuDNN is, when it is neither in the CUDA toolkit nor in a pip `nvidia-cudnn`
#     package (nvidia/cudnn under a Python site-packages folder), which are searched too.
#
# Results:
#   SELA_HAVE_CUDA (variable)   ON when the backend is built.
#   sela_kernels_cuda           static library of kernels/cuda/*.cu (+ *.cpp: the cuBLAS and
#                               cuDNN wrappers, the allocator, streams), linked to CUDA::cudart,
#                               cuBLAS, cuDNN (when found: SELA_HAVE_CUDNN=1) and sela_kernels
#                               (the CPU kernels provide the shared shape/config checks),
#                               PUBLIC SELA_HAVE_CUDA=1. It is NOT linked into sela_kernels:
#                               the CPU build stands alone; CMakeLists.txt links it into the
#                               engine and adds sela/assign/*.cu to sela_assign.
#   sela::cublas, sela::cudnn   INTERFACE targets for cuBLAS/cuBLASLt and cuDNN.
#                               SELA_CUDNN_FOUND, SELA_CUDNN_VERSION, SELA_CUDNN_INCLUDE_DIR,
#                               SELA_CUDNN_LIBRARY say what was found.
#   tests: every tests/cuda/test_*.cpp (or .cu) is the doctest binary cuda_<name>, CTest
#   name cuda/<name>. A test that needs a GPU prints "SKIPPED (no CUDA device): <test>"
#   where there is none, and CTest reports such a binary as Skipped (never as Passed).

set(SELA_CUDA "AUTO" CACHE STRING "Build the CUDA backend: AUTO (when nvcc is found), ON or OFF")
set_property(CACHE SELA_CUDA PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${SELA_CUDA}" sela_cuda_mode)
set(SELA_HAVE_CUDA OFF)

if(NOT sela_cuda_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "sela: SELA_CUDA must be AUTO, ON or OFF, got '${SELA_CUDA}'")
endif()
if(sela_cuda_mode STREQUAL "OFF")
  message(STATUS "sela: CUDA backend off (SELA_CUDA=OFF)")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(sela_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "sela: SELA_CUDA=ON but no CUDA compiler (nvcc) was found. Put nvcc on "
                        "PATH (e.g. /usr/local/cuda/bin), set CUDACXX or "
                        "-DCMAKE_CUDA_COMPILER=/path/to/nvcc, or configure with SELA_CUDA=AUTO/OFF.")
  endif()
  message(STATUS "sela: CUDA backend off: no nvcc found (SELA_CUDA=AUTO)")
  return()
endif()

# --- architectures: the cards present, else 90 -------------------------------------------
if(NOT SELA_CUDA_ARCHITECTURES)
  set(sela_detected_architectures "")
  find_program(SELA_NVIDIA_SMI nvidia-smi)
  mark_as_advanced(SELA_NVIDIA_SMI)
  if(SELA_NVIDIA_SMI)
    execute_process(COMMAND ${SELA_NVIDIA_SMI} --query-gpu=compute_cap --format=csv,noheader
                    OUTPUT_VARIABLE sela_smi_output RESULT_VARIABLE sela_smi_result
                    ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE TIMEOUT 20)
    if(sela_smi_result EQUAL 0)
      string(REGEX MATCHALL "[0-9]+\\.[0-9]+" sela_capabilities "${sela_smi_output}")
      foreach(capability ${sela_capabilities})
        string(REPLACE "." "" architecture ${capability})
        list(APPEND sela_detected_architectures ${architecture})
      endforeach()
      list(REMOVE_DUPLICATES sela_detected_architectures)
    endif()
  endif()
  if(sela_detected_architectures)
    set(sela_architecture_source "the GPUs present (nvidia-smi)")
    set(sela_default_architectures "${sela_detected_architectures}")
  else()
    set(sela_architecture_source "no GPU found: H100/H200 default")
    set(sela_default_architectures 90)
  endif()
  set(SELA_CUDA_ARCHITECTURES "${sela_default_architectures}" CACHE STRING
      "CUDA architectures to compile for (default: the GPUs present, else 90)" FORCE)
else()
  set(sela_architecture_source "set by SELA_CUDA_ARCHITECTURES")
endif()
set(CMAKE_CUDA_ARCHITECTURES "${SELA_CUDA_ARCHITECTURES}")

set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_EXTENSIONS OFF)
# One CUDA runtime in every binary: the shared one, which CUDA::cudart also names.
set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

# --- cuBLAS (in every toolkit) and cuDNN (toolkit, pip package or CUDNN_ROOT) -------------
add_library(sela::cublas INTERFACE IMPORTED)
target_link_libraries(sela::cublas INTERFACE CUDA::cublas CUDA::cublasLt)

set(CUDNN_ROOT "$ENV{CUDNN_ROOT}" CACHE PATH "cuDNN installation folder (optional)")
set(sela_cudnn_hints "")
if(CUDNN_ROOT)
  list(APPEND sela_cudnn_hints ${CUDNN_ROOT})
endif()
list(APPEND sela_cudnn_hints ${CUDAToolkit_LIBRARY_ROOT} ${CUDAToolkit_TARGET_DIR})
find_package(Python3 COMPONENTS Interpreter QUIET)
if(Python3_Interpreter_FOUND)
  execute_process(
      COMMAND ${Python3_EXECUTABLE} -c
              "import site; print(';'.join(site.getsitepackages() + [site.getusersitepackages()]))"
      OUTPUT_VARIABLE sela_site_packages OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET
      RESULT_VARIABLE sela_site_result TIMEOUT 20)
  if(sela_site_result EQUAL 0)
    foreach(folder ${sela_site_packages})
      if(EXISTS ${folder}/nvidia/cudnn)
        list(APPEND sela_cudnn_hints ${folder}/nvidia/cudnn)
      endif()
    endforeach()
  endif()
endif()
find_path(SELA_CUDNN_INCLUDE_DIR cudnn_version.h HINTS ${sela_cudnn_hints} ${CUDAToolkit_INCLUDE_DIRS}
          PATH_SUFFIXES include)
# The library from the same installation as the header first: a machine with both a
# system cuDNN and PyTorch's pip wheel (seen on the GPU machine: 9.14 in /usr/lib, 9.19 in
# the wheel) would otherwise pair the wheel's header with the system library, and the
# version the build reports would not be the one it runs. The pip wheel ships libcudnn.so.9
# without the unversioned link name.
if(SELA_CUDNN_INCLUDE_DIR)
  get_filename_component(sela_cudnn_header_root ${SELA_CUDNN_INCLUDE_DIR} DIRECTORY)
  find_library(SELA_CUDNN_LIBRARY NAMES cudnn libcudnn.so.9 NAMES_PER_DIR
               PATHS ${sela_cudnn_header_root} ${SELA_CUDNN_INCLUDE_DIR}/../lib/x86_64-linux-gnu
               PATH_SUFFIXES lib lib64 lib/x64 NO_DEFAULT_PATH)
endif()
find_library(SELA_CUDNN_LIBRARY NAMES cudnn libcudnn.so.9 NAMES_PER_DIR HINTS ${sela_cudnn_hints}
             ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64 lib/x64)
mark_as_advanced(SELA_CUDNN_INCLUDE_DIR SELA_CUDNN_LIBRARY)
set(SELA_CUDNN_FOUND OFF)
set(SELA_CUDNN_VERSION "")
if(SELA_CUDNN_INCLUDE_DIR AND SELA_CUDNN_LIBRARY)
  file(STRINGS ${SELA_CUDNN_INCLUDE_DIR}/cudnn_version.h sela_cudnn_defines
       REGEX "#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) +[0-9]+")
  foreach(part MAJOR MINOR PATCHLEVEL)
    string(REGEX REPLACE ".*#define CUDNN_${part} +([0-9]+).*" "\\1" sela_cudnn_${part}
                         "${sela_cudnn_defines}")
  endforeach()
  set(SELA_CUDNN_VERSION "${sela_cudnn_MAJOR}.${sela_cudnn_MINOR}.${sela_cudnn_PATCHLEVEL}")
  if(sela_cudnn_MAJOR EQUAL 9)
    set(SELA_CUDNN_FOUND ON)
    add_library(sela::cudnn INTERFACE IMPORTED)
    target_include_directories(sela::cudnn INTERFACE ${SELA_CUDNN_INCLUDE_DIR})
    target_link_libraries(sela::cudnn INTERFACE ${SELA_CUDNN_LIBRARY} CUDA::cudart)
    set(sela_cudnn_text "cuDNN ${SELA_CUDNN_VERSION} (${SELA_CUDNN_LIBRARY})")
  else()
    set(sela_cudnn_text "cuDNN ${SELA_CUDNN_VERSION} found but 9.x is needed (unused)")
  endif()
else()
  set(sela_cudnn_text "cuDNN not found (set CUDNN_ROOT)")
endif()

# --- the kernels ------------------------------------------------------------------------
file(GLOB sela_cuda_sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/*.cu
     ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/*.cpp)
if(NOT sela_cuda_sources)
  message(FATAL_ERROR "sela: SELA_CUDA is on but kernels/cuda has no sources")
endif()

# Host-compiler warnings for the .cu files go through -Xcompiler. -Wpedantic is left out:
# the host code nvcc generates uses GCC line markers, which -Wpedantic flags in every file.
set(SELA_CUDA_FLAGS -Xcompiler=-Wall,-Wextra,-Wno-unknown-pragmas)
if(SELA_WERROR)
  list(APPEND SELA_CUDA_FLAGS -Xcompiler=-Werror --Werror=all-warnings)
endif()

add_library(sela_kernels_cuda STATIC ${sela_cuda_sources})
target_include_directories(sela_kernels_cuda PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
target_compile_options(sela_kernels_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:${SELA_CUDA_FLAGS}>
                                                 $<$<COMPILE_LANGUAGE:CXX>:${SELA_CXX_FLAGS}>)
target_compile_definitions(sela_kernels_cuda PUBLIC SELA_HAVE_CUDA=1)
target_link_libraries(sela_kernels_cuda PUBLIC CUDA::cudart sela::cublas sela_kernels)
if(SELA_CUDNN_FOUND)
  target_link_libraries(sela_kernels_cuda PUBLIC sela::cudnn)
  target_compile_definitions(sela_kernels_cuda PUBLIC SELA_HAVE_CUDNN=1)
endif()
set(SELA_HAVE_CUDA ON)

message(STATUS "sela: CUDA backend ON (SELA_CUDA=${sela_cuda_mode}): nvcc "
               "${CMAKE_CUDA_COMPILER_VERSION}, architectures ${SELA_CUDA_ARCHITECTURES} "
               "(${sela_architecture_source}), toolkit ${CUDAToolkit_VERSION} (cuBLAS), ${sela_cudnn_text}")

# --- tests ------------------------------------------------------------------------------
if(SELA_BUILD_TESTS)
  file(GLOB sela_cuda_tests CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/tests/cuda/test_*.cpp
       ${CMAKE_CURRENT_SOURCE_DIR}/tests/cuda/test_*.cu)
  foreach(source ${sela_cuda_tests})
    get_filename_component(stem ${source} NAME_WE)
    set(target cuda_${stem})
    add_executable(${target} ${source})
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${SELA_CXX_FLAGS}>
                                             $<$<COMPILE_LANGUAGE:CUDA>:${SELA_CUDA_FLAGS}>)
    # sela_doctest_main is created later in CMakeLists.txt; names resolve at generate time.
    # sela_method brings the engine, models and label assignment: the engine-level CUDA
    # tests (ops through Tensor, the whole training step) compare the two devices there.
    target_link_libraries(${target} PRIVATE sela_kernels_cuda sela_method sela_doctest_main)
    add_test(NAME cuda/${stem} COMMAND ${target})
    set_tests_properties(cuda/${stem} PROPERTIES LABELS cuda
                         SKIP_REGULAR_EXPRESSION "SKIPPED \\(no CUDA device\\)")
  endforeach()
endif()
