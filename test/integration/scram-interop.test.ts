/**
 * src/auth/scram.ts against the real thing, in every direction:
 *
 * - PostgreSQL logs in roles whose verifiers we made, with our ScramClient (raw
 *   socket), node-postgres (ASCII only: it does no SASLprep) and psql (libpq's
 *   SASLprep);
 * - PostgreSQL's own verifiers are byte for byte what createScramVerifier makes
 *   from the same salt, and our ScramServer accepts them;
 * - libpq (psql) logs in to a throwaway server that runs our ScramServer, with and
 *   without TLS and channel binding, so libpq judges our tls-server-end-point hash;
 * - our ScramClient logs in to PostgreSQL over TLS with SCRAM-SHA-256-PLUS for
 *   RSA, ECDSA and RSA-PSS certificates, so PostgreSQL judges our hash too.
 *
 * Passwords include non-ASCII ones that SASLprep changes and ones for which it
 * falls back to the raw password, to check that our SASLprep is PostgreSQL's.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { connect as tlsConnect, createSecureContext, TLSSocket } from 'node:tls';
import { tlsServerEndPoint } from '../../src/auth/channel-binding.js';
import {
  createScramVerifier,
  parseScramVerifier,
  SCRAM_SHA_256,
  SCRAM_SHA_256_PLUS,
  ScramClient,
  ScramError,
  ScramServer,
  type ScramVerifier,
} from '../../src/auth/scram.js';
import { direct, testServer } from '../helpers/harness.js';
import {
  encodeSslRequest,
  encodeStartup,
  encodeTerminateMessage,
  errorFields,
} from '../helpers/raw-client.js';
import { serveTls } from '../helpers/server-tls.js';
import { frame } from '../helpers/wire.js';

const PREFIX = 'scram_interop_';
const WRONG = 'not-the-password';
/** SASLprep: unchanged, mapped, normalised, and four ways of falling back to the raw password. */
const PASSWORDS: Array<{ name: string; password: string }> = [
  { name: 'ascii', password: "S3cret-p@ss,word='1'" },
  { name: 'nbsp', password: 'pä\u00a0ss' },
  { name: 'nfkc', password: '\u2168-\ufb01-\uff30' },
  { name: 'rtl', password: '\u05e9\u00a0\u05dd' },
  { name: 'prohibited', password: 'a\u0340b\u00a0' }, // U+0340 is prohibited before NFKC, not after
  { name: 'bidi', password: '\u05e9\u00a0a\u05dd' },
  { name: 'unassigned', password: '\u{1f600}\u00a0x' }, // unassigned in Unicode 3.2
  { name: 'soft_hyphen', password: 'x\u00ady\u00a0' },
];

