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

// A module's file: `base` as named, or with .js, .mjs or .cjs, or a directory's entry.
function moduleFile(base) {
  for (const candidate of [base, `${base}.js`, `${base}.mjs`, `${base}.cjs`]) {
    try {
      const stat = fs.statSync(candidate);
      if (stat.isFile()) return candidate;
      if (stat.isDirectory()) return packageEntry(candidate);
    } catch (_) {
      /* not this one */
    }
  }
  return `${base}.js`; // not there: loading it says so
}

// A directory's entry, as Node.js finds it: its package.json `main`, else index.
function packageEntry(dir) {
  try {
    const { main } = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
    if (typeof main === 'string' && main) return moduleFile(path.join(dir, main));
  } catch (_) {
    /* no package.json, or no main in it */
  }
  return moduleFile(path.join(dir, 'index'));
}

// Loads CommonJS and ES modules alike (`export default`, named exports, `.mjs`, `"type":
// "module"`); an ES module with top-level await is imported instead of required.
async function loadModule(file) {
  try {
    return require(file);
  } catch (err) {
    if (err && (err.code === 'ERR_REQUIRE_ASYNC_MODULE' || err.code === 'ERR_REQUIRE_ESM')) {
      return import(require('url').pathToFileURL(file).href);
    }
    throw err;
  }
}

