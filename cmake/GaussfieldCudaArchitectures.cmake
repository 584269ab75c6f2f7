# Which GPUs the CUDA kernels are built for (CMAKE_CUDA_ARCHITECTURES), in this order:
#   1. CMAKE_CUDA_ARCHITECTURES where the caller sets it (-D..., or CMake's own CUDAARCHS
#      environment variable);
#   2. TORCH_CUDA_ARCH_LIST (environment or cache), torch's notation: "8.0;8.6+PTX" or
#      "8.0 8.6", each X.Y built as machine code, and as PTX too with "+PTX";
#   3. the GPUs that nvidia-smi sees at build time (their compute capabilities);
#   4. the cards CUDA 13 supports and users own: 7.5 (T4), 8.0 (A100), 8.6 (RTX 30xx,
#      A10), 8.9 (L4, RTX 40xx), 9.0 (H100, H200), 10.0 (B200), 12.0 (RTX 50xx), and the
#      PTX of 12.0, which the driver compiles for newer cards.
# Nothing in the kernels needs a newer card than 7.5: no dynamic shared memory beyond the
# 48 KiB every architecture grants without opting in, and the launch plan reads the
# multiprocessor count from the device.  GF_CUDA_ARCHITECTURES_TEXT (what was chosen, for
# the error a call gives on a card it was not built for) is set for the parent scope.
set(GF_DEFAULT_CUDA_ARCHITECTURES 75-real 80-real 86-real 89-real 90-real 100-real 120-real 120-virtual)

function(gf_torch_arch_list_to_cmake list out)
  string(REPLACE " " ";" list "${list}")
  set(archs)
  foreach(item IN LISTS list)
    if(item STREQUAL "")
      continue()
    endif()
    string(REGEX MATCH "^([0-9]+)\\.([0-9]+)(\\+PTX)?$" ok "${item}")
    if(NOT ok)
      message(FATAL_ERROR "TORCH_CUDA_ARCH_LIST: '${item}' is not of the form X.Y or X.Y+PTX")
    endif()
    set(arch "${CMAKE_MATCH_1}${CMAKE_MATCH_2}")
    list(APPEND archs "${arch}-real")
    if(CMAKE_MATCH_3)
      list(APPEND archs "${arch}-virtual")
    endif()
  endforeach()
  set(${out} "${archs}" PARENT_SCOPE)
endfunction()

macro(gf_choose_cuda_architectures)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND DEFINED ENV{CUDAARCHS})
    set(CMAKE_CUDA_ARCHITECTURES "$ENV{CUDAARCHS}")
  endif()
  if(DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(_gf_how "CMAKE_CUDA_ARCHITECTURES")
  elseif(DEFINED ENV{TORCH_CUDA_ARCH_LIST} OR DEFINED TORCH_CUDA_ARCH_LIST)
    if(DEFINED ENV{TORCH_CUDA_ARCH_LIST})
      set(_gf_list "$ENV{TORCH_CUDA_ARCH_LIST}")
    else()
      set(_gf_list "${TORCH_CUDA_ARCH_LIST}")
    endif()
    gf_torch_arch_list_to_cmake("${_gf_list}" _gf_archs)
    set(CMAKE_CUDA_ARCHITECTURES ${_gf_archs})
    set(_gf_how "TORCH_CUDA_ARCH_LIST=${_gf_list}")
  else()
    set(_gf_archs)
    find_program(GF_NVIDIA_SMI nvidia-smi)
    if(GF_NVIDIA_SMI)
      execute_process(COMMAND ${GF_NVIDIA_SMI} --query-gpu=compute_cap --format=csv,noheader
                      OUTPUT_VARIABLE _gf_caps RESULT_VARIABLE _gf_rc ERROR_QUIET
                      OUTPUT_STRIP_TRAILING_WHITESPACE)
      if(_gf_rc EQUAL 0 AND _gf_caps MATCHES "^[0-9]")
        string(REPLACE "\n" ";" _gf_caps "${_gf_caps}")
        list(REMOVE_DUPLICATES _gf_caps)
        gf_torch_arch_list_to_cmake("${_gf_caps}" _gf_archs)
      endif()
    endif()
    if(_gf_archs)
      set(CMAKE_CUDA_ARCHITECTURES ${_gf_archs})
      set(_gf_how "the GPUs visible at build time")
    else()
      set(CMAKE_CUDA_ARCHITECTURES ${GF_DEFAULT_CUDA_ARCHITECTURES})
      set(_gf_how "the default list (no GPU visible)")
    endif()
  endif()
  string(REPLACE ";" " " GF_CUDA_ARCHITECTURES_TEXT "${CMAKE_CUDA_ARCHITECTURES}")
  message(STATUS "gaussfield: CUDA architectures ${GF_CUDA_ARCHITECTURES_TEXT} (from ${_gf_how})")
endmacro()