const hasPsql = ((): boolean => {
  try {
    execFileSync('psql', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
const NO_PSQL = 'psql is not on PATH (Debian package postgresql-client): libpq cannot be checked';

/* ------------------------------------------------------------------ wire */

const cstr = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');
const int32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const SSL_REQUEST_CODE = 80877103;

/** Reads PostgreSQL frames (typed or untyped) and raw bytes from a socket. */
class Wire {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  private closed = false;
  private readonly onData = (chunk: Buffer): void => {
    this.buf = Buffer.concat([this.buf, chunk]);
    this.wake?.();
  };
  private readonly onClose = (): void => {
    this.closed = true;
    this.wake?.();
  };

  constructor(readonly socket: Duplex) {
    socket.on('data', this.onData);
    socket.on('close', this.onClose);
    socket.on('error', this.onClose);
  }

  /** Stops reading, so the socket can be handed to TLS. */
  detach(): void {
    assert.equal(this.buf.length, 0, 'no bytes may come before the TLS handshake');
    this.socket.off('data', this.onData);
    this.socket.off('close', this.onClose);
    this.socket.off('error', this.onClose);
  }

  async take(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed (wanted ${n} bytes, have ${this.buf.length})`);
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  async message(): Promise<{ type: string; body: Buffer }> {
    const head = await this.take(5);
    return { type: String.fromCharCode(head[0]!), body: await this.take(head.readInt32BE(1) - 4) };
  }

  /** A startup-phase packet (no type byte): its body after the length. */
  async untyped(): Promise<Buffer> {
    const head = await this.take(4);
    return this.take(head.readInt32BE(0) - 4);
  }

  send(b: Buffer): void {
    this.socket.write(b);
  }
}

/** An ErrorResponse from PostgreSQL, as an Error with its fields. */
class ServerError extends Error {
  constructor(readonly fields: Map<string, string>) {
    super(fields.get('M'));
    this.name = 'ServerError';
  }
  get code(): string | undefined {
    return this.fields.get('C');
  }
}

async function tcp(host: string, port: number): Promise<Socket> {
  const s = connect({ host, port });
  await once(s, 'connect');
  return s;
}

/** SSLRequest, then TLS without checking the certificate (the tests check what it hashes to). */
async function startTls(wire: Wire): Promise<TLSSocket> {
  wire.send(encodeSslRequest());
  const answer = (await wire.take(1)).toString('latin1');
  assert.equal(answer, 'S', 'the server accepts TLS');
  wire.detach();
  const t = tlsConnect({ socket: wire.socket as Socket, rejectUnauthorized: false });
  await once(t, 'secureConnect');
  return t;
}

const saslBody = (b: Buffer): Buffer => b.subarray(4);

/**
 * Logs in to the real server with our ScramClient; resolves with the mechanism
 * used, rejects with the server's ErrorResponse or our ScramError.
 * stripPlus: play a man in the middle who removes SCRAM-SHA-256-PLUS from the list.
 */
async function scramLogin(opts: {
  user: string;
  password: string;
  tls?: boolean;
  stripPlus?: boolean;
}): Promise<{ mechanism: string; channelBinding: Buffer | undefined }> {
  const s = testServer();
  let wire = new Wire(await tcp(s.host, s.port));
  let channelBinding: Buffer | undefined;
  if (opts.tls) {
    const t = await startTls(wire);
    channelBinding = tlsServerEndPoint(Buffer.from(t.getPeerX509Certificate()!.raw));
    assert.ok(channelBinding, 'the test certificates all allow channel binding');
    wire = new Wire(t);
  }
  try {
    wire.send(
      encodeStartup([
        ['user', opts.user],
        ['database', 'postgres'],
      ]),
    );
    const expect = async (code: number): Promise<Buffer> => {
      const m = await wire.message();
      if (m.type === 'E') throw new ServerError(errorFields(m.body));
      assert.equal(m.type, 'R');
      assert.equal(m.body.readInt32BE(0), code, 'authentication request');
      return m.body;
    };
    const offered = (await expect(10)).subarray(4).toString('utf8').split('\0').filter(Boolean);
    const client = new ScramClient({
      password: opts.password,
      serverMechanisms: opts.stripPlus ? offered.filter((m) => m !== SCRAM_SHA_256_PLUS) : offered,
      channelBinding,
    });
    const first = client.clientFirst();
    wire.send(frame('p', Buffer.concat([cstr(client.mechanism), int32(first.length), first])));
    wire.send(frame('p', await client.clientFinal(saslBody(await expect(11)))));
    client.verifyServerFinal(saslBody(await expect(12)));
    await expect(0);
    for (let m = await wire.message(); m.type !== 'Z'; m = await wire.message()) {
      if (m.type === 'E') throw new ServerError(errorFields(m.body));
    }
    wire.send(encodeTerminateMessage());
    return { mechanism: client.mechanism, channelBinding };
  } finally {
    wire.socket.destroy();
  }
}

const run = (file: string, args: string[], env: NodeJS.ProcessEnv) =>
  new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(file, args, { env, timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stdout, stderr });
    });
  });

/** psql (libpq) as `user` with `password`; libpq settings as environment variables. */
function psql(
  port: number,
  user: string,
  password: string,
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return run(
    'psql',
    [
      '-X',
      '-w',
      '-At',
      '-h',
      '127.0.0.1',
      '-p',
      String(port),
      '-U',
      user,
      '-d',
      'postgres',
      '-c',
      'SELECT current_user',
    ],
    {
      ...process.env,
      PGPASSWORD: password,
      PGSSLMODE: 'disable',
      PGGSSENCMODE: 'disable',
      PGCONNECT_TIMEOUT: '10',
      PGPASSFILE: '/dev/null',
      ...env,
    },
  );
}

/* ------------------------------------------------------------------ certificates */

const tmp = mkdtempSync(path.join(tmpdir(), 'pgro-scram-'));

interface Cert {
  name: string;
  key: string;
  cert: string;
}

/** A self-signed certificate for 127.0.0.1: a fresh key of `keyAlg`, signed with `sign`. */
function makeCert(name: string, keyAlg: string[], sign: string[]): Cert {
  const openssl = (args: string[]) =>
    execFileSync('openssl', args, { cwd: tmp, stdio: ['ignore', 'ignore', 'pipe'] });
  openssl(['genpkey', ...keyAlg, '-out', `${name}.key`]);
  openssl([
    'req',
    '-x509',
    '-key',
    `${name}.key`,
    ...sign,
    '-days',
    '1',
    '-subj',
    '/CN=127.0.0.1',
    '-out',
    `${name}.crt`,
  ]);
  return {
    name,
    key: readFileSync(path.join(tmp, `${name}.key`), 'utf8'),
    cert: readFileSync(path.join(tmp, `${name}.crt`), 'utf8'),
  };
}

const RSA = ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'];
const certs = {
  rsaSha256: makeCert('rsa-sha256', RSA, ['-sha256']),
  ecP384Sha384: makeCert(
    'ec-p384-sha384',
    ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384'],
    ['-sha384'],
  ),
  rsaPssSha512: makeCert('rsa-pss-sha512', RSA, ['-sha512', '-sigopt', 'rsa_padding_mode:pss']),
  ed25519: makeCert('ed25519', ['-algorithm', 'ED25519'], []),
};
const derOf = (c: Cert): Buffer => Buffer.from(new X509Certificate(c.cert).raw);

/* ------------------------------------------------------------------ roles */

const rolesMade: string[] = [];

async function createRole(role: string, password: string, encryption?: 'scram-sha-256'): Promise<void> {
  const d = await direct();
  try {
    await d.query(`DROP ROLE IF EXISTS ${role}`);
    if (encryption) await d.query(`SET password_encryption = '${encryption}'`);
    await d.query(`CREATE ROLE ${role} LOGIN PASSWORD ${d.escapeLiteral(password)}`);
    rolesMade.push(role);
  } finally {
    await d.end();
  }
}

async function storedVerifier(role: string): Promise<string> {
  const d = await direct();
  try {
    const r = await d.query('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [role]);
    return (r.rows[0] as { rolpassword: string }).rolpassword;
  } finally {
    await d.end();
  }
}

after(async () => {
  const d = await direct();
  try {
    for (const role of rolesMade) await d.query(`DROP ROLE IF EXISTS ${role}`);
  } finally {
    await d.end();
  }
  rmSync(tmp, { recursive: true, force: true });
});

/* ------------------------------------------------------------------ tests */

describe('PostgreSQL accepts the verifiers we make', () => {
  before(async () => {
    for (const p of PASSWORDS) await createRole(`${PREFIX}ours_${p.name}`, createScramVerifier(p.password));
  });

  for (const p of PASSWORDS) {
    const role = `${PREFIX}ours_${p.name}`;
    test(`${p.name}: stored as given, and our ScramClient logs in`, async () => {
      assert.ok(parseScramVerifier(await storedVerifier(role)));
      assert.deepEqual(await scramLogin({ user: role, password: p.password }), {
        mechanism: SCRAM_SHA_256,
        channelBinding: undefined,
      });
      await assert.rejects(scramLogin({ user: role, password: WRONG }), {
        name: 'ServerError',
        code: '28P01',
        message: `password authentication failed for user "${role}"`,
      });
    });

    test(`${p.name}: psql (libpq's SASLprep) logs in`, { skip: hasPsql ? false : NO_PSQL }, async () => {
      const r = await psql(testServer().port, role, p.password);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), role);
    });
  }

  test('node-postgres logs in (ASCII password: node-postgres does no SASLprep)', async () => {
    const c = await direct({ user: `${PREFIX}ours_ascii`, password: PASSWORDS[0]!.password });
    try {
      const r = await c.query('SELECT current_user AS u');
      assert.equal((r.rows[0] as { u: string }).u, `${PREFIX}ours_ascii`);
    } finally {
      await c.end();
    }
  });
});

