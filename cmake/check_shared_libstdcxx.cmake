# Fails the build if LIB carries its own copy of libstdc++ instead of depending on the
# shared one (the process then has two C++ runtimes, and iostreams in the private copy
# crash).  Run as: cmake -DLIB=path -P check_shared_libstdcxx.cmake
find_program(READELF readelf)
if(NOT READELF)
  return()
endif()
execute_process(COMMAND ${READELF} -d ${LIB} OUTPUT_VARIABLE dyn)
execute_process(COMMAND ${READELF} -Ws --dyn-syms ${LIB} OUTPUT_VARIABLE syms)
string(FIND "${dyn}" "libstdc++.so" needs_shared)
string(REGEX MATCH "[0-9]+: [0-9a-f]+ +[0-9]+ FUNC +[A-Z]+ +DEFAULT +[0-9]+ _ZNSo9_M_insertIlEERSoT_" own_copy "${syms}")
if(needs_shared EQUAL -1 OR own_copy)
  message(FATAL_ERROR "${LIB} contains a static copy of libstdc++ (it must link the shared "
                      "libstdc++.so.6 that torch uses).  Build with a compiler whose libstdc++ "
                      "is shared, for C++ and for nvcc's host side alike, e.g. "
                      "CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++, and check "
                      "LDFLAGS for -static-libstdc++.")
endif()
