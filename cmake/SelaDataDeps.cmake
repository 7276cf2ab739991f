# Third-party pieces of the data layer (sela_data), included by CMakeLists.txt right after
# the sela_data target exists.
#
# - stb (stb_image.h to decode JPEG/PNG/BMP/TGA/GIF/PSD/PNM, stb_image_write.h to write PNG
#   grids and test fixtures). Header-only: engine/data/image_io.cpp compiles the
#   implementation once, so no libstb is linked and a copied header folder is enough (the GPU
#   machine has no Debian package). Looked up first in <repo>/third_party_headers/stb/, then
#   in the system (Debian libstb-dev: /usr/include/stb/). Added as a SYSTEM include so that
#   its own warnings do not trip -Werror.
# - zlib, to read the gzipped IDX files Fashion-MNIST ships as. SELA_DATA_ZLIB=OFF builds
#   without it; .gz files are then refused with a message saying so.
#
# Both are private to sela_data: nothing outside engine/data includes them.

find_path(SELA_STB_INCLUDE_DIR
          NAMES stb/stb_image.h stb/stb_image_write.h
          HINTS ${CMAKE_CURRENT_SOURCE_DIR}/third_party_headers
          DOC "folder holding stb/stb_image.h and stb/stb_image_write.h")
if(NOT SELA_STB_INCLUDE_DIR OR NOT EXISTS "${SELA_STB_INCLUDE_DIR}/stb/stb_image_write.h")
  message(FATAL_ERROR
          "sela: stb headers not found (need stb/stb_image.h and stb/stb_image_write.h). "
          "Install Debian's libstb-dev (apt-get install libstb-dev), or copy the two headers "
          "into ${CMAKE_CURRENT_SOURCE_DIR}/third_party_headers/stb/, or point "
          "-DSELA_STB_INCLUDE_DIR=<folder holding stb/> at them.")
endif()
message(STATUS "sela: stb headers from ${SELA_STB_INCLUDE_DIR}/stb")
target_include_directories(sela_data SYSTEM PRIVATE ${SELA_STB_INCLUDE_DIR})

option(SELA_DATA_ZLIB "Read gzipped IDX files (Fashion-MNIST .gz) with zlib" ON)
if(SELA_DATA_ZLIB)
  find_package(ZLIB)
  if(NOT ZLIB_FOUND)
    message(FATAL_ERROR
            "sela: zlib not found; it reads the gzipped Fashion-MNIST files. Install Debian's "
            "zlib1g-dev (apt-get install zlib1g-dev), or configure with -DSELA_DATA_ZLIB=OFF "
            "(then only raw, un-gzipped IDX files can be read).")
  endif()
  message(STATUS "sela: zlib ${ZLIB_VERSION_STRING} reads gzipped IDX files")
  target_link_libraries(sela_data PRIVATE ZLIB::ZLIB)
  target_compile_definitions(sela_data PRIVATE SELA_DATA_HAVE_ZLIB=1)
else()
  message(STATUS "sela: built without zlib: gzipped IDX files are refused")
endif()
