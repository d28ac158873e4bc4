'use strict';
// Gust's Node.js worker server (standard library only).
//
// Speaks the Gust worker protocol on the listening socket Gust hands over as descriptor
// GUST_LISTEN_FD: GET /healthz, POST /v2/specialize once, then every other request is one
// invocation of the loaded function. Control requests are recognised by their exact request
// target only, so no other spelling of a control path (`//v2/specialize`, `/x/../v2/...`,
// `%2e%2e`) ever reaches them. A specialization that fails ends the process: a worker never
// lives on with half of a function's environment applied. See docs/worker-protocol.md.

const fs = require('fs');
const http = require('http');
const net = require('net');
const path = require('path');

const FUNCTION_ERROR_HEADER = 'X-Gust-Function-Error';
const PARAM_PREFIX = 'x-gust-param-';
// Reserved by the worker protocol: no route reaches it.
const WARMUP_PATH = '/_gust/warmup';

let userFunction = null;
// `requestBody: "stream"` at specialize: the function reads `context.request.stream` as the
// body arrives instead of getting it whole in `context.request.body`.
let streamRequestBody = false;
let warm = false;
let warmedUp = null; // resolves once the warm-up function is gone again

function load(filepath, functionName) {
  let file = filepath;
  let exportName = '';
  if (fs.statSync(filepath).isDirectory()) {
    const entry = functionName || 'index';
    const dot = entry.lastIndexOf('.');
    const module = dot > 0 ? entry.slice(0, dot) : entry;
    exportName = dot > 0 ? entry.slice(dot + 1) : '';
    file = path.join(filepath, module.endsWith('.js') ? module : `${module}.js`);
  } else if (functionName) {
    const dot = functionName.lastIndexOf('.');
    exportName = dot >= 0 ? functionName.slice(dot + 1) : functionName;
  }
  const loaded = require(file);
  const fn = exportName ? loaded[exportName] : loaded;
  if (typeof fn !== 'function') {
    const err = new Error(`entrypoint ${exportName || 'module.exports'} is not a function in ${file}`);
    err.name = 'EntrypointNotFound';
    throw err;
  }
  return fn;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function decodeBody(req, raw) {
  const type = (req.headers['content-type'] || '').toLowerCase();
  if (type.includes('application/json')) {
    try {
      return JSON.parse(raw.toString('utf8') || 'null');
    } catch (_) {
      return raw.toString('utf8');
    }
  }
  if (type.startsWith('text/') || type.includes('x-www-form-urlencoded') || type === '') {
    return raw.toString('utf8');
  }
  return raw;
}

function params(headers) {
  if (headers['x-gust-params']) {
    try {
      return JSON.parse(headers['x-gust-params']);
    } catch (_) {
      /* fall through to the per-parameter headers */
    }
  }
  const out = {};
  for (const [key, value] of Object.entries(headers)) {
    if (key.startsWith(PARAM_PREFIX)) out[key.slice(PARAM_PREFIX.length)] = value;
  }
  return out;
}

function send(res, status, headers, body) {
  const payload = body === undefined || body === null ? Buffer.alloc(0) : body;
  res.writeHead(status, { ...headers, 'Content-Length': payload.length });
  res.end(payload);
}

function sendJson(res, status, value, extra) {
  send(res, status, { 'Content-Type': 'application/json', ...(extra || {}) }, Buffer.from(JSON.stringify(value)));
}

// A body that streams: a Node.js stream, an async iterable or an iterator (a generator).
function isStream(body) {
  return body !== null && typeof body === 'object' && !Buffer.isBuffer(body) && !Array.isArray(body) &&
    (typeof body[Symbol.asyncIterator] === 'function' ||
      (typeof body[Symbol.iterator] === 'function' && typeof body.next === 'function'));
}

function toChunk(value) {
  if (typeof value === 'string') return Buffer.from(value);
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) return value;
  throw new TypeError(`a streamed response yields strings or Buffers, not ${typeof value}`);
}

