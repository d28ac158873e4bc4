// The smallest useful wasi:http/proxy component in C: it answers every request with
// "hello from wasm". It links no C library (so it needs no WASI preview1 adapter), only the
// wit-bindgen bindings, with a bump allocator: each request gets a fresh instance, so memory
// is never reused and never needs freeing.

#include <stddef.h>
#include <stdint.h>

#include "proxy.h"

extern unsigned char __heap_base;
static uintptr_t heap_next;

void abort(void) { __builtin_trap(); }

void *memcpy(void *dest, const void *src, size_t n) {
  unsigned char *d = dest;
  const unsigned char *s = src;
  while (n--) *d++ = *s++;
  return dest;
}

size_t strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

// Each block is preceded by its size, so realloc can copy it.
void *malloc(size_t size) {
  if (heap_next == 0) heap_next = (uintptr_t)&__heap_base;
  uintptr_t block = (heap_next + 15) & ~(uintptr_t)15;
  uintptr_t end = block + 16 + size;
  size_t have = __builtin_wasm_memory_size(0) * 65536;
  if (end > have && __builtin_wasm_memory_grow(0, (end - have + 65535) / 65536) == (size_t)-1)
    return NULL;
  *(size_t *)block = size;
  heap_next = end;
  return (void *)(block + 16);
}

void free(void *ptr) { (void)ptr; }

void *realloc(void *ptr, size_t size) {
  void *moved = malloc(size);
  if (ptr && moved) {
    size_t old = *(size_t *)((uintptr_t)ptr - 16);
    memcpy(moved, ptr, old < size ? old : size);
  }
  return moved;
}

static const char BODY[] = "hello from wasm\n";

void exports_wasi_http_incoming_handler_handle(
    exports_wasi_http_incoming_handler_own_incoming_request_t request,
    exports_wasi_http_incoming_handler_own_response_outparam_t out) {
  wasi_http_types_incoming_request_drop_own(request);

  wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
  wasi_http_types_field_name_t name = {(uint8_t *)"content-type", 12};
  wasi_http_types_field_value_t value = {(uint8_t *)"text/plain", 10};
  wasi_http_types_header_error_t header_error;
  wasi_http_types_method_fields_append(wasi_http_types_borrow_fields(headers), &name, &value,
                                       &header_error);
  wasi_http_types_own_outgoing_response_t response =
      wasi_http_types_constructor_outgoing_response(headers);
  wasi_http_types_own_outgoing_body_t body;
  wasi_http_types_method_outgoing_response_body(wasi_http_types_borrow_outgoing_response(response),
                                                &body);
  wasi_http_types_own_output_stream_t stream;
  wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(body), &stream);

  wasi_http_types_result_own_outgoing_response_error_code_t result = {.is_err = false};
  result.val.ok = response;
  wasi_http_types_static_response_outparam_set(out, &result);

  proxy_list_u8_t contents = {(uint8_t *)BODY, sizeof(BODY) - 1};
  wasi_io_streams_stream_error_t stream_error;
  wasi_io_streams_method_output_stream_blocking_write_and_flush(
      wasi_io_streams_borrow_output_stream(stream), &contents, &stream_error);
  wasi_io_streams_output_stream_drop_own(stream);
  wasi_http_types_error_code_t finish_error;
  wasi_http_types_static_outgoing_body_finish(body, NULL, &finish_error);
}
