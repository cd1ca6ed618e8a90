'use strict';
// opslab-app: the small service every platform of the ops.runbooks lab runs.
// Only node's http module plus the `pg` and `redis` (node-redis v4) clients.

const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const { Pool, types } = require('pg');
const { createClient } = require('redis');

const pkg = require('./package.json');

// bigint ids and counts as JSON numbers (lab ids stay far below 2^53).
types.setTypeParser(20, (value) => parseInt(value, 10));

const PORT = parseInt(process.env.PORT || '3000', 10);
const HOST = process.env.HOST || '127.0.0.1';
const APP_NAME = process.env.APP_NAME || pkg.name;
const APP_VERSION = process.env.APP_VERSION || pkg.version;
const DATABASE_URL = process.env.DATABASE_URL || '';
const REDIS_URL = process.env.REDIS_URL || '';
const FAIL_HEALTH = process.env.FAIL_HEALTH === '1';
const STARTUP_DELAY_MS = parseInt(process.env.STARTUP_DELAY_MS || '0', 10) || 0;
const CHECK_TIMEOUT_MS = parseInt(process.env.CHECK_TIMEOUT_MS || '2000', 10) || 2000;
const DB_MIGRATE = process.env.DB_MIGRATE === '1';
const MAX_BODY = 1024 * 1024;
const INSTANCE = process.env.NODE_APP_INSTANCE !== undefined
  ? String(process.env.NODE_APP_INSTANCE)
  : String(process.pid);

// ---------------------------------------------------------------- logging

/** A connection URL with its password replaced, safe to print. */
function redact(url) {
  if (!url) return '';
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch (_err) {
    return '<unparsable url>';
  }
}

/** Remove anything that looks like a secret from an error message. */
function scrub(text) {
  let out = String(text);
  for (const url of [DATABASE_URL, REDIS_URL]) {
    if (!url) continue;
    try {
      const pw = decodeURIComponent(new URL(url).password || '');
      if (pw) out = out.split(pw).join('***');
    } catch (_err) { /* unparsable: nothing to scrub */ }
    out = out.split(url).join(redact(url));
  }
  return out;
}

function log(level, msg, extra) {
  const line = { time: new Date().toISOString(), level, app: APP_NAME, instance: INSTANCE, msg };
  if (extra) Object.assign(line, extra);
  const text = scrub(JSON.stringify(line));
  if (level === 'error' || level === 'warn') process.stderr.write(text + '\n');
  else process.stdout.write(text + '\n');
}

// ---------------------------------------------------------------- clients

const pool = DATABASE_URL
  ? new Pool({
    connectionString: DATABASE_URL,
    max: parseInt(process.env.DB_POOL_MAX || '5', 10) || 5,
    connectionTimeoutMillis: CHECK_TIMEOUT_MS,
    idleTimeoutMillis: 10000,
    query_timeout: 10000,
    application_name: APP_NAME,
  })
  : null;
if (pool) {
  // Idle clients die when PostgreSQL restarts or fails over: log, never crash.
  pool.on('error', (err) => log('warn', 'idle database client error', { error: scrub(err.message) }));
}

let redis = null;
let lastRedisError = '';
if (REDIS_URL) {
  redis = createClient({
    url: REDIS_URL,
    disableOfflineQueue: true, // fail fast while disconnected instead of queueing
    socket: {
      connectTimeout: CHECK_TIMEOUT_MS,
      reconnectStrategy: (retries) => Math.min(100 * (retries + 1), 2000),
    },
  });
  redis.on('error', (err) => {
    const text = scrub(err.message || String(err));
    if (text !== lastRedisError) log('warn', 'redis client error', { error: text });
    lastRedisError = text;
  });
  redis.on('ready', () => { lastRedisError = ''; log('info', 'redis connected'); });
  redis.connect().catch((err) => log('warn', 'redis connect failed', { error: scrub(err.message) }));
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function elapsedMs(start) {
  return Math.round(Number(process.hrtime.bigint() - start) / 1e5) / 10;
}

async function checkDatabase() {
  if (!pool) return { status: 'unhealthy', error: 'DATABASE_URL is not set' };
  const start = process.hrtime.bigint();
  try {
    const res = await withTimeout(
      pool.query({ text: 'SELECT current_database() AS db', query_timeout: CHECK_TIMEOUT_MS }),
      CHECK_TIMEOUT_MS, 'database check',
    );
    return { status: 'healthy', latency: elapsedMs(start), database: res.rows[0].db };
  } catch (err) {
    return { status: 'unhealthy', latency: elapsedMs(start), error: scrub(err.message || String(err)) };
  }
}

async function checkRedis() {
  if (!redis) return { status: 'disabled' };
  const start = process.hrtime.bigint();
  try {
    if (!redis.isReady) {
      throw new Error(`redis is not connected${lastRedisError ? ` (last error: ${lastRedisError})` : ''}`);
    }
    const pong = await withTimeout(redis.ping(), CHECK_TIMEOUT_MS, 'redis check');
    if (pong !== 'PONG') throw new Error(`unexpected PING reply: ${pong}`);
    return { status: 'healthy', latency: elapsedMs(start) };
  } catch (err) {
    return { status: 'unhealthy', latency: elapsedMs(start), error: scrub(err.message || String(err)) };
  }
}

// ---------------------------------------------------------------- http helpers

class HttpError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function send(res, code, body) {
  const text = JSON.stringify(body);
  res.writeHead(code, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
    'X-App-Version': APP_VERSION,
    'X-App-Instance': INSTANCE,
  });
  res.end(text);
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new HttpError(413, 'request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      if (!text.trim()) return resolve({});
      try {
        const value = JSON.parse(text);
        if (value === null || typeof value !== 'object' || Array.isArray(value)) {
          return reject(new HttpError(400, 'body must be a JSON object'));
        }
        return resolve(value);
      } catch (_err) {
        return reject(new HttpError(400, 'body is not valid JSON'));
      }
    });
    req.on('error', reject);
  });
}

