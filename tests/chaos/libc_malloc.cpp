// libchaos_libc_malloc.so: preloaded (with Debian's libfaketime) into the
// redis-server of scripts/chaos's redis_fast_clock scenario, so that its
// allocations go to glibc's malloc instead of jemalloc.
//
// Why: Debian's redis-server links jemalloc 5.3, and libfaketime 0.9.10 cannot
// start under it. libfaketime initialises itself in its first clock_gettime()
// call, with dlsym(RTLD_NEXT, "__ftime"); glibc 2.36 has no __ftime, and
// ld.so mallocs the "undefined symbol" message; jemalloc's first malloc calls
// clock_gettime() while holding its init lock; that enters libfaketime's
// initialisation again, whose dlsym mallocs again, and the thread waits for
// the init lock it holds (gdb: futex_wait under jemalloc under
// _dl_exception_create_format under libfaketime's clock_gettime, twice).
// With every allocation served by glibc, jemalloc is only reached through
// mallctl()/nallocx() (statistics) once libfaketime is up.
#include <dlfcn.h>

#include <cerrno>
#include <cstddef>

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void __libc_free(void*);
void* __libc_memalign(std::size_t, std::size_t);

__attribute__((visibility("default"))) void* malloc(std::size_t n) { return __libc_malloc(n); }
__attribute__((visibility("default"))) void* calloc(std::size_t n, std::size_t size) { return __libc_calloc(n, size); }
__attribute__((visibility("default"))) void* realloc(void* p, std::size_t n) { return __libc_realloc(p, n); }
__attribute__((visibility("default"))) void free(void* p) { __libc_free(p); }
__attribute__((visibility("default"))) void* memalign(std::size_t align, std::size_t n) {
  return __libc_memalign(align, n);
}
__attribute__((visibility("default"))) void* aligned_alloc(std::size_t align, std::size_t n) {
  return __libc_memalign(align, n);
}
__attribute__((visibility("default"))) int posix_memalign(void** out, std::size_t align, std::size_t n) {
  void* p = __libc_memalign(align, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
// glibc's, not jemalloc's (which the lookup order would find first).
__attribute__((visibility("default"))) std::size_t malloc_usable_size(void* p) {
  using Fn = std::size_t (*)(void*);
  static Fn real = [] {
    void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    return libc == nullptr ? nullptr : reinterpret_cast<Fn>(dlsym(libc, "malloc_usable_size"));
  }();
  return real == nullptr ? 0 : real(p);
}
}