// Sends each chunk as the function produces it (chunked transfer coding), waiting whenever
// Gust has not taken the last ones yet. A function failing part-way, or Gust letting go,
// ends the connection without the last chunk: the response is cut, which is how HTTP/1.1
// tells the client it is incomplete.
async function sendStream(req, res, status, headers, first, iterator) {
  for (const key of Object.keys(headers)) {
    if (['content-length', 'transfer-encoding'].includes(key.toLowerCase())) delete headers[key];
  }
  const hasType = Object.keys(headers).some((k) => k.toLowerCase() === 'content-type');
  if (!hasType && !first.done) {
    headers['Content-Type'] = typeof first.value === 'string' ? 'text/plain; charset=utf-8' : 'application/octet-stream';
  }
  res.writeHead(status, headers);
  if (req.method === 'HEAD') {
    res.end();
    // Nothing will read the rest: let the stream close what it holds (a file, a socket).
    if (typeof iterator.return === 'function') await iterator.return();
    return;
  }
  try {
    for (let step = first; !step.done; step = await iterator.next()) {
      const chunk = toChunk(step.value);
      if (chunk.length && !res.write(chunk)) {
        await new Promise((resolve) => { res.once('drain', resolve); res.once('close', resolve); });
      }
      if (res.destroyed) {
        if (typeof iterator.return === 'function') await iterator.return();
        return;
      }
    }
    res.end();
  } catch (err) {
    console.error(err && err.stack ? err.stack : String(err));
    res.destroy();
  }
}

function toResponse(result) {
  let status = 200;
  let headers = {};
  let body = result;
  if (result && typeof result === 'object' && !Buffer.isBuffer(result) &&
      ('status' in result || 'body' in result || 'headers' in result)) {
    status = result.status || 200;
    headers = { ...(result.headers || {}) };
    body = result.body;
  }
  if (!Number.isInteger(status) || status < 200 || status > 599) {
    throw new RangeError(`status ${status} is outside 200-599`);
  }
  const hasType = Object.keys(headers).some((k) => k.toLowerCase() === 'content-type');
  if (body === undefined || body === null) {
    body = Buffer.alloc(0);
  } else if (isStream(body)) {
    return { status, headers, stream: body };
  } else if (Buffer.isBuffer(body)) {
    if (!hasType) headers['Content-Type'] = 'application/octet-stream';
  } else if (typeof body === 'string') {
    body = Buffer.from(body);
    if (!hasType) headers['Content-Type'] = 'text/plain; charset=utf-8';
  } else {
    body = Buffer.from(JSON.stringify(body));
    if (!hasType) headers['Content-Type'] = 'application/json';
  }
  return { status, headers, body };
}

function callFunction(context) {
  if (userFunction.length >= 2) {
    // Fission's callback style: function(context, callback(status, body, headers)).
    return new Promise((resolve) => {
      userFunction(context, (status, body, headers) => resolve({ status, body, headers }));
    });
  }
  return Promise.resolve(userFunction(context));
}

