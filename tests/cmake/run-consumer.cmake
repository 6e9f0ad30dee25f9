# Installs the dlock build at BUILD_DIR into a temporary prefix under WORK_DIR,
# then builds and runs the consumer (SOURCE_DIR/consumer.cpp) against it:
#   MODE=cmake      the consumer project in SOURCE_DIR, through find_package(dlock)
#   MODE=pkgconfig  the compiler alone, with `pkg-config --cflags --libs dlock`
#                   (PKG_CONFIG; LIBDIR is dlock's CMAKE_INSTALL_LIBDIR)
# WITH_REDIS / WITH_POSTGRES say which backends the build has; CXX is the compiler.
include(${CMAKE_CURRENT_LIST_DIR}/run-common.cmake)
file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")
run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${prefix}")

if(MODE STREQUAL "pkgconfig")
  set(pc_env ${CMAKE_COMMAND} -E env "PKG_CONFIG_PATH=${prefix}/${LIBDIR}/pkgconfig")
  run(${pc_env} ${PKG_CONFIG} --validate dlock)
  run(${pc_env} ${PKG_CONFIG} --modversion dlock OUTPUT_VARIABLE version)
  run(${pc_env} ${PKG_CONFIG} --cflags --libs dlock OUTPUT_VARIABLE flags)
  message(STATUS "pkg-config dlock ${version}: ${flags}")
  if(NOT flags MATCHES "-I${prefix}/")
    message(FATAL_ERROR "pkg-config's flags do not point into the install prefix ${prefix}: ${flags}")
  endif()
  separate_arguments(flags UNIX_COMMAND "${flags}")
  set(defs "")
  if(WITH_REDIS)
    list(APPEND defs -DDLOCK_CONSUMER_REDIS)
  endif()
  if(WITH_POSTGRES)
    list(APPEND defs -DDLOCK_CONSUMER_POSTGRES)
  endif()
  file(MAKE_DIRECTORY "${WORK_DIR}/build")
  run(${CXX} -std=c++20 ${defs} "${SOURCE_DIR}/consumer.cpp" ${flags} -o "${WORK_DIR}/build/consumer")
else()
  run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/build"
      -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_CXX_COMPILER=${CXX}
      -DWITH_REDIS=${WITH_REDIS} -DWITH_POSTGRES=${WITH_POSTGRES})
  run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
endif()
run("${WORK_DIR}/build/consumer")
