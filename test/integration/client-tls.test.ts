/**
 * TLS between clients and the proxy, against the real psql (libpq) and raw
 * sockets: SSLRequest and direct TLS (ALPN), the proxy's certificate checked by
 * libpq's verify-full, `client_tls.mode: require` (CancelRequest still allowed
 * in plaintext), bytes smuggled after SSLRequest (CVE-2021-23214), min_version,
 * and swapping the certificate with reload() while sessions stay up.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Duplex } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import pg from 'pg';
import { tlsServerEndPoint } from '../../src/auth/channel-binding.js';
import { createScramVerifier, ScramClient } from '../../src/auth/scram.js';
import type { ClientTlsConfig } from '../../src/config/config.js';
import { encodeAuthResponse, encodeSaslInitialResponse } from '../../src/protocol/frontend-messages.js';
import { psql } from '../fixtures/integration/psql.js';
import { makeTestCerts, type TestCerts } from '../helpers/certs.js';
import { ClientAuth } from '../helpers/client-auth.js';
import { direct, startProxy, testServer, whenRunning, type RunningProxy } from '../helpers/harness.js';
import {
  encodeCancel,
  encodeQueryMessage,
  encodeSslRequest,
  encodeStartup,
  errorFields,
} from '../helpers/raw-client.js';
import { frame } from '../helpers/wire.js';

const ROLE = 'ctls_scram';
const ROLE_PASSWORD = 'ctls-Pässword-1';
const GSSENC_REQUEST = ((): Buffer => {
  const b = Buffer.alloc(8);
  b.writeInt32BE(8, 0);
  b.writeInt32BE(80877104, 4);
  return b;
})();

let certs: TestCerts;

/* ------------------------------------------------------------------ raw sockets */

interface Message {
  type: string;
  body: Buffer;
}

/** The server's side of a plain or TLS socket, read as bytes or typed messages. */
class Reader {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  ended = false;

