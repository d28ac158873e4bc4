// A wasi:http/proxy component in JavaScript, built with componentize-js: the fetch-event
// style of service workers. Each request needs a fresh instance (the default).
addEventListener("fetch", (event) =>
  event.respondWith(
    (async () => {
      const url = new URL(event.request.url);
      const body = await event.request.text();
      console.log(`javascript component: ${event.request.method} ${url.pathname}`);
      return new Response(
        `hello from javascript: ${event.request.method} ${url.pathname} (${body.length} bytes in)\n`,
        { headers: { "content-type": "text/plain" } },
      );
    })(),
  ),
);
