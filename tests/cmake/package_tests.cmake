# Included by tests/CMakeLists.txt: the tests of dlock as a package, as users
# consume it (label "package"), and the check of the reference docs (label "docs").
set(_dlock_consumer_args
  -DCXX=${CMAKE_CXX_COMPILER} -DWITH_REDIS=${DLOCK_WITH_REDIS} -DWITH_POSTGRES=${DLOCK_WITH_POSTGRES}
  -DWITH_ETCD=${DLOCK_WITH_ETCD})

if(DLOCK_INSTALL)
  # The installed package, consumed by a separate project through find_package(dlock).
  add_test(NAME consumer_package
    COMMAND ${CMAKE_COMMAND} ${_dlock_consumer_args} -DMODE=cmake
      -DBUILD_DIR=${PROJECT_BINARY_DIR} -DSOURCE_DIR=${CMAKE_CURRENT_LIST_DIR}
      -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/consumer
      -P ${CMAKE_CURRENT_LIST_DIR}/run-consumer.cmake)
  # The installed dlock.pc, used by a plain compiler command.
  find_program(DLOCK_PKG_CONFIG NAMES pkg-config pkgconf)
  if(DLOCK_PKG_CONFIG)
    add_test(NAME consumer_pkgconfig
      COMMAND ${CMAKE_COMMAND} ${_dlock_consumer_args} -DMODE=pkgconfig
        -DPKG_CONFIG=${DLOCK_PKG_CONFIG} -DLIBDIR=${CMAKE_INSTALL_LIBDIR}
        -DBUILD_DIR=${PROJECT_BINARY_DIR} -DSOURCE_DIR=${CMAKE_CURRENT_LIST_DIR}
        -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/consumer-pkgconfig
        -P ${CMAKE_CURRENT_LIST_DIR}/run-consumer.cmake)
    set_tests_properties(consumer_pkgconfig PROPERTIES LABELS "package" TIMEOUT 600 RESOURCE_LOCK dlock_install)
  endif()
  # Each `cmake --install` of the build tree writes its install_manifest.txt: one at a time.
  set_tests_properties(consumer_package PROPERTIES LABELS "package" TIMEOUT 600 RESOURCE_LOCK dlock_install)
endif()

# dlock built from source inside another project (add_subdirectory, FetchContent).
add_test(NAME consumer_subproject
  COMMAND ${CMAKE_COMMAND} ${_dlock_consumer_args} "-DGENERATOR=${CMAKE_GENERATOR}"
    -DLAUNCHER=${CMAKE_CXX_COMPILER_LAUNCHER}
    -DDLOCK_SOURCE_DIR=${PROJECT_SOURCE_DIR} -DSOURCE_DIR=${CMAKE_CURRENT_LIST_DIR}/subproject
    -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/consumer-subproject
    -P ${CMAKE_CURRENT_LIST_DIR}/run-subproject.cmake)
set_tests_properties(consumer_subproject PROPERTIES LABELS "package" TIMEOUT 900)

# docs/usage.md's tables cover every option, exception and error code; links lead somewhere.
add_test(NAME docs_reference
  COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${PROJECT_SOURCE_DIR} -P ${CMAKE_CURRENT_LIST_DIR}/check_docs.cmake)
set_tests_properties(docs_reference PROPERTIES LABELS "docs")