  constructor(readonly socket: Duplex) {
    socket.on('data', (chunk: Buffer) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      this.wake?.();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake?.();
    });
    socket.on('error', () => undefined);
  }

  private async need(n: number, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.ended) return false;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no answer within ${timeoutMs} ms (have ${this.buf.length} bytes)`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    return true;
  }

  /** One raw byte as a character ('S', 'N', 'E'), or 'closed'. */
  async byte(timeoutMs = 5000): Promise<string> {
    if (!(await this.need(1, timeoutMs))) return 'closed';
    const c = String.fromCharCode(this.buf[0]!);
    this.buf = this.buf.subarray(1);
    return c;
  }

  /** The next byte as a character without consuming it, or 'closed'. */
  async peek(timeoutMs = 5000): Promise<string> {
    return (await this.need(1, timeoutMs)) ? String.fromCharCode(this.buf[0]!) : 'closed';
  }

  /** The next typed message, or { type: 'closed' } once the connection has closed. */
  async message(timeoutMs = 5000): Promise<Message> {
    const closed = { type: 'closed', body: Buffer.alloc(0) };
    if (!(await this.need(5, timeoutMs))) return closed;
    const total = 1 + this.buf.readInt32BE(1);
    if (!(await this.need(total, timeoutMs))) return closed;
    const m = { type: String.fromCharCode(this.buf[0]!), body: Buffer.from(this.buf.subarray(5, total)) };
    this.buf = this.buf.subarray(total);
    return m;
  }

  async until(types: string, timeoutMs = 5000): Promise<Message[]> {
    const out: Message[] = [];
    for (;;) {
      const m = await this.message(timeoutMs);
      out.push(m);
      if (types.includes(m.type) || m.type === 'closed') return out;
    }
  }

  /** Startup as `user`, answering the authentication exchange, up to ReadyForQuery. */
  async login(user: string, password: string): Promise<Message[]> {
    this.socket.write(
      encodeStartup([
        ['user', user],
        ['database', 'postgres'],
      ]),
    );
    const auth = new ClientAuth(user, password);
    const seen: Message[] = [];
    for (;;) {
      const m = await this.message();
      seen.push(m);
      if (m.type === 'E') throw new Error(`login failed: ${errorFields(m.body).get('M')}`);
      if (m.type === 'closed') throw new Error('closed during login');
      if (m.type === 'R') {
        const answer = auth.respond(m.body);
        if (answer) this.socket.write(frame('p', answer));
      }
      if (m.type === 'Z') return seen;
    }
  }

  async query(sql: string): Promise<Message[]> {
    this.socket.write(encodeQueryMessage(sql));
    return this.until('Z');
  }

  /** Resolves once the peer has closed the connection. */
  async closed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      assert.ok(Date.now() < deadline, 'the connection is still open');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Stops reading so the socket can be handed to TLS; nothing may be left unread. */
  detach(): Socket {
    assert.equal(this.buf.length, 0, 'bytes after the answer to SSLRequest');
    this.socket.removeAllListeners('data');
    this.socket.removeAllListeners('close');
    return this.socket as Socket;
  }
}

function tcp(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = netConnect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** A transport for tls.connect that sends its first write in two pieces, 50 ms apart. */
class SplitFirstWrite extends Duplex {
  private first = true;

  constructor(
    private readonly socket: Socket,
    private readonly at: number,
  ) {
    super();
    socket.on('data', (d: Buffer) => this.push(d));
    socket.on('end', () => this.push(null));
    socket.on('error', (err) => this.destroy(err));
  }

  override _read(): void {}

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (!this.first) {
      this.socket.write(chunk, cb);
      return;
    }
    this.first = false;
    this.socket.write(chunk.subarray(0, this.at));
    setTimeout(() => this.socket.write(chunk.subarray(this.at), cb), 50);
  }
}

async function plain(port: number): Promise<Reader> {
  return new Reader(await tcp(port));
}

function handshake(t: TLSSocket): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    t.once('secureConnect', () => {
      t.off('error', reject);
      resolve(t);
    });
    t.once('error', reject);
  });
}

/** What tls.connect needs to check the proxy's certificate as libpq's verify-full would. */
function verifyFull(): ConnectionOptions {
  return { ca: readFileSync(certs.ca.cert), servername: 'localhost' };
}

/** SSLRequest, 'S', then the TLS handshake on the same socket. */
async function startTls(port: number, opts: ConnectionOptions = {}): Promise<Reader> {
  const r = await plain(port);
  r.socket.write(encodeSslRequest());
  assert.equal(await r.byte(), 'S', 'the proxy offers TLS');
  const t = tlsConnect({ socket: r.detach(), ...verifyFull(), ...opts });
  try {
    await handshake(t);
  } catch (err) {
    t.destroy();
    throw err;
  }
  return new Reader(t);
}

/** Direct TLS (sslnegotiation=direct): a ClientHello as the very first bytes. */
async function directTls(port: number, opts: ConnectionOptions = {}): Promise<Reader> {
  const t = tlsConnect({ host: '127.0.0.1', port, ...verifyFull(), ...opts });
  try {
    await handshake(t);
  } catch (err) {
    t.destroy();
    throw err;
  }
  return new Reader(t);
}

/** The SHA-256 fingerprint of the certificate the proxy serves new connections. */
async function fingerprint(port: number): Promise<string> {
  const r = await startTls(port);
  const fp = (r.socket as TLSSocket).getPeerX509Certificate()!.fingerprint256;
  r.socket.destroy();
  return fp;
}

const fingerprintOf = (certFile: string): string =>
  new X509Certificate(readFileSync(certFile)).fingerprint256;

/** The bytes of a real ClientHello offering ALPN postgresql, captured from node's TLS client. */
async function clientHello(): Promise<Buffer> {
  const sink = createServer();
  const got = new Promise<Buffer>((resolve) =>
    sink.once('connection', (s) => s.once('data', (chunk: Buffer) => (resolve(chunk), s.destroy()))),
  );
  await new Promise<void>((resolve) => sink.listen(0, '127.0.0.1', resolve));
  const port = (sink.address() as { port: number }).port;
  const t = tlsConnect({ host: '127.0.0.1', port, ALPNProtocols: ['postgresql'], servername: 'localhost' });
  t.on('error', () => undefined);
  const hello = await got;
  t.destroy();
  await new Promise<void>((resolve) => sink.close(() => resolve()));
  return hello;
}

function fatal(m: Message): { code: string; message: string; hint?: string } {
  assert.equal(m.type, 'E', `expected an ErrorResponse, got ${m.type}`);
  const f = errorFields(m.body);
  assert.equal(f.get('S'), 'FATAL');
  return { code: f.get('C')!, message: f.get('M')!, hint: f.get('H') };
}

/** Values of the first column of each DataRow. */
function rows(msgs: Message[]): string[] {
  return msgs.filter((m) => m.type === 'D').map((m) => m.body.toString('utf8', 6, 6 + m.body.readInt32BE(2)));
}

function tlsConfig(over: Partial<ClientTlsConfig> = {}): ClientTlsConfig {
  return {
    mode: 'allow',
    certFile: certs.localhost.cert,
    keyFile: certs.localhost.key,
    minVersion: 'TLSv1.2',
    ...over,
  };
}

/** psql's environment for sslmode, with `ca` as the root certificate (for verify-ca / verify-full). */
function sslEnv(sslmode: string, ca?: string): Record<string, string> {
  return { PGSSLMODE: sslmode, ...(ca ? { PGSSLROOTCERT: ca } : {}) };
}

before(async () => {
  certs = makeTestCerts();
  const d = await direct();
  try {
    await d.query(`DROP ROLE IF EXISTS ${ROLE}`);
    await d.query(`CREATE ROLE ${ROLE} LOGIN PASSWORD '${ROLE_PASSWORD}'`);
  } finally {
    await d.end();
  }
});

after(async () => {
  const d = await direct();
  try {
    await d.query(`DROP ROLE IF EXISTS ${ROLE}`);
  } finally {
    await d.end();
  }
  rmSync(certs.dir, { recursive: true, force: true });
});

/* ------------------------------------------------------------------ mode allow */

describe('client TLS, mode allow', () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({ config: { clientTls: tlsConfig() } });
  });
  after(() => proxy.close());

  const local = (): { host: string; port: number } => ({ host: 'localhost', port: proxy.port });

  test('psql sslmode=require: TLS to the proxy (\\conninfo), plaintext to the server', async () => {
    const r = await psql(
      local(),
      ['-c', 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()', '-c', '\\conninfo'],
      {
        env: sslEnv('require'),
      },
    );
    assert.equal(r.status, 0, r.stderr);
    // The server's side of the proxy's connection is plaintext (no TLS upstream here).
    assert.match(r.stdout, /^\s*ssl\s*\n-+\n\s*f\s*$/m);
    assert.match(r.stdout, /SSL connection \(protocol: TLSv1\.[23], cipher: /);
    const auth = proxy.logs.filter((l) => l.event === 'authenticated' && typeof l.client_tls === 'string');
    assert.ok(auth.length > 0, 'the proxy logged a TLS login');
    assert.equal(auth.at(-1)!.upstream_tls, false);
  });

  test('psql sslmode=disable still works in mode allow, without TLS', async () => {
    const r = await psql(local(), ['-c', '\\conninfo'], { env: sslEnv('disable') });
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /SSL connection/);
  });

  const verifyCases: Array<{ name: string; host: string; ca: () => string; fails?: RegExp }> = [
    { name: 'by name, the right CA', host: 'localhost', ca: () => certs.ca.cert },
    {
      name: 'another CA',
      host: 'localhost',
      ca: () => certs.otherCa.cert,
      fails: /certificate verify failed/,
    },
    {
      name: 'by IP address (the certificate has no IP SAN)',
      host: '127.0.0.1',
      ca: () => certs.ca.cert,
      // libpq 15 counts the CN too: 'for "localhost" (and 1 other name)'
      fails:
        /server certificate for "localhost"( \(and \d+ other names?\))? does not match host name "127\.0\.0\.1"/,
    },
  ];
  for (const c of verifyCases) {
    test(`psql sslmode=verify-full, ${c.name}: ${c.fails ? 'refused by libpq' : 'works'}`, async () => {
      const r = await psql(
        { host: c.host, port: proxy.port },
        ['-tA', '-c', 'SELECT 42', '-c', '\\conninfo'],
        {
          env: sslEnv('verify-full', c.ca()),
        },
      );
      if (c.fails) {
        assert.notEqual(r.status, 0);
        assert.match(r.stderr, c.fails);
      } else {
        assert.equal(r.status, 0, r.stderr);
        assert.match(r.stdout, /^42$/m);
        assert.match(r.stdout, /SSL connection/);
      }
    });
  }

  test('SCRAM passthrough over client TLS (plaintext upstream): psql logs in, channel binding refused by libpq itself', async () => {
    const ok = await psql(local(), ['-tA', '-c', 'SELECT current_user', '-c', '\\conninfo'], {
      env: sslEnv('require'),
      user: ROLE,
      password: ROLE_PASSWORD,
    });
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, new RegExp(`^${ROLE}$`, 'm'));
    assert.match(ok.stdout, /SSL connection/);
    // The server offers no SCRAM-SHA-256-PLUS on a plaintext connection, and the
    // proxy relays its list: libpq refuses as it would against that server.
    const bound = await psql(local(), ['-c', 'SELECT 1'], {
      env: { ...sslEnv('require'), PGCHANNELBINDING: 'require' },
      user: ROLE,
      password: ROLE_PASSWORD,
    });
    assert.notEqual(bound.status, 0);
    assert.match(bound.stderr, /channel binding is required, but server did not offer/);
    const wrong = await psql(local(), ['-c', 'SELECT 1'], {
      env: sslEnv('require'),
      user: ROLE,
      password: 'wrong',
    });
    assert.notEqual(wrong.status, 0);
    assert.match(wrong.stderr, new RegExp(`password authentication failed for user "${ROLE}"`));
  });

  test('SSLRequest, TLS, then a login and a query over raw sockets', async () => {
    const r = await startTls(proxy.port);
    try {
      await r.login(testServer().user, testServer().password);
      assert.deepEqual(rows(await r.query('SELECT 7')), ['7']);
    } finally {
      r.socket.destroy();
    }
  });

  test('GSSENCRequest is answered N, then SSLRequest S (libpq gssencmode=prefer)', async () => {
    const r = await plain(proxy.port);
    r.socket.write(GSSENC_REQUEST);
    assert.equal(await r.byte(), 'N');
    r.socket.write(encodeSslRequest());
    assert.equal(await r.byte(), 'S');
    const t = tlsConnect({ socket: r.detach(), ...verifyFull() });
    await handshake(t);
    const tr = new Reader(t);
    try {
      await tr.login(testServer().user, testServer().password);
    } finally {
      t.destroy();
    }
  });

  test('bytes after SSLRequest in the same write: FATAL 08P01, never an S (CVE-2021-23214)', async () => {
    const r = await plain(proxy.port);
    r.socket.write(
      Buffer.concat([
        encodeSslRequest(),
        encodeStartup([
          ['user', testServer().user],
          ['database', 'postgres'],
        ]),
      ]),
    );
    const first = await r.peek();
    assert.equal(first, 'E', `the first byte answered must be an ErrorResponse, got ${first}`);
    const e = fatal(await r.message());
    assert.equal(e.code, '08P01');
    assert.equal(e.message, 'received unencrypted data after SSL request');
    await r.closed();
  });

  test('a second SSLRequest inside TLS: FATAL 08P01', async () => {
    const r = await startTls(proxy.port);
    r.socket.write(encodeSslRequest());
    const e = fatal(await r.message());
    assert.equal(e.code, '08P01');
    assert.match(e.message, /encryption negotiation on an encrypted connection/);
    await r.closed();
  });

  test('direct TLS with ALPN postgresql: logs in and queries', async () => {
    const r = await directTls(proxy.port, { ALPNProtocols: ['postgresql'] });
    try {
      assert.equal((r.socket as TLSSocket).alpnProtocol, 'postgresql');
      const seen = await r.login(testServer().user, testServer().password);
      assert.equal(seen[0]!.type, 'R');
      assert.equal(seen[0]!.body.readInt32BE(0), 10, 'AuthenticationSASL first');
      assert.deepEqual(rows(await r.query('SELECT 8')), ['8']);
    } finally {
      r.socket.destroy();
    }
  });

  test('direct TLS without ALPN: FATAL 08P01, then the proxy closes', async () => {
    const r = await directTls(proxy.port);
    assert.equal((r.socket as TLSSocket).alpnProtocol, false);
    const e = fatal(await r.message());
    assert.equal(e.code, '08P01');
    assert.equal(
      e.message,
      'received direct TLS connection request without ALPN protocol negotiation extension',
    );
    await r.closed();
  });

  for (const at of [1, 5, 100]) {
    test(`direct TLS, the ClientHello split after ${at} bytes (as TCP may): logs in`, async () => {
      const sock = await tcp(proxy.port);
      const t = tlsConnect({
        socket: new SplitFirstWrite(sock, at) as unknown as Socket,
        ALPNProtocols: ['postgresql'],
        ...verifyFull(),
      });
      const r = new Reader(await handshake(t));
      try {
        await r.login(testServer().user, testServer().password);
      } finally {
        t.destroy();
        sock.destroy();
      }
    });
  }

  test('direct TLS with ALPN http/1.1: the handshake fails with no_application_protocol', async () => {
    await assert.rejects(directTls(proxy.port, { ALPNProtocols: ['http/1.1'] }), {
      code: 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL',
    });
    // and the proxy goes on
    const r = await directTls(proxy.port, { ALPNProtocols: ['postgresql'] });
    await r.login(testServer().user, testServer().password);
    r.socket.destroy();
  });
});

/* ------------------------------------------------------------------ min_version */

describe('client_tls.min_version', () => {
  const proxies: Partial<Record<'TLSv1.2' | 'TLSv1.3', RunningProxy>> = {};
  before(async () => {
    proxies['TLSv1.2'] = await startProxy({ config: { clientTls: tlsConfig() } });
    proxies['TLSv1.3'] = await startProxy({ config: { clientTls: tlsConfig({ minVersion: 'TLSv1.3' }) } });
  });
  after(async () => {
    await proxies['TLSv1.2']?.close();
    await proxies['TLSv1.3']?.close();
  });

  const cases = [
    { min: 'TLSv1.2', client: 'TLSv1.2', ok: true },
    { min: 'TLSv1.2', client: 'TLSv1.3', ok: true },
    { min: 'TLSv1.3', client: 'TLSv1.2', ok: false },
    { min: 'TLSv1.3', client: 'TLSv1.3', ok: true },
  ] as const;
  for (const c of cases) {
    test(`min_version ${c.min}, a ${c.client} client: ${c.ok ? 'works' : 'handshake fails'}`, async () => {
      const port = proxies[c.min]!.port;
      const opts: ConnectionOptions = { minVersion: c.client, maxVersion: c.client };
      if (!c.ok) {
        await assert.rejects(startTls(port, opts), { code: 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION' });
        return;
      }
      const r = await startTls(port, opts);
      try {
        assert.equal((r.socket as TLSSocket).getProtocol(), c.client);
        await r.login(testServer().user, testServer().password);
      } finally {
        r.socket.destroy();
      }
    });
  }
});

/* ------------------------------------------------------------------ mode require */

describe('client TLS, mode require', () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({ config: { clientTls: tlsConfig({ mode: 'require' }) } });
  });
  after(() => proxy.close());

  test('psql sslmode=disable: FATAL with the hint; node-postgres gets 28000', async () => {
    const r = await psql({ host: 'localhost', port: proxy.port }, ['-c', 'SELECT 1'], {
      env: sslEnv('disable'),
    });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /FATAL: {2}pg-readonly-proxy requires TLS: this connection is not encrypted/);
    assert.match(r.stderr, /HINT: {2}Connect with sslmode=require \(or verify-ca \/ verify-full\)\./);
    const c = new pg.Client({ host: proxy.host, port: proxy.port, user: 'someone', database: 'postgres' });
    c.on('error', () => undefined);
    await assert.rejects(c.connect(), { code: '28000', message: /requires TLS/ });
    assert.ok(
      proxy.logs.some(
        (l) => l.event === 'security' && l.kind === 'plaintext_refused' && l.user === 'someone',
      ),
    );
  });

  for (const sslmode of ['prefer', 'require'] as const) {
    test(`psql sslmode=${sslmode}: works over TLS`, async () => {
      const r = await psql(
        { host: 'localhost', port: proxy.port },
        ['-tA', '-c', 'SELECT 1', '-c', '\\conninfo'],
        {
          env: sslEnv(sslmode),
        },
      );
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /SSL connection/);
    });
  }

  test('direct TLS counts as TLS', async () => {
    const r = await directTls(proxy.port, { ALPNProtocols: ['postgresql'] });
    try {
      await r.login(testServer().user, testServer().password);
    } finally {
      r.socket.destroy();
    }
  });

  test('a CancelRequest in plaintext still cancels a TLS session', async () => {
    const c = await proxy.client({ ssl: { ...verifyFull() } });
    try {
      const key = c as unknown as { processID: number; secretKey: number };
      const sql = 'SELECT pg_sleep(9) AS ctls_cancel_me';
      const running = c.query(sql);
      running.catch(() => undefined);
      await whenRunning(sql);
      const secret = Buffer.alloc(4);
      secret.writeInt32BE(key.secretKey);
      const cancel = await plain(proxy.port);
      const started = Date.now();
      cancel.socket.write(encodeCancel(key.processID, secret));
      await cancel.closed();
      await assert.rejects(running, { code: '57014' });
      assert.ok(Date.now() - started < 5000, 'cancelled well before pg_sleep ended');
      assert.deepEqual((await c.query('SELECT 1 AS n')).rows, [{ n: 1 }]);
    } finally {
      await c.end();
    }
  });
});

/* ------------------------------------------------------------------ no TLS configured */

describe('startup_timeout_ms covers the TLS handshake', () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({ config: { clientTls: tlsConfig(), startupTimeoutMs: 300 } });
  });
  after(() => proxy.close());

  const stalls: Array<[string, (r: Reader) => Promise<void>]> = [
    [
      'SSLRequest answered S, then no ClientHello',
      async (r) => {
        r.socket.write(encodeSslRequest());
        assert.equal(await r.byte(), 'S');
      },
    ],
    [
      'half a ClientHello (direct TLS)',
      async (r) => void r.socket.write((await clientHello()).subarray(0, 20)),
    ],
  ];
  for (const [name, stall] of stalls) {
    test(`${name}: the proxy closes the connection`, async () => {
      const r = await plain(proxy.port);
      const started = Date.now();
      await stall(r);
      await r.closed(4000);
      const elapsed = Date.now() - started;
      assert.ok(elapsed >= 250, `closed after ${elapsed} ms, before the timeout`);
      assert.ok(proxy.logs.some((l) => l.event === 'fatal' && l.kind === 'startup_timeout'));
      assert.equal(proxy.server.activeSessions, 0);
    });
  }
});

describe('a proxy without TLS', () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy();
  });
  after(() => proxy.close());

  test('direct TLS is refused with FATAL 08P01 (a ClientHello is no startup packet), and the proxy keeps serving', async () => {
    const hello = await clientHello();
    assert.equal(hello[0], 0x16, 'a TLS handshake record');
    const r = await plain(proxy.port);
    r.socket.write(hello);
    const e = fatal(await r.message());
    assert.equal(e.code, '08P01');
    assert.match(e.message, /length/);
    await r.closed();
    const ssl = await plain(proxy.port);
    ssl.socket.write(encodeSslRequest());
    assert.equal(await ssl.byte(), 'N', 'SSLRequest is answered N without a certificate');
    ssl.socket.destroy();
    const c = await proxy.client();
    assert.deepEqual((await c.query('SELECT 1 AS n')).rows, [{ n: 1 }]);
    await c.end();
  });
});

/* ------------------------------------------------------------------ reload */

/** Copies the localhost certificate and key into a new directory (so a test can overwrite them); returns it. */
function copyLocalhostPair(prefix: string, files: { cert: string; key: string }): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  files.cert = path.join(dir, 'proxy.crt');
  files.key = path.join(dir, 'proxy.key');
  copyFileSync(certs.localhost.cert, files.cert);
  copyFileSync(certs.localhost.key, files.key);
  return dir;
}

describe('reload: a new certificate for new connections, open sessions undisturbed', () => {
  let dir: string;
  let proxy: RunningProxy;
  const files = { cert: '', key: '' };

  before(async () => {
    dir = copyLocalhostPair('pgro-ctls-reload-', files);
    proxy = await startProxy({
      config: { clientTls: tlsConfig({ certFile: files.cert, keyFile: files.key }) },
    });
  });
  after(async () => {
    await proxy.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('renewed certificate picked up; a broken key is refused and the renewed one kept', async () => {
    const original = fingerprintOf(certs.localhost.cert);
    const renewed = fingerprintOf(certs.localhostRenewed.cert);
    assert.notEqual(original, renewed);
    assert.equal(await fingerprint(proxy.port), original);
    assert.equal(proxy.server.tlsCertificate?.fingerprint256, original);

    const old = await proxy.client({ ssl: { ...verifyFull() } });
    try {
      const pid = (await old.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
      copyFileSync(certs.localhostRenewed.cert, files.cert);
      copyFileSync(certs.localhostRenewed.key, files.key);
      assert.equal(proxy.server.reload().ok, true);
      assert.equal(await fingerprint(proxy.port), renewed);
      assert.equal(proxy.server.tlsCertificate?.fingerprint256, renewed);
      const reloaded = proxy.logs.filter((l) => l.event === 'reloaded');
      assert.equal(reloaded.at(-1)?.ok, true);
      // the open session: same upstream backend, still answering
      assert.deepEqual((await old.query('SELECT pg_backend_pid() AS pid')).rows, [{ pid }]);

      writeFileSync(files.key, '-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n');
      assert.equal(proxy.server.reload().ok, false);
      const failed = proxy.logs.filter((l) => l.event === 'reload_failed');
      assert.equal(failed.at(-1)?.part, 'client_tls');
      assert.match(String(failed.at(-1)?.err), /client_tls/);
      assert.equal(await fingerprint(proxy.port), renewed, 'the renewed certificate is still served');
      // a key that does not belong to the certificate is refused the same way
      copyFileSync(certs.localhost.key, files.key);
      assert.equal(proxy.server.reload().ok, false);
      assert.equal(await fingerprint(proxy.port), renewed);
      assert.deepEqual((await old.query('SELECT pg_backend_pid() AS pid')).rows, [{ pid }]);
      // new sessions work with the renewed certificate under verify-full
      const r = await psql({ host: 'localhost', port: proxy.port }, ['-tA', '-c', 'SELECT 5'], {
        env: sslEnv('verify-full', certs.ca.cert),
      });
      assert.equal(r.status, 0, r.stderr);
    } finally {
      await old.end();
    }
  });
});

describe('reload between the TLS handshake and a SCRAM-SHA-256-PLUS login', () => {
  const ENV = 'PGRO_TEST_CTLS_UPSTREAM';
  let dir: string;
  let proxy: RunningProxy;
  const files = { cert: '', key: '' };

  before(async () => {
    dir = copyLocalhostPair('pgro-ctls-bind-', files);
    process.env[ENV] = testServer().password;
    proxy = await startProxy({
      config: {
        clientTls: tlsConfig({ certFile: files.cert, keyFile: files.key }),
        auth: {
          mode: 'proxy',
          allowMd5: false,
          users: {
            bound: {
              password: createScramVerifier('bound-pw'),
              upstreamUser: testServer().user,
              upstreamPasswordEnv: ENV,
              databases: ['postgres'],
            },
          },
        },
      },
    });
  });
  after(async () => {
    await proxy.close();
    delete process.env[ENV];
    rmSync(dir, { recursive: true, force: true });
  });

  test('the proxy binds to the certificate this session was served, not the reloaded one', async () => {
    const r = await startTls(proxy.port);
    try {
      const served = (r.socket as TLSSocket).getPeerX509Certificate()!;
      assert.equal(served.fingerprint256, fingerprintOf(certs.localhost.cert));
      copyFileSync(certs.localhostRenewed.cert, files.cert);
      copyFileSync(certs.localhostRenewed.key, files.key);
      assert.equal(proxy.server.reload().ok, true);
      assert.equal(await fingerprint(proxy.port), fingerprintOf(certs.localhostRenewed.cert));

      r.socket.write(
        encodeStartup([
          ['user', 'bound'],
          ['database', 'postgres'],
        ]),
      );
      const sasl = await r.message();
      assert.equal(sasl.body.readInt32BE(0), 10);
      const scram = new ScramClient({
        password: 'bound-pw',
        serverMechanisms: sasl.body.toString('latin1', 4).split('\0').filter(Boolean),
        channelBinding: tlsServerEndPoint(served.raw),
      });
      assert.equal(scram.mechanism, 'SCRAM-SHA-256-PLUS');
      r.socket.write(encodeSaslInitialResponse(scram.mechanism, scram.clientFirst()));
      const cont = await r.message();
      assert.equal(cont.type, 'R', errorFields(cont.body).get('M'));
      assert.equal(cont.body.readInt32BE(0), 11);
      r.socket.write(encodeAuthResponse(await scram.clientFinal(cont.body.subarray(4))));
      const final = await r.message();
      assert.equal(final.type, 'R', errorFields(final.body).get('M'));
      assert.equal(final.body.readInt32BE(0), 12);
      scram.verifyServerFinal(final.body.subarray(4));
      const rest = await r.until('ZE');
      assert.equal(rest.at(-1)!.type, 'Z');
      assert.deepEqual(rows(await r.query('SELECT 9')), ['9']);
    } finally {
      r.socket.destroy();
    }
  });
});