function requirePool() {
  if (!pool) throw new HttpError(503, 'DATABASE_URL is not set');
  return pool;
}

// ---------------------------------------------------------------- routes

async function health() {
  const [database, redisStatus] = await Promise.all([checkDatabase(), checkRedis()]);
  const services = { database, redis: redisStatus };
  const failing = Object.entries(services)
    .filter(([, s]) => s.status === 'unhealthy')
    .map(([name]) => name);
  const body = {
    status: 'healthy',
    name: APP_NAME,
    version: APP_VERSION,
    instance: INSTANCE,
    pid: process.pid,
    hostname: os.hostname(),
    uptime: Math.round(process.uptime()),
    services,
  };
  if (FAIL_HEALTH) {
    body.status = 'unhealthy';
    body.error = 'FAIL_HEALTH=1: simulated failure';
  } else if (failing.length) {
    body.status = 'unhealthy';
    body.error = `unhealthy: ${failing.join(', ')}`;
  }
  return [body.status === 'healthy' ? 200 : 503, body];
}

async function stats() {
  const db = requirePool();
  const tables = await db.query(
    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
    + "AND table_type = 'BASE TABLE' ORDER BY table_name",
  );
  const counts = {};
  if (tables.rows.length) {
    const client = await db.connect();
    try {
      const sql = tables.rows
        .map((r) => `SELECT ${client.escapeLiteral(r.table_name)} AS t, count(*)::bigint AS n `
          + `FROM public.${client.escapeIdentifier(r.table_name)}`)
        .join(' UNION ALL ');
      const res = await client.query(sql);
      for (const row of res.rows) counts[row.t] = Number(row.n);
    } finally {
      client.release();
    }
  }
  const dbName = await db.query('SELECT current_database() AS db');
  return [200, { database: dbName.rows[0].db, tables: counts }];
}

const ORDER_STATUSES = ['pending', 'completed', 'failed', 'refunded'];

async function createOrder(req) {
  const body = await readJson(req);
  const amount = Number(body.amount);
  if (!Number.isFinite(amount) || amount <= 0) throw new HttpError(400, 'amount must be a number > 0');
  const status = body.status === undefined ? 'pending' : String(body.status);
  if (!ORDER_STATUSES.includes(status)) throw new HttpError(400, `status must be one of ${ORDER_STATUSES.join(', ')}`);
  const currency = body.currency === undefined ? 'AUD' : String(body.currency);
  if (!/^[A-Z]{3}$/.test(currency)) throw new HttpError(400, 'currency must be 3 upper-case letters');
  const bitcoinAmount = body.bitcoin_amount === undefined || body.bitcoin_amount === null
    ? null : Number(body.bitcoin_amount);
  if (bitcoinAmount !== null && !Number.isFinite(bitcoinAmount)) throw new HttpError(400, 'bitcoin_amount must be a number');

  const client = await requirePool().connect();
  try {
    await client.query('BEGIN');
    const customer = body.customer_id === undefined
      ? await client.query('SELECT id, tenant_id FROM customers ORDER BY id LIMIT 1')
      : await client.query('SELECT id, tenant_id FROM customers WHERE id = $1', [body.customer_id]);
    if (!customer.rows.length) throw new HttpError(400, 'no such customer');
    const { id: customerId, tenant_id: tenantId } = customer.rows[0];
    const order = await client.query(
      'INSERT INTO orders (customer_id, tenant_id, amount, currency, bitcoin_amount, status) '
      + 'VALUES ($1, $2, $3, $4, $5, $6) RETURNING *',
      [customerId, tenantId, amount, currency, bitcoinAmount, status],
    );
    const row = order.rows[0];
    await client.query(
      'INSERT INTO audit_events (customer_id, order_id, event_type, payload) VALUES ($1, $2, $3, $4)',
      [customerId, row.id, `order_${status}`,
        JSON.stringify({ amount: row.amount, currency, tenant_id: tenantId, source: 'api', instance: INSTANCE })],
    );
    await client.query('COMMIT');
    if (redis && redis.isReady) {
      redis.incr('opslab:orders_created').catch(() => {}); // best effort, never fails the request
    }
    return [201, row];
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    if (err instanceof HttpError) throw err;
    if (err.code === '22P02' || err.code === '22003') throw new HttpError(400, scrub(err.message));
    throw err;
  } finally {
    client.release();
  }
}

