# The dlock targets a consumer links, shared by the find_package consumer
# (CMakeLists.txt) and the add_subdirectory one (subproject/CMakeLists.txt).
# Both check that the list covers every target dlock provides.

# dlock_consumer_targets(<var>): every dlock target of this configuration, as
# DLOCK_WITH_REDIS / DLOCK_WITH_POSTGRES / DLOCK_WITH_ETCD (set by the package, or dlock's options) say.
function(dlock_consumer_targets var)
  set(targets dlock::dlock)
  if(DLOCK_WITH_REDIS)
    list(APPEND targets dlock::redis dlock::redlock)
  endif()
  if(DLOCK_WITH_POSTGRES)
    list(APPEND targets dlock::postgres)
  endif()
  if(DLOCK_WITH_ETCD)
    list(APPEND targets dlock::etcd)
  endif()
  set(${var} ${targets} PARENT_SCOPE)
endfunction()

# dlock_consumer_definitions(<target>): tells consumer.cpp which backends to use.
function(dlock_consumer_definitions target)
  if(DLOCK_WITH_REDIS)
    target_compile_definitions(${target} PRIVATE DLOCK_CONSUMER_REDIS)
  endif()
  if(DLOCK_WITH_POSTGRES)
    target_compile_definitions(${target} PRIVATE DLOCK_CONSUMER_POSTGRES)
  endif()
  if(DLOCK_WITH_ETCD)
    target_compile_definitions(${target} PRIVATE DLOCK_CONSUMER_ETCD)
  endif()
endfunction()
