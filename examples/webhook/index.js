// A webhook receiver that checks the sender's HMAC-SHA256 signature of the raw body, as GitHub
// (`X-Hub-Signature-256: sha256=<hex>`) sends it. Deployed with `--request-body stream`, so the
// function reads the bytes exactly as they were signed.
const crypto = require('crypto');
const safeCompare = require('tsscmp');

const MAX_BODY_BYTES = 1024 * 1024;

async function readBody(stream) {
  const chunks = [];
  let size = 0;
  for await (const chunk of stream) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) return null;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

module.exports = async function (context) {
  const { headers, stream } = context.request;
  const secret = process.env.WEBHOOK_SECRET;
  if (!secret) return { status: 500, body: { error: 'WEBHOOK_SECRET is not set' } };
  const raw = await readBody(stream);
  if (raw === null) return { status: 413, body: { error: 'payload over 1 MB' } };
  const expected = 'sha256=' + crypto.createHmac('sha256', secret).update(raw).digest('hex');
  if (!safeCompare(headers['x-hub-signature-256'] || '', expected)) {
    console.log('rejected a payload with a wrong signature');
    return { status: 401, body: { error: 'signature does not match' } };
  }
  let event;
  try {
    event = JSON.parse(raw.toString('utf8'));
  } catch (_) {
    return { status: 400, body: { error: 'payload is not JSON' } };
  }
  const kind = headers['x-github-event'] || 'unknown';
  console.log(`accepted ${kind} ${event.action || ''}`);
  return { status: 200, body: { accepted: kind, action: event.action || null } };
};