async function getOrder(id) {
  if (!/^\d+$/.test(id)) throw new HttpError(400, 'order id must be an integer');
  const res = await requirePool().query('SELECT * FROM orders WHERE id = $1', [id]);
  if (!res.rows.length) throw new HttpError(404, 'no such order');
  return [200, res.rows[0]];
}

async function route(req) {
  const url = new URL(req.url, 'http://localhost');
  const p = url.pathname.replace(/\/+$/, '') || '/';
  const m = req.method;
  const get = m === 'GET' || m === 'HEAD';

  if (p === '/api/health' || p === '/health') {
    if (!get) throw new HttpError(405, 'use GET');
    return health();
  }
  if (p === '/api/live') {
    return [200, { status: 'alive', version: APP_VERSION, instance: INSTANCE }];
  }
  if (p === '/api/version') {
    return [200, { name: APP_NAME, version: APP_VERSION }];
  }
  if (p === '/api/stats') {
    if (!get) throw new HttpError(405, 'use GET');
    return stats();
  }
  if (p === '/api/orders') {
    if (m !== 'POST') throw new HttpError(405, 'use POST');
    return createOrder(req);
  }
  const orderMatch = p.match(/^\/api\/orders\/([^/]+)$/);
  if (orderMatch) {
    if (!get) throw new HttpError(405, 'use GET');
    return getOrder(orderMatch[1]);
  }
  if (p === '/') {
    return [200, {
      name: APP_NAME,
      version: APP_VERSION,
      endpoints: ['GET /api/health', 'GET /health', 'GET /api/live', 'GET /api/version',
        'GET /api/stats', 'POST /api/orders', 'GET /api/orders/:id'],
    }];
  }
  throw new HttpError(404, 'not found');
}

let shuttingDown = false;

const server = http.createServer((req, res) => {
  const start = process.hrtime.bigint();
  if (shuttingDown) res.setHeader('Connection', 'close');
  route(req)
    .then(([code, body]) => send(res, code, body))
    .catch((err) => {
      if (err instanceof HttpError) {
        send(res, err.code, { error: err.message });
      } else {
        log('error', 'request failed', { method: req.method, url: req.url, error: scrub(err.message || String(err)) });
        send(res, 500, { error: scrub(err.message || 'internal error') });
      }
    })
    .finally(() => {
      if (!/health|live/.test(req.url)) {
        log('info', 'request', { method: req.method, url: req.url, status: res.statusCode, ms: elapsedMs(start) });
      }
    });
});
server.keepAliveTimeout = 5000;

// ---------------------------------------------------------------- lifecycle

async function migrate() {
  const sql = fs.readFileSync(path.join(__dirname, 'schema.sql'), 'utf8');
  await requirePool().query(sql);
  log('info', 'schema.sql applied');
}

function shutdown(reason) {
  if (shuttingDown) return;
  shuttingDown = true;
  log('info', 'shutting down', { reason });
  const force = setTimeout(() => {
    log('warn', 'forced exit after 5 s');
    process.exit(0);
  }, 5000);
  force.unref();
  server.close(async () => {
    // quit() would wait for a reconnect that may never come: only when connected.
    let redisClose = null;
    if (redis && redis.isReady) redisClose = redis.quit();
    else if (redis && redis.isOpen) redisClose = redis.disconnect();
    await Promise.allSettled([
      pool ? withTimeout(pool.end(), 2000, 'closing the database pool') : null,
      redisClose ? withTimeout(redisClose, 1000, 'closing redis') : null,
    ]);
    log('info', 'stopped');
    process.exit(0);
  });
  if (server.closeIdleConnections) server.closeIdleConnections();
}

process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('message', (msg) => { if (msg === 'shutdown') shutdown('pm2 shutdown message'); });

async function main() {
  log('info', 'starting', {
    version: APP_VERSION,
    host: HOST,
    port: PORT,
    database: DATABASE_URL ? redact(DATABASE_URL) : 'not set',
    redis: REDIS_URL ? redact(REDIS_URL) : 'disabled',
    startup_delay_ms: STARTUP_DELAY_MS,
    fail_health: FAIL_HEALTH,
  });
  if (DB_MIGRATE) await migrate();
  if (STARTUP_DELAY_MS > 0) await new Promise((resolve) => setTimeout(resolve, STARTUP_DELAY_MS));
  if (shuttingDown) return;
  server.listen(PORT, HOST, () => {
    log('info', 'listening', { url: `http://${HOST}:${PORT}` });
    if (typeof process.send === 'function') process.send('ready');
  });
}

server.on('error', (err) => {
  log('error', 'server error', { error: err.message });
  process.exit(1);
});

main().catch((err) => {
  log('error', 'startup failed', { error: scrub(err.message || String(err)) });
  process.exit(1);
});
