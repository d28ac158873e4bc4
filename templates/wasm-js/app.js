// A wasi:http/proxy component in JavaScript, built with componentize-js (what
// `jco componentize` runs): the fetch-event style of service workers. The same .wasm file
// runs under Gust, `wasmtime serve` or Spin.
addEventListener("fetch", (event) =>
  event.respondWith(
    (async () => {
      const url = new URL(event.request.url);
      return new Response(`hello from a javascript component: ${url.pathname}\n`, {
        headers: { "content-type": "text/plain" },
      });
    })(),
  ),
);