// `functionName` is Fission's entrypoint: `file.export`, `export` for a single file, or empty
// for the module's default export (a directory's package.json `main`, else index).
async function load(filepath, functionName) {
  let file = filepath;
  let exportName = '';
  if (fs.statSync(filepath).isDirectory()) {
    const dot = functionName.lastIndexOf('.');
    const module = dot > 0 ? functionName.slice(0, dot) : functionName;
    exportName = dot > 0 ? functionName.slice(dot + 1) : '';
    file = module ? moduleFile(path.join(filepath, module)) : packageEntry(filepath);
  } else if (functionName) {
    const dot = functionName.lastIndexOf('.');
    exportName = dot >= 0 ? functionName.slice(dot + 1) : functionName;
  }
  const loaded = await loadModule(file);
  let fn;
  if (exportName) {
    fn = loaded[exportName];
  } else {
    fn = typeof loaded === 'function' ? loaded : loaded && loaded.default;
  }
  if (typeof fn !== 'function') {
    const err = new Error(`entrypoint ${exportName || 'default export'} is not a function in ${file}`);
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

// The body as Express's body parsers give it to Fission's functions: JSON parsed, a form as
// an object, text as a string (also with no type), anything else a Buffer.
function decodeBody(req, raw) {
  const type = (req.headers['content-type'] || '').toLowerCase();
  if (type.includes('application/json') || type.includes('+json')) {
    try {
      return JSON.parse(raw.toString('utf8') || 'null');
    } catch (_) {
      return raw.toString('utf8');
    }
  }
  if (type.includes('x-www-form-urlencoded')) {
    return { ...require('querystring').parse(raw.toString('utf8')) };
  }
  if (type.startsWith('text/') || type === '') {
    return raw.toString('utf8');
  }
  return raw;
}

// A query string as Express parses it: a repeated key gives an array.
function parseQuery(searchParams) {
  const query = {};
  for (const [key, value] of searchParams) {
    if (!Object.prototype.hasOwnProperty.call(query, key)) query[key] = value;
    else if (Array.isArray(query[key])) query[key].push(value);
    else query[key] = [query[key], value];
  }
  return query;
}

// Fission passes Express's request as `context.request`; Gust passes Node.js's own request
// with what Express adds and functions use: get/header, is, path, query, params, body,
// hostname, ip, protocol, originalUrl.
function expressRequest(req, url) {
  req.originalUrl = req.url;
  req.path = url.pathname;
  req.query = parseQuery(url.searchParams);
  req.params = params(req.headers);
  req.protocol = 'http';
  req.hostname = (req.headers['x-forwarded-host'] || req.headers.host || '').replace(/:\d+$/, '');
  req.ip = req.headers['x-forwarded-for'] || '';
  req.get = req.header = (name) => {
    const key = String(name).toLowerCase();
    return key === 'referer' || key === 'referrer'
      ? req.headers.referer || req.headers.referrer
      : req.headers[key];
  };
  req.is = (type) => {
    const actual = (req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
    if (!actual) return null;
    const wanted = String(type).toLowerCase();
    const full = wanted.includes('/') ? wanted : (wanted === 'json' ? 'application/json'
      : wanted === 'urlencoded' ? 'application/x-www-form-urlencoded' : `*/${wanted}`);
    const [a, b] = actual.split('/');
    const [x, y] = full.split('/');
    return (x === '*' || x === a) && (y === '*' || y === b) ? actual : false;
  };
  return req;
}

// Fission also passes Express's response as `context.response`, for a function that answers
// through it instead of returning (res.status(200).send('hi'), res.json(...)). Gust adds
// Express's methods to Node.js's own response.
function expressResponse(res) {
  res.status = (code) => { res.statusCode = code; return res; };
  res.set = res.header = (name, value) => {
    if (typeof name === 'object') {
      for (const [k, v] of Object.entries(name)) res.setHeader(k, v);
    } else {
      res.setHeader(name, value);
    }
    return res;
  };
  res.get = (name) => res.getHeader(name);
  res.type = (type) => res.set('Content-Type', type.includes('/') ? type : `application/${type}`);
  res.json = (value) => {
    if (!res.getHeader('content-type')) res.setHeader('Content-Type', 'application/json');
    return res.send(Buffer.from(JSON.stringify(value)));
  };
  res.send = (body) => {
    let payload = body;
    if (payload === undefined || payload === null) payload = Buffer.alloc(0);
    else if (typeof payload === 'number') { res.statusCode = payload; payload = Buffer.from(String(payload)); }
    else if (typeof payload === 'object' && !Buffer.isBuffer(payload)) return res.json(payload);
    if (typeof payload === 'string') {
      if (!res.getHeader('content-type')) res.setHeader('Content-Type', 'text/html; charset=utf-8');
      payload = Buffer.from(payload);
    } else if (!res.getHeader('content-type')) {
      res.setHeader('Content-Type', 'application/octet-stream');
    }
    res.setHeader('Content-Length', payload.length);
    res.end(payload);
    return res;
  };
  res.sendStatus = (code) => res.status(code).send(http.STATUS_CODES[code] || String(code));
  return res;
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
  if (req.method === 'HEAD') {
    // Framed as GET would be, so the answer does not claim an empty body.
    res.writeHead(status, { ...headers, 'Transfer-Encoding': 'chunked' });
    res.end();
    // Nothing will read the rest: let the stream close what it holds (a file, a socket).
    if (typeof iterator.return === 'function') await iterator.return();
    return;
  }
  res.writeHead(status, headers);
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

// Resolves with the function's answer, or `ANSWERED` once it answered through
// `context.response` itself.
const ANSWERED = Symbol('answered');

function callFunction(context, res) {
  const answered = new Promise((resolve) => res.once('finish', () => resolve(ANSWERED)));
  if (userFunction.length >= 2) {
    // Fission's callback style: function(context, callback(status, body, headers)).
    return Promise.race([
      answered,
      new Promise((resolve, reject) => {
        try {
          userFunction(context, (status, body, headers) => resolve({ status, body, headers }));
        } catch (err) {
          reject(err);
        }
      }),
    ]);
  }
  return Promise.resolve(userFunction(context)).then((result) => {
    // A function that took `context.response` and returned nothing answers through it
    // (perhaps later): wait for that, within the function's timeout.
    if (res.headersSent || res.writableEnded) return answered;
    if ((result === undefined || result === null) && context.responseTaken) return answered;
    return result;
  });
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
    const began = process.hrtime.bigint(); // not `performance`: its first use loads a module
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
      userFunction = await load(request.filepath, request.functionName || '');
    } catch (err) {
      console.error(err && err.stack ? err.stack : String(err));
      // The environment and half-loaded modules stay behind: this worker is done.
      res.on('finish', () => process.exit(3));
      sendJson(res, 500, { error: (err && err.name) || 'Error' }, { Connection: 'close' });
      return;
    }
    // The worker's own share of the specialize round trip, for Gust's cold-start trace.
    sendJson(res, 200, { ok: true, loadMs: Number(process.hrtime.bigint() - began) / 1e6 });
    return;
  }
  if (!userFunction) {
    sendJson(res, 503, { error: 'NotSpecialized' }, { [FUNCTION_ERROR_HEADER]: 'NotSpecialized' });
    return;
  }
  const request = expressRequest(req, url);
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
  let response = null; // given Express's methods when the function first asks for it
  const context = {
    request,
    get response() {
      this.responseTaken = true;
      if (!response) response = expressResponse(res);
      return response;
    },
  };
  let streamed;
  try {
    const result = await callFunction(context, res);
    if (result === ANSWERED) return;
    if (res.headersSent) {
      // It began answering through `context.response` and returned: its answer stands.
      return;
    }
    const { status, headers, body, stream } = toResponse(result);
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
async function loadWarmUpFunction() {
  const os = require('os');
  const file = path.join(os.tmpdir(), `.gust-warmup-${process.pid}.js`);
  try {
    fs.writeFileSync(file, 'module.exports = async (ctx) => ({ status: 200, body: { params: ctx.request.params, q: ctx.request.query, t: ctx.request.get("content-type") } });\n');
    userFunction = await load(file, '');
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

const warmUpLoaded = loadWarmUpFunction();
let markWarm;
warmedUp = new Promise((resolve) => { markWarm = resolve; });
server.listen({ fd: Number(process.env.GUST_LISTEN_FD) }, () => warmUpLoaded.then(warmUpHttp).finally(() => {
  userFunction = null;
  warm = true;
  markWarm();
}));
