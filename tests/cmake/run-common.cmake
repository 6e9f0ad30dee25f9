# run(<command>... [OUTPUT_VARIABLE <var>]): runs a command, fails the test
# script if it fails; with OUTPUT_VARIABLE, stores its stripped stdout.
function(run)
  cmake_parse_arguments(R "" "OUTPUT_VARIABLE" "" ${ARGN})
  if(R_OUTPUT_VARIABLE)
    execute_process(COMMAND ${R_UNPARSED_ARGUMENTS} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                    OUTPUT_STRIP_TRAILING_WHITESPACE)
    set(${R_OUTPUT_VARIABLE} "${out}" PARENT_SCOPE)
  else()
    execute_process(COMMAND ${R_UNPARSED_ARGUMENTS} RESULT_VARIABLE rc)
  endif()
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${R_UNPARSED_ARGUMENTS}")
  endif()
endfunction()
