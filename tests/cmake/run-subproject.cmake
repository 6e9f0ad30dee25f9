# Builds the project in SOURCE_DIR (tests/cmake/subproject), which adds dlock
# (DLOCK_SOURCE_DIR) with add_subdirectory, under WORK_DIR with the generator
# GENERATOR, compiler CXX and launcher LAUNCHER; runs its consumer through its
# own ctest, which must list only the consumer's one test; installs it, which
# must install nothing of dlock's. Then configures the FetchContent variant
# (configure only: it builds the same targets). Built unoptimised and without
# debug information: it checks the packaging, and the default build already
# compiles the same sources optimised.
include(${CMAKE_CURRENT_LIST_DIR}/run-common.cmake)
file(REMOVE_RECURSE "${WORK_DIR}")

set(configure ${CMAKE_COMMAND} -S "${SOURCE_DIR}" -G "${GENERATOR}" -DDLOCK_SOURCE_DIR=${DLOCK_SOURCE_DIR}
    -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O0 -g0"
    -DDLOCK_WITH_REDIS=${WITH_REDIS} -DDLOCK_WITH_POSTGRES=${WITH_POSTGRES}
    -DDLOCK_WITH_ETCD=${WITH_ETCD})
if(LAUNCHER)
  list(APPEND configure -DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER})
endif()

set(build "${WORK_DIR}/add_subdirectory")
run(${configure} -B "${build}" -DDLOCK_VIA=add_subdirectory)
run(${CMAKE_COMMAND} --build "${build}")

run(${CMAKE_CTEST_COMMAND} --test-dir "${build}" -N OUTPUT_VARIABLE listed)
if(NOT listed MATCHES "Total Tests: 1\n*$")
  message(FATAL_ERROR "the subproject build has tests besides the consumer's own (dlock's leaked in):\n${listed}")
endif()
run(${CMAKE_CTEST_COMMAND} --test-dir "${build}" --output-on-failure)

set(prefix "${WORK_DIR}/prefix")
run(${CMAKE_COMMAND} --install "${build}" --prefix "${prefix}")
file(GLOB_RECURSE installed RELATIVE "${prefix}" "${prefix}/*")
if(NOT installed STREQUAL "bin/consumer")
  message(FATAL_ERROR "installing the subproject build installed more than its consumer: ${installed}")
endif()

run(${configure} -B "${WORK_DIR}/FetchContent" -DDLOCK_VIA=FetchContent)