async function handle(req, res) {
  // `req.url` is the request target as sent. Parsed against an origin so that a target such
  // as `//host/x` stays a path instead of naming a host.
  const url = new URL(`http://gust-worker${req.url.startsWith('/') ? '' : '/'}${req.url}`);
  if (req.url === '/healthz') {
    // Not ready until warmed up, so no specialize can race the warm-up function.
    send(res, warm ? 200 : 503, { 'Content-Type': 'text/plain' }, Buffer.from(warm ? 'ok' : 'warming'));
    return;
  }
  if (req.url === '/v2/specialize' && req.method === 'POST') {
    const raw = await readBody(req);
    await warmedUp; // the warm-up borrows the function slot; never race it
    if (userFunction) {
      sendJson(res, 409, { error: 'AlreadySpecialized' });
      return;
    }
    const request = JSON.parse(raw.toString('utf8') || '{}');
    Object.assign(process.env, request.env || {});
    streamRequestBody = request.requestBody === 'stream';
    try {
      userFunction = load(request.filepath, request.functionName || '');
    } catch (err) {
      console.error(err && err.stack ? err.stack : String(err));
      // The environment and half-loaded modules stay behind: this worker is done.
      res.on('finish', () => process.exit(3));
      sendJson(res, 500, { error: (err && err.name) || 'Error' }, { Connection: 'close' });
      return;
    }
    sendJson(res, 200, { ok: true });
    return;
  }
  if (!userFunction) {
    sendJson(res, 503, { error: 'NotSpecialized' }, { [FUNCTION_ERROR_HEADER]: 'NotSpecialized' });
    return;
  }
  const request = {
    method: req.method,
    url: req.url,
    path: url.pathname,
    headers: req.headers,
    query: Object.fromEntries(url.searchParams),
    params: params(req.headers),
  };
  if (streamRequestBody) {
    // A readable stream of Buffers as they arrive; what the function leaves unread is
    // discarded once it has answered.
    request.stream = req;
  } else {
    request.body = decodeBody(req, await readBody(req));
  }
  if (warm && req.url === WARMUP_PATH) {
    // A warm-up request that outlived its bound: it must never reach the real function.
    sendJson(res, 503, { error: 'NotSpecialized' }, { [FUNCTION_ERROR_HEADER]: 'NotSpecialized' });
    return;
  }
  const context = { request };
  let streamed;
  try {
    const { status, headers, body, stream } = toResponse(await callFunction(context));
    if (!stream) {
      send(res, status, headers, body);
      return;
    }
    // The first chunk comes before the head is sent, so a function failing at once is
    // still a function error.
    const iterator = typeof stream[Symbol.asyncIterator] === 'function'
      ? stream[Symbol.asyncIterator]()
      : stream;
    const first = await iterator.next();
    if (!first.done) toChunk(first.value); // a first chunk of the wrong type is a function error
    streamed = () => sendStream(req, res, status, headers, first, iterator);
  } catch (err) {
    if (streamRequestBody && req.destroyed && !req.complete) {
      // The caller broke off (or was too slow): nobody is left to answer.
      console.error(`request body cut off: ${err && err.message}`);
      res.destroy();
      return;
    }
    console.error(err && err.stack ? err.stack : String(err));
    const name = (err && err.name) || 'Error';
    sendJson(res, 500, { error: name }, { [FUNCTION_ERROR_HEADER]: name });
    return;
  }
  await streamed();
}

// A pooled worker waits for its function anyway: run the module loader and one whole
// invocation (a request to ourselves, body included) now, so that V8 has compiled those paths
// before the first real request pays for it. Until then /healthz answers 503.
function loadWarmUpFunction() {
  const os = require('os');
  const file = path.join(os.tmpdir(), `.gust-warmup-${process.pid}.js`);
  try {
    fs.writeFileSync(file, 'module.exports = async (ctx) => ({ status: 200, body: { params: ctx.request.params } });\n');
    userFunction = load(file, '');
    delete require.cache[require.resolve(file)];
  } catch (_) {
    userFunction = null; // warming up is an optimisation only
  } finally {
    try { fs.unlinkSync(file); } catch (_) { /* already gone */ }
  }
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error(err && err.stack ? err.stack : String(err));
    if (!res.headersSent) sendJson(res, 500, { error: 'WorkerError' }, { [FUNCTION_ERROR_HEADER]: 'WorkerError' });
  });
});
server.keepAliveTimeout = 0;

// One request to ourselves through the whole HTTP path, body included, over a private
// socket in this worker's own /tmp (never a path Gust connects through).
function warmUpHttp() {
  const socketPath = path.join(require('os').tmpdir(), `.gust-warmup-${process.pid}.sock`);
  const relay = net.createServer((connection) => server.emit('connection', connection));
  return new Promise((resolve) => {
    // Warming up is an optimisation only: a warm-up that hangs must not keep the worker from
    // ever answering /healthz.
    setTimeout(resolve, 2000).unref();
    relay.on('error', resolve);
    relay.listen(socketPath, () => {
      const body = Buffer.from('{"warm": true}');
      const req = http.request(
        {
          socketPath,
          method: 'POST',
          path: WARMUP_PATH,
          headers: { 'content-type': 'application/json', 'content-length': body.length, 'x-gust-params': '{}' },
        },
        (res) => {
          res.on('data', () => {});
          res.on('end', resolve);
          res.on('error', resolve);
        },
      );
      req.on('error', resolve);
      req.end(body);
    });
  }).finally(() => relay.close());
}

loadWarmUpFunction();
let markWarm;
warmedUp = new Promise((resolve) => { markWarm = resolve; });
server.listen({ fd: Number(process.env.GUST_LISTEN_FD) }, () => warmUpHttp().finally(() => {
  userFunction = null;
  warm = true;
  markWarm();
}));
