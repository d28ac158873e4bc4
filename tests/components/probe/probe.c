// A wasi:http/proxy component for Gust's tests. It needs no Gust SDK: the bindings come from
// wit-bindgen and the standard WASI HTTP interfaces.
//
// It answers by what the path contains, so it works under any route prefix:
//   .../env         the value of $GREETING
//   .../loop        spins forever (timeout tests)
//   .../alloc?mb=N  allocates and touches N MiB (memory limit tests)
//   .../trap        traps
//   .../status/N    answers with status N
//   .../fetch/HOST:PORT/PATH  GETs http://HOST:PORT/PATH and answers "STATUS BODY", or
//                   "error-code N" when the host refuses (15 is HTTP-request-denied)
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

// Performs an outgoing GET and writes "STATUS BODY" or "error-code N" into `answer`.
static void fetch(const char *target, char *answer, size_t size) {
  char authority[256];
  const char *slash = strchr(target, '/');
  size_t host_len = slash ? (size_t)(slash - target) : strlen(target);
  if (host_len >= sizeof(authority)) host_len = sizeof(authority) - 1;
  memcpy(authority, target, host_len);
  authority[host_len] = 0;
  const char *path = slash ? slash : "/";

  wasi_http_types_own_outgoing_request_t request =
      wasi_http_types_constructor_outgoing_request(wasi_http_types_constructor_fields());
  wasi_http_types_borrow_outgoing_request_t borrowed = wasi_http_types_borrow_outgoing_request(request);
  wasi_http_types_scheme_t scheme = {.tag = WASI_HTTP_TYPES_SCHEME_HTTP};
  wasi_http_types_method_outgoing_request_set_scheme(borrowed, &scheme);
  bindings_string_t authority_string = {(uint8_t *)authority, strlen(authority)};
  wasi_http_types_method_outgoing_request_set_authority(borrowed, &authority_string);
  bindings_string_t path_string = {(uint8_t *)path, strlen(path)};
  wasi_http_types_method_outgoing_request_set_path_with_query(borrowed, &path_string);

  wasi_http_outgoing_handler_own_future_incoming_response_t future;
  wasi_http_outgoing_handler_error_code_t error;
  if (!wasi_http_outgoing_handler_handle(request, NULL, &future, &error)) {
    snprintf(answer, size, "error-code %d", error.tag);
    return;
  }
  wasi_http_types_borrow_future_incoming_response_t borrowed_future =
      wasi_http_types_borrow_future_incoming_response(future);
  wasi_http_types_own_pollable_t ready = wasi_http_types_method_future_incoming_response_subscribe(borrowed_future);
  wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
  wasi_io_poll_pollable_drop_own(ready);

  wasi_http_types_result_result_own_incoming_response_error_code_void_t result;
  if (!wasi_http_types_method_future_incoming_response_get(borrowed_future, &result) || result.is_err) {
    snprintf(answer, size, "no response");
    return;
  }
  if (result.val.ok.is_err) {
    snprintf(answer, size, "error-code %d", result.val.ok.val.err.tag);
    return;
  }
  wasi_http_types_own_incoming_response_t response = result.val.ok.val.ok;
  int status = wasi_http_types_method_incoming_response_status(wasi_http_types_borrow_incoming_response(response));
  int written = snprintf(answer, size, "%d ", status);
  wasi_http_types_own_incoming_body_t body;
  wasi_http_types_own_input_stream_t stream;
  if (wasi_http_types_method_incoming_response_consume(wasi_http_types_borrow_incoming_response(response), &body) &&
      wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body), &stream)) {
    for (;;) {
      bindings_list_u8_t chunk;
      wasi_io_streams_stream_error_t stream_error;
      if (!wasi_io_streams_method_input_stream_blocking_read(wasi_io_streams_borrow_input_stream(stream), 4096,
                                                             &chunk, &stream_error)) {
        break;
      }
      size_t room = size - 1 - (size_t)written;
      size_t take = chunk.len < room ? chunk.len : room;
      memcpy(answer + written, chunk.ptr, take);
      written += (int)take;
      answer[written] = 0;
      bindings_list_u8_free(&chunk);
    }
  }
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
  const char *fetch_target = strstr(path, "/fetch/");
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
  } else if (fetch_target) {
    static char answer[8192];
    fetch(fetch_target + 7, answer, sizeof(answer));
    respond_text(out, 200, answer);
  } else if (status) {
    respond_text(out, (uint16_t)atoi(status + 8), "as requested");
  } else {
    respond_text(out, 200, "hello from wasm\n");
  }
}
