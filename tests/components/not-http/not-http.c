// A valid component that is not a wasi:http/proxy component: it exports no incoming handler.
// Gust must refuse it at deploy.
#include <stdio.h>

__attribute__((export_name("unused"))) int unused(void) {
  puts("never called");
  return 0;
}