describe("PostgreSQL's verifiers are ours", () => {
  const verifiers = new Map<string, string>();
  before(async () => {
    for (const p of PASSWORDS) {
      const role = `${PREFIX}pg_${p.name}`;
      await createRole(role, p.password, 'scram-sha-256');
      verifiers.set(p.name, await storedVerifier(role));
    }
  });

  for (const p of PASSWORDS) {
    test(`${p.name}: same bytes from the same salt, and our server accepts the password`, async () => {
      const text = verifiers.get(p.name)!;
      const v = parseScramVerifier(text);
      assert.ok(v, `PostgreSQL's verifier parses: ${text}`);
      assert.equal(createScramVerifier(p.password, { salt: v.salt, iterations: v.iterations }), text);
      const login = async (password: string) => {
        const server = new ScramServer({ user: p.name, verifier: v, mockSecret: Buffer.alloc(32, 1) });
        const client = new ScramClient({ password, serverMechanisms: server.mechanisms() });
        const serverFirst = server.handleClientFirst(client.mechanism, client.clientFirst());
        client.verifyServerFinal(server.handleClientFinal(await client.clientFinal(serverFirst)));
      };
      await login(p.password);
      await assert.rejects(login(WRONG), (err) => err instanceof ScramError && err.sqlstate === '28P01');
    });
  }
});

