// A wasi:http/proxy component for Gust's tests. It needs no Gust SDK: the bindings come from
// wit-bindgen and the standard WASI HTTP interfaces.
//
// It answers by what the path contains, so it works under any route prefix:
//   .../env         the value of $GREETING
//   .../loop        spins forever (timeout tests)
//   .../alloc?mb=N  allocates and touches N MiB (memory limit tests)
//   .../trap        traps
//   .../status/N    answers with status N
//   anything else   "hello from wasm" (and a line on stdout)

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

static void respond(wasi_http_types_own_response_outparam_t out, uint16_t status,
                    const char *body, size_t len) {
  wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
  wasi_http_types_field_name_t name = {(uint8_t *)"content-type", 12};
  wasi_http_types_field_value_t value = {(uint8_t *)"text/plain", 10};
  wasi_http_types_header_error_t header_error;
  wasi_http_types_method_fields_append(wasi_http_types_borrow_fields(headers), &name, &value,
                                       &header_error);

  wasi_http_types_own_outgoing_response_t response =
      wasi_http_types_constructor_outgoing_response(headers);
  wasi_http_types_method_outgoing_response_set_status_code(
      wasi_http_types_borrow_outgoing_response(response), status);
  wasi_http_types_own_outgoing_body_t body_handle;
  wasi_http_types_method_outgoing_response_body(wasi_http_types_borrow_outgoing_response(response),
                                                &body_handle);
  wasi_http_types_own_output_stream_t stream;
  wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(body_handle),
                                             &stream);

  wasi_http_types_result_own_outgoing_response_error_code_t result;
  result.is_err = false;
  result.val.ok = response;
  wasi_http_types_static_response_outparam_set(out, &result);

  // blocking-write-and-flush takes at most 4096 bytes at a time.
  for (size_t done = 0; done < len;) {
    size_t chunk = len - done > 4096 ? 4096 : len - done;
    bindings_list_u8_t contents = {(uint8_t *)body + done, chunk};
    wasi_io_streams_stream_error_t stream_error;
    if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(
            wasi_io_streams_borrow_output_stream(stream), &contents, &stream_error)) {
      break;
    }
    done += chunk;
  }
  wasi_io_streams_output_stream_drop_own(stream);
  wasi_http_types_error_code_t finish_error;
  wasi_http_types_static_outgoing_body_finish(body_handle, NULL, &finish_error);
}

static void respond_text(wasi_http_types_own_response_outparam_t out, uint16_t status,
                         const char *text) {
  respond(out, status, text, strlen(text));
}

void exports_wasi_http_incoming_handler_handle(
    exports_wasi_http_incoming_handler_own_incoming_request_t request,
    exports_wasi_http_incoming_handler_own_response_outparam_t out) {
  bindings_string_t target;
  char path[512] = "/";
  if (wasi_http_types_method_incoming_request_path_with_query(
          wasi_http_types_borrow_incoming_request(request), &target)) {
    size_t len = target.len < sizeof(path) - 1 ? target.len : sizeof(path) - 1;
    memcpy(path, target.ptr, len);
    path[len] = 0;
    bindings_string_free(&target);
  }
  wasi_http_types_incoming_request_drop_own(request);

  printf("handling %s\n", path);
  fflush(stdout);

  const char *alloc = strstr(path, "/alloc?mb=");
  const char *status = strstr(path, "/status/");
  if (strstr(path, "/env")) {
    const char *greeting = getenv("GREETING");
    respond_text(out, 200, greeting ? greeting : "(unset)");
  } else if (strstr(path, "/loop")) {
    volatile unsigned long spins = 0;
    for (;;) {
      spins++;
    }
  } else if (alloc) {
    long mb = atol(alloc + 10);
    // Keep every block reachable and read it back, so the compiler cannot elide the work.
    static char *volatile blocks[4096];
    unsigned long checksum = 0;
    for (long i = 0; i < mb && i < 4096; i++) {
      char *block = malloc(1024 * 1024);
      if (!block) {
        fprintf(stderr, "malloc failed after %ld MiB\n", i);
        abort();
      }
      memset(block, (int)(i & 0x7f) + 1, 1024 * 1024);
      blocks[i] = block;
      checksum += (unsigned char)blocks[i][i % (1024 * 1024)];
    }
    char answer[96];
    snprintf(answer, sizeof(answer), "allocated %ld MiB (checksum %lu)", mb, checksum);
    respond_text(out, 200, answer);
  } else if (strstr(path, "/trap")) {
    fprintf(stderr, "about to trap\n");
    fflush(stderr);
    __builtin_trap();
  } else if (status) {
    respond_text(out, (uint16_t)atoi(status + 8), "as requested");
  } else {
    respond_text(out, 200, "hello from wasm\n");
  }
}