/**
 * A throwaway server that speaks just enough protocol for libpq to authenticate
 * with our ScramServer, then ends the session with a FATAL naming the outcome.
 */
async function fakeServer(opts: {
  verifiers: Map<string, ScramVerifier>;
  tls?: Cert;
  /** Offer SCRAM-SHA-256-PLUS on TLS (default: when the certificate allows binding). */
  bind?: boolean;
}): Promise<{
  port: number;
  outcomes: Array<{ user: string; mechanism?: string; error?: ScramError }>;
  close(): Promise<void>;
}> {
  const outcomes: Array<{ user: string; mechanism?: string; error?: ScramError }> = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    void session(socket).catch(() => socket.destroy());
  });
  const fatal = (code: string, message: string, detail?: string): Buffer =>
    frame(
      'E',
      Buffer.concat([
        cstr('SFATAL'),
        cstr('VFATAL'),
        cstr(`C${code}`),
        cstr(`M${message}`),
        ...(detail ? [cstr(`D${detail}`)] : []),
        Buffer.from([0]),
      ]),
    );
  const auth = (code: number, data: Buffer = Buffer.alloc(0)) =>
    frame('R', Buffer.concat([int32(code), data]));

  async function session(socket: Socket): Promise<void> {
    let wire = new Wire(socket);
    let packet = await wire.untyped();
    let channelBinding: Buffer | undefined;
    if (packet.readInt32BE(0) === SSL_REQUEST_CODE) {
      if (opts.tls) {
        wire.send(Buffer.from('S'));
        wire.detach();
        const t = new TLSSocket(socket, {
          isServer: true,
          secureContext: createSecureContext({ key: opts.tls.key, cert: opts.tls.cert }),
        });
        wire = new Wire(t);
        if (opts.bind !== false) channelBinding = tlsServerEndPoint(derOf(opts.tls));
      } else {
        wire.send(Buffer.from('N'));
      }
      packet = await wire.untyped();
    }
    const params = packet.subarray(4).toString('utf8').split('\0');
    const user = params[params.indexOf('user') + 1]!;
    const scram = new ScramServer({
      user,
      verifier: opts.verifiers.get(user),
      mockSecret: Buffer.alloc(32, 2),
      channelBinding,
    });
    wire.send(auth(10, Buffer.concat([...scram.mechanisms().map(cstr), Buffer.from([0])])));
    try {
      const initial = await wire.message();
      const nul = initial.body.indexOf(0);
      const mechanism = initial.body.toString('utf8', 0, nul);
      wire.send(auth(11, scram.handleClientFirst(mechanism, initial.body.subarray(nul + 5))));
      const final = await wire.message();
      wire.send(auth(12, scram.handleClientFinal(final.body)));
      wire.send(auth(0));
      outcomes.push({ user, mechanism });
      wire.send(fatal('XX000', `fake server: authenticated with ${mechanism}`));
    } catch (err) {
      if (!(err instanceof ScramError)) throw err;
      outcomes.push({ user, error: err });
      wire.send(fatal(err.sqlstate, err.message, err.detail));
    }
    wire.socket.end();
  }

  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as { port: number }).port,
    outcomes,
    close: async () => {
      for (const s of sockets) s.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

describe('libpq logs in to our ScramServer', { skip: hasPsql ? false : NO_PSQL }, () => {
  const verifiers = new Map<string, ScramVerifier>();
  const user = (p: { name: string }) => `${PREFIX}pg_${p.name}`;
  before(async () => {
    // PostgreSQL's own verifiers (made in the describe above; made again if run alone)
    for (const p of PASSWORDS) {
      if (!rolesMade.includes(user(p))) await createRole(user(p), p.password, 'scram-sha-256');
      verifiers.set(user(p), parseScramVerifier(await storedVerifier(user(p)))!);
    }
  });

  const rows: Array<{
    name: string;
    tls?: Cert;
    bind?: boolean;
    env?: Record<string, string>;
    password?: string;
    role?: string;
    mechanism?: string;
    fails?: RegExp;
  }> = [
    { name: 'plaintext', mechanism: SCRAM_SHA_256 },
    { name: 'plaintext, wrong password', password: WRONG, fails: /password authentication failed for user/ },
    {
      name: 'plaintext, unknown user: same failure as a wrong password',
      role: `${PREFIX}nobody`,
      fails: /password authentication failed for user "scram_interop_nobody"/,
    },
    {
      name: 'TLS RSA/SHA-256, channel_binding=require',
      tls: certs.rsaSha256,
      env: { PGSSLMODE: 'require', PGCHANNELBINDING: 'require' },
      mechanism: SCRAM_SHA_256_PLUS,
    },
    {
      name: 'TLS ECDSA P-384/SHA-384, channel_binding=require',
      tls: certs.ecP384Sha384,
      env: { PGSSLMODE: 'require', PGCHANNELBINDING: 'require' },
      mechanism: SCRAM_SHA_256_PLUS,
    },
    {
      name: 'TLS RSA-PSS/SHA-512, channel_binding=require',
      tls: certs.rsaPssSha512,
      env: { PGSSLMODE: 'require', PGCHANNELBINDING: 'require' },
      mechanism: SCRAM_SHA_256_PLUS,
    },
    {
      name: 'TLS, channel_binding=disable',
      tls: certs.rsaSha256,
      env: { PGSSLMODE: 'require', PGCHANNELBINDING: 'disable' },
      mechanism: SCRAM_SHA_256,
    },
    {
      name: 'TLS, wrong password with channel binding',
      tls: certs.rsaSha256,
      env: { PGSSLMODE: 'require', PGCHANNELBINDING: 'require' },
      password: WRONG,
      fails: /password authentication failed for user/,
    },
    {
      name: 'TLS without binding offered (Ed25519): libpq says y, and we accept it',
      tls: certs.ed25519,
      env: { PGSSLMODE: 'require', PGCHANNELBINDING: 'prefer' },
      mechanism: SCRAM_SHA_256,
    },
    {
      name: 'TLS without binding offered, channel_binding=require: libpq refuses',
      tls: certs.ed25519,
      env: { PGSSLMODE: 'require', PGCHANNELBINDING: 'require' },
      fails: /channel binding is required/,
    },
  ];
  for (const p of PASSWORDS) {
    rows.push({ name: `password ${p.name}`, password: p.password, role: user(p), mechanism: SCRAM_SHA_256 });
    rows.push({
      name: `password ${p.name}, TLS and channel binding`,
      password: p.password,
      role: user(p),
      tls: certs.rsaSha256,
      env: { PGSSLMODE: 'require', PGCHANNELBINDING: 'require' },
      mechanism: SCRAM_SHA_256_PLUS,
    });
  }

  for (const row of rows) {
    test(row.name, async () => {
      const fake = await fakeServer({ verifiers, tls: row.tls, bind: row.bind });
      try {
        const role = row.role ?? user(PASSWORDS[0]!);
        const r = await psql(fake.port, role, row.password ?? PASSWORDS[0]!.password, row.env);
        assert.notEqual(r.code, 0);
        if (row.fails) {
          assert.match(r.stderr, row.fails);
          assert.ok(!fake.outcomes.some((o) => o.mechanism), 'no exchange succeeded');
        } else {
          // libpq checked our server signature before it read this FATAL
          assert.match(r.stderr, new RegExp(`fake server: authenticated with ${row.mechanism}\\b`), r.stderr);
          assert.deepEqual(fake.outcomes, [{ user: role, mechanism: row.mechanism }]);
        }
      } finally {
        await fake.close();
      }
    });
  }
});

describe('our ScramClient logs in to PostgreSQL over TLS with channel binding', () => {
  const role = `${PREFIX}tls`;
  const password = 'pä\u00a0ss-tls';
  let undoTls: (() => Promise<void>) | undefined;

  /** Points the server at this certificate; serveTls waits until new connections get it. */
  async function serve(cert: Cert): Promise<void> {
    const undo = await serveTls({
      cert: path.join(tmp, `${cert.name}.crt`),
      key: path.join(tmp, `${cert.name}.key`),
    });
    undoTls ??= undo;
  }

  before(async () => {
    await createRole(role, password, 'scram-sha-256');
  });

  after(async () => {
    await undoTls?.();
  });

  for (const cert of [certs.rsaSha256, certs.ecP384Sha384, certs.rsaPssSha512]) {
    test(`${cert.name}: SCRAM-SHA-256-PLUS, PostgreSQL agrees on the binding data`, async () => {
      await serve(cert);
      const r = await scramLogin({ user: role, password, tls: true });
      assert.equal(r.mechanism, SCRAM_SHA_256_PLUS);
      assert.deepEqual(r.channelBinding, tlsServerEndPoint(derOf(cert)));
      await assert.rejects(scramLogin({ user: role, password: WRONG, tls: true }), { code: '28P01' });
    });
  }

  test('PLUS stripped on the way: our client says y and PostgreSQL refuses, as we do', async () => {
    await serve(certs.rsaSha256);
    await assert.rejects(scramLogin({ user: role, password, tls: true, stripPlus: true }), {
      name: 'ServerError',
      code: '28000',
      message: 'SCRAM channel binding negotiation error',
    });
  });

  test('plaintext still works meanwhile (n)', async () => {
    assert.equal((await scramLogin({ user: role, password })).mechanism, SCRAM_SHA_256);
  });
});
