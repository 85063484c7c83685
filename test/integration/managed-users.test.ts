/**
 * Proxy-managed users (auth.mode: proxy) against the real psql, node-postgres and
 * PostgreSQL: the proxy checks the client's password against its own verifier
 * (SCRAM-SHA-256, -PLUS over TLS, MD5 where allowed), then logs in upstream as
 * the configured role with the configured password, by whatever method the
 * server asks for (SCRAM incl. -PLUS over TLS, MD5, cleartext). Neither the
 * upstream password nor, in an error, the upstream role reaches a client or a log.
 *
 * Which mechanism was used is read from the proxy's own SCRAM objects (it runs
 * in this process): the prototypes are wrapped for the length of this file.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import pg from 'pg';
import { createMd5Verifier } from '../../src/auth/md5.js';
import { createScramVerifier, ScramClient, ScramServer } from '../../src/auth/scram.js';
import {
  ConfigError,
  parseUpstreamUrl,
  type AuthConfig,
  type ProxyUserConfig,
} from '../../src/config/config.js';
import { UpstreamLogin } from '../../src/session/proxy-auth.js';
import { psql, type PsqlResult } from '../fixtures/integration/psql.js';
import { makeTestCerts, type TestCerts } from '../helpers/certs.js';
import { ClientAuth } from '../helpers/client-auth.js';
import { startRelay } from '../helpers/relay.js';
import { direct, eventually, startProxy, testServer, type RunningProxy } from '../helpers/harness.js';
import { encodeStartup, errorFields, RawClient } from '../helpers/raw-client.js';
import { prependHba, serveTls } from '../helpers/server-tls.js';
import { frame } from '../helpers/wire.js';

/** Upstream roles, one per method the server may ask the proxy for; all share one password. */
const UP = { scram: 'mu_reader', md5: 'mu_up_md5', clear: 'mu_up_clear' } as const;
const UP_PASSWORD = 'Upstream-s3cret-9f2c';
const UP_WRONG = 'Upstream-wrong-77aa';
const ENV = 'PGRO_TEST_MU_UPSTREAM';
const ENV_WRONG = 'PGRO_TEST_MU_UPSTREAM_WRONG';

/** Proxy users and their passwords (the proxy stores only verifiers). */
const PW = {
  agent: 'agent-Pässword-1',
  anywhere: 'anywhere-pw-2',
  badup: 'badup-pw-3',
  md5user: 'md5user-pw-4',
} as const;
const WRONG = 'not-the-Password-0';

let certs: TestCerts;
let dir: string;
/** Everything psql printed and every error node-postgres raised, for the leak check at the end. */
const clientSaw: string[] = [];

/* ------------------------------------------------------------------ spies */

const seen = {
  /** Mechanisms clients chose with the proxy's ScramServer. */
  client: [] as string[],
  /** Mechanisms the proxy's ScramClient used upstream. */
  upstream: [] as string[],
  /** Authentication request codes the server sent the proxy (3 cleartext, 5 MD5, 10 SASL). */
  requests: [] as number[],
};
const restore: Array<() => void> = [];

function wrap<T extends object>(
  proto: T,
  name: keyof T & string,
  spy: (self: T, args: unknown[]) => void,
): void {
  const original = proto[name] as (...args: unknown[]) => unknown;
  (proto as Record<string, unknown>)[name] = function (this: T, ...args: unknown[]) {
    spy(this, args);
    return original.apply(this, args);
  };
  restore.push(() => ((proto as Record<string, unknown>)[name] = original));
}

function resetSeen(): void {
  seen.client.length = 0;
  seen.upstream.length = 0;
  seen.requests.length = 0;
}

/* ------------------------------------------------------------------ helpers */

function proxyUser(password: string, over: Partial<ProxyUserConfig> = {}): ProxyUserConfig {
  return {
    password: createScramVerifier(password),
    upstreamUser: UP.scram,
    upstreamPasswordEnv: ENV,
    databases: ['postgres'],
    ...over,
  };
}

function auth(users: Record<string, ProxyUserConfig>, over: Partial<AuthConfig> = {}): AuthConfig {
  return { mode: 'proxy', allowMd5: false, users, ...over };
}

function tlsConfig() {
  return {
    mode: 'allow' as const,
    certFile: certs.localhost.cert,
    keyFile: certs.localhost.key,
    minVersion: 'TLSv1.2' as const,
  };
}

/** psql through `proxy`; `tls`: verify-full by name, with channel binding as told. */
async function login(
  proxy: RunningProxy,
  user: string,
  password: string,
  opts: { tls?: 'require' | 'disable'; database?: string; input?: string } = {},
): Promise<PsqlResult> {
  const env: Record<string, string> = opts.tls
    ? { PGSSLMODE: 'verify-full', PGSSLROOTCERT: certs.ca.cert, PGCHANNELBINDING: opts.tls }
    : { PGSSLMODE: 'disable' };
  const r = await psql(
    { host: opts.tls ? 'localhost' : proxy.host, port: proxy.port },
    opts.input ? ['-tA'] : ['-tA', '-c', 'SELECT current_user'],
    { user, password, database: opts.database ?? 'postgres', env, input: opts.input },
  );
  clientSaw.push(r.stdout, r.stderr);
  return r;
}

async function pgClient(proxy: RunningProxy, c: Partial<pg.ClientConfig>): Promise<pg.Client> {
  const client = new pg.Client({ host: proxy.host, port: proxy.port, database: 'postgres', ...c });
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    const e = err as Error & { code?: string; detail?: string; hint?: string };
    clientSaw.push(`${e.code} ${e.message} ${e.detail ?? ''} ${e.hint ?? ''}`);
    throw err;
  }
  return client;
}

/** One SCRAM attempt over a raw socket: what the client saw, step by step. */
async function scramTrace(
  proxy: RunningProxy,
  user: string,
  password: string,
): Promise<{ steps: string[]; mechanisms?: string[]; salt?: string; iterations?: string; error?: string }> {
  const c = await RawClient.connect(proxy.host, proxy.port);
  const out: { steps: string[]; mechanisms?: string[]; salt?: string; iterations?: string; error?: string } =
    { steps: [] };
  const client = new ClientAuth(user, password);
  try {
    c.send(
      encodeStartup([
        ['user', user],
        ['database', 'postgres'],
      ]),
    );
    for (;;) {
      const m = await c.read();
      if (m.type === 'E') {
        const f = errorFields(m.body);
        out.steps.push(`E ${f.get('C')}`);
        out.error = f.get('M');
        await c.waitClosed();
        return out;
      }
      if (m.type !== 'R') {
        out.steps.push(m.type);
        if (m.type === 'Z') return out;
        continue;
      }
      const code = m.body.readInt32BE(0);
      out.steps.push(`R ${code}`);
      if (code === 10) out.mechanisms = m.body.toString('utf8', 4).split('\0').filter(Boolean);
      if (code === 11) {
        const attrs = new Map(
          m.body
            .toString('utf8', 4)
            .split(',')
            .map((kv) => [kv[0], kv.slice(2)] as const),
        );
        out.salt = attrs.get('s');
        out.iterations = attrs.get('i');
      }
      const answer = client.respond(m.body);
      if (answer) c.send(frame('p', answer));
    }
  } finally {
    c.close();
  }
}

async function createRoles(): Promise<void> {
  const d = await direct();
  try {
    for (const [method, role] of Object.entries(UP)) {
      await d.query(`DROP ROLE IF EXISTS ${role}`);
      // MD5 logins need an MD5-stored password; PostgreSQL warns that it is deprecated.
      await d.query(`SET password_encryption = '${method === 'md5' ? 'md5' : 'scram-sha-256'}'`);
      await d.query(`CREATE ROLE ${role} LOGIN PASSWORD '${UP_PASSWORD}'`);
    }
  } finally {
    await d.end();
  }
}

let undoHba: (() => Promise<void>) | undefined;

beforeEach(resetSeen);

before(async () => {
  certs = makeTestCerts();
  dir = mkdtempSync(path.join(tmpdir(), 'pgro-managed-'));
  process.env[ENV] = UP_PASSWORD;
  process.env[ENV_WRONG] = UP_WRONG;
  await createRoles();
  undoHba = await prependHba([
    `host all ${UP.md5} 127.0.0.1/32 md5`,
    `host all ${UP.clear} 127.0.0.1/32 password`,
  ]);
  wrap(ScramServer.prototype, 'handleClientFirst', (_self, [mechanism]) =>
    seen.client.push(mechanism as string),
  );
  wrap(ScramClient.prototype, 'clientFirst', (self) => seen.upstream.push(self.mechanism));
  wrap(UpstreamLogin.prototype, 'onRequest', (_self, [code]) => seen.requests.push(code as number));
});

after(async () => {
  for (const r of restore.splice(0)) r();
  await undoHba?.();
  const d = await direct();
  try {
    for (const role of Object.values(UP)) await d.query(`DROP ROLE IF EXISTS ${role}`);
  } finally {
    await d.end();
  }
  delete process.env[ENV];
  delete process.env[ENV_WRONG];
  rmSync(dir, { recursive: true, force: true });
  rmSync(certs.dir, { recursive: true, force: true });
});

/* ------------------------------------------------------------------ the main proxy */

describe('a proxy with managed users', () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({
      config: {
        clientTls: tlsConfig(),
        auth: auth({
          agent: proxyUser(PW.agent),
          anywhere: proxyUser(PW.anywhere, { databases: ['*'] }),
          badup: proxyUser(PW.badup, { upstreamPasswordEnv: ENV_WRONG }),
        }),
      },
    });
  });
  after(() => proxy.close());

  const psqlCases = [
    { name: 'psql, plaintext: SCRAM-SHA-256', tls: undefined, mechanism: 'SCRAM-SHA-256' },
    {
      name: 'psql, verify-full, channel_binding=require: SCRAM-SHA-256-PLUS',
      tls: 'require',
      mechanism: 'SCRAM-SHA-256-PLUS',
    },
    {
      name: 'psql, verify-full, channel_binding=disable: SCRAM-SHA-256',
      tls: 'disable',
      mechanism: 'SCRAM-SHA-256',
    },
  ] as const;
  for (const c of psqlCases) {
    test(`right password, ${c.name}; the upstream role, read-only`, async () => {
      const r = await login(proxy, 'agent', PW.agent, {
        tls: c.tls,
        input: '\\set VERBOSITY verbose\nSELECT current_user;\nCREATE TABLE mu_t (a int);\n\\conninfo\n',
      });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^${UP.scram}$`, 'm'));
      assert.match(r.stderr, /ERROR: {2}25006: pg-readonly-proxy: CREATE TABLE is not allowed/);
      assert.match(r.stdout, c.tls ? /SSL connection/ : /^You are connected/m);
      if (!c.tls) assert.doesNotMatch(r.stdout, /SSL connection/);
      assert.deepEqual(seen.client, [c.mechanism]);
      assert.deepEqual(seen.upstream, ['SCRAM-SHA-256'], 'upstream is plaintext: no binding there');
    });
  }

  const pgCases = [
    { name: 'plaintext', ssl: false, mechanism: 'SCRAM-SHA-256' },
    { name: 'TLS with enableChannelBinding', ssl: true, mechanism: 'SCRAM-SHA-256-PLUS' },
  ] as const;
  for (const c of pgCases) {
    test(`right password, node-postgres ${c.name}: ${c.mechanism}`, async () => {
      const client = await pgClient(proxy, {
        user: 'agent',
        password: PW.agent,
        ...(c.ssl
          ? { ssl: { ca: readFileSync(certs.ca.cert), servername: 'localhost' }, enableChannelBinding: true }
          : {}),
      });
      try {
        const r = await client.query('SELECT current_user AS u, current_setting($1) AS ro', [
          'default_transaction_read_only',
        ]);
        assert.deepEqual(r.rows[0], { u: UP.scram, ro: 'on' });
        await assert.rejects(client.query('DELETE FROM pg_catalog.pg_class'), { code: '25006' });
        assert.deepEqual(seen.client, [c.mechanism]);
      } finally {
        await client.end();
      }
    });
  }

  test('wrong password: 28P01 for "agent"', async () => {
    const r = await login(proxy, 'agent', WRONG);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /FATAL: {2}password authentication failed for user "agent"/);
    await assert.rejects(pgClient(proxy, { user: 'agent', password: WRONG }), {
      code: '28P01',
      message: 'password authentication failed for user "agent"',
    });
    assert.ok(
      proxy.logs.some((l) => l.event === 'security' && l.kind === 'auth_failed' && l.user === 'agent'),
    );
    assert.deepEqual(seen.requests, [], 'nothing was sent upstream');
  });

  test('unknown user: the same exchange and the same 28P01 as a wrong password', async () => {
    const known = await scramTrace(proxy, 'agent', WRONG);
    const unknown = await scramTrace(proxy, 'nobody', WRONG);
    const unknownAgain = await scramTrace(proxy, 'nobody', 'something else');
    const right = await scramTrace(proxy, 'agent', PW.agent);
    assert.deepEqual(known.steps, ['R 10', 'R 11', 'E 28P01']);
    assert.deepEqual(unknown.steps, known.steps);
    assert.deepEqual(unknown.mechanisms, known.mechanisms);
    assert.equal(unknown.iterations, known.iterations);
    assert.equal(Buffer.from(unknown.salt!, 'base64').length, Buffer.from(known.salt!, 'base64').length);
    assert.equal(unknown.salt, unknownAgain.salt, 'a stable salt per name, as a real user has');
    assert.equal(known.error, 'password authentication failed for user "agent"');
    assert.equal(unknown.error, 'password authentication failed for user "nobody"');
    assert.deepEqual(right.steps.slice(0, 4), ['R 10', 'R 11', 'R 12', 'R 0']);
    assert.equal(right.salt, known.salt);
    const r = await login(proxy, 'nobody', WRONG);
    assert.match(r.stderr, /FATAL: {2}password authentication failed for user "nobody"/);
    assert.doesNotMatch(r.stderr, /not exist|unknown/i);
  });

  test('a database not granted: 42501, only after the right password; "*" allows any', async () => {
    const denied = await login(proxy, 'agent', PW.agent, { database: 'template1' });
    assert.notEqual(denied.status, 0);
    assert.match(denied.stderr, /FATAL: {2}permission denied for database "template1"/);
    await assert.rejects(pgClient(proxy, { user: 'agent', password: PW.agent, database: 'template1' }), {
      code: '42501',
    });
    // A wrong password learns nothing about grants.
    const wrong = await login(proxy, 'agent', WRONG, { database: 'template1' });
    assert.match(wrong.stderr, /password authentication failed for user "agent"/);
    assert.deepEqual(seen.requests, [], 'nothing was sent upstream');
    const any = await login(proxy, 'anywhere', PW.anywhere, { database: 'template1' });
    assert.equal(any.status, 0, any.stderr);
    assert.equal(any.stdout.trim(), UP.scram);
  });

  test("a database that does not exist: the server's own 3D000, which names only the client's database", async () => {
    await assert.rejects(
      pgClient(proxy, { user: 'anywhere', password: PW.anywhere, database: 'no_such_db_mu' }),
      (err: { code?: string; message?: string }) => {
        assert.equal(err.code, '3D000');
        assert.equal(err.message, 'database "no_such_db_mu" does not exist');
        return true;
      },
    );
  });

  test('a wrong upstream password: FATAL without the upstream role; the log has the server reason', async () => {
    const r = await login(proxy, 'badup', PW.badup);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /FATAL: {2}pg-readonly-proxy: could not log in upstream for user "badup"/);
    assert.ok(!r.stderr.includes(UP.scram), r.stderr);
    await assert.rejects(
      pgClient(proxy, { user: 'badup', password: PW.badup }),
      (err: Error & pg.DatabaseError) => {
        assert.equal(err.code, '28P01');
        for (const text of [err.message, err.detail, err.hint]) assert.ok(!text?.includes(UP.scram), text);
        return true;
      },
    );
    const failed = proxy.logs.filter((l) => l.event === 'upstream_login_failed');
    assert.ok(failed.length >= 2);
    assert.equal(failed[0]!.upstream_user, UP.scram);
    assert.match(String(failed[0]!.why), new RegExp(`password authentication failed for user "${UP.scram}"`));
  });

  test('no log line and nothing a client saw holds a password or verifier', () => {
    assert.ok(clientSaw.length > 10);
    const secrets = [UP_PASSWORD, UP_WRONG, ...Object.values(PW), WRONG];
    for (const text of clientSaw) {
      for (const s of secrets) assert.ok(!text.includes(s), `"${s}" reached a client: ${text}`);
    }
    for (const line of proxy.logs) {
      const text = JSON.stringify(line);
      for (const s of [...secrets, 'SCRAM-SHA-256$'])
        assert.ok(!text.includes(s), `"${s}" in a log line: ${text}`);
    }
  });
});

describe('other upstream refusals before the session is ready', () => {
  const LIMITED = 'mu_limited';
  let proxy: RunningProxy;
  before(async () => {
    const d = await direct();
    try {
      await d.query(`DROP ROLE IF EXISTS ${LIMITED}`);
      await d.query(`CREATE ROLE ${LIMITED} LOGIN PASSWORD '${UP_PASSWORD}' CONNECTION LIMIT 0`);
    } finally {
      await d.end();
    }
    proxy = await startProxy({
      config: { auth: auth({ limited: proxyUser('limited-pw', { upstreamUser: LIMITED }) }) },
    });
  });
  after(async () => {
    await proxy.close();
    const d = await direct();
    try {
      await d.query(`DROP ROLE IF EXISTS ${LIMITED}`);
    } finally {
      await d.end();
    }
  });

  test("the upstream role's connection limit (53300) does not name the upstream role either", async () => {
    const r = await login(proxy, 'limited', 'limited-pw');
    assert.notEqual(r.status, 0);
    assert.ok(!r.stderr.includes(LIMITED), r.stderr);
  });
});

/* ------------------------------------------------------------------ files and reload */

describe('users_file and upstream_password_file, reloaded', () => {
  let proxy: RunningProxy;
  let usersFile: string;
  let passwordFile: string;

  function writeUsers(users: Record<string, string>): void {
    const lines = ['users:'];
    for (const [name, password] of Object.entries(users)) {
      lines.push(
        `  ${name}:`,
        `    password: "${createScramVerifier(password)}"`,
        `    upstream_user: ${UP.scram}`,
        `    upstream_password_file: ${passwordFile}`,
        `    databases: [postgres]`,
      );
    }
    writeFileSync(usersFile, lines.join('\n') + '\n');
  }

  before(async () => {
    usersFile = path.join(dir, 'users.yaml');
    passwordFile = path.join(dir, 'upstream.pw');
    writeFileSync(passwordFile, `${UP_PASSWORD}\n`, { mode: 0o600 }); // as `echo` writes it
    writeUsers({ file_one: 'one-pw', file_two: 'two-pw' });
    proxy = await startProxy({
      config: { auth: auth({ cfg_user: proxyUser('cfg-pw') }, { usersFile }) },
    });
  });
  after(() => proxy.close());

  const loginsAs = async (user: string, password: string): Promise<boolean> => {
    const r = await login(proxy, user, password);
    if (r.status === 0) {
      assert.equal(r.stdout.trim(), UP.scram);
      return true;
    }
    return false;
  };

  test('config users and file users log in; the password file is read without its newline', async () => {
    assert.equal(await loginsAs('cfg_user', 'cfg-pw'), true);
    assert.equal(await loginsAs('file_one', 'one-pw'), true);
    assert.equal(await loginsAs('file_two', 'two-pw'), true);
    assert.equal(await loginsAs('file_two', 'one-pw'), false);
  });

  test('reload: a user added, one removed, an open session kept; a bad file keeps the old users', async () => {
    const held = await pgClient(proxy, { user: 'file_one', password: 'one-pw' });
    try {
      const pid = (await held.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
      writeUsers({ file_two: 'two-pw', file_three: 'three-pw' });
      assert.equal(proxy.server.reload().ok, true);
      assert.equal(proxy.logs.filter((l) => l.event === 'reloaded').at(-1)?.users, 3);
      assert.equal(await loginsAs('file_three', 'three-pw'), true);
      const gone = await login(proxy, 'file_one', 'one-pw');
      assert.match(gone.stderr, /password authentication failed for user "file_one"/);
      assert.deepEqual((await held.query('SELECT pg_backend_pid() AS pid')).rows, [{ pid }]);

      const bad: Array<[string, string, RegExp]> = [
        [
          'a plaintext password',
          'users:\n  x:\n    password: hunter2\n    upstream_user: a\n    databases: [postgres]\n',
          /not a plaintext password; make one with: pg-readonly-proxy hash-password/,
        ],
        ['an unknown key', 'users: {}\nextra: 1\n', /invalid users file/],
        ['YAML that does not parse', 'users: [\n', /cannot parse/],
        [
          'a user also in the config',
          `users:\n  cfg_user:\n    password: "${createScramVerifier('z')}"\n    upstream_user: a\n    databases: [postgres]\n`,
          /user "cfg_user" is defined both in the config and in/,
        ],
      ];
      for (const [what, text, err] of bad) {
        writeFileSync(usersFile, text);
        assert.equal(proxy.server.reload().ok, false, what);
        const line = proxy.logs.filter((l) => l.event === 'reload_failed').at(-1)!;
        assert.equal(line.part, 'users', what);
        assert.match(String(line.err), err, what);
        assert.ok(!String(line.err).includes('hunter2'), 'the plaintext password is not logged');
      }
      rmSync(usersFile);
      assert.equal(proxy.server.reload().ok, false, 'a missing users file');
      assert.equal(await loginsAs('file_three', 'three-pw'), true, 'the old users are kept');
      assert.equal(await loginsAs('file_one', 'one-pw'), false);
      assert.deepEqual((await held.query('SELECT pg_backend_pid() AS pid')).rows, [{ pid }]);
    } finally {
      await held.end();
    }
  });

  test('reload reads upstream passwords again', async () => {
    writeUsers({ file_three: 'three-pw' });
    writeFileSync(passwordFile, `${UP_WRONG}\n`);
    try {
      assert.equal(proxy.server.reload().ok, true);
      const r = await login(proxy, 'file_three', 'three-pw');
      assert.match(r.stderr, /could not log in upstream for user "file_three"/);
    } finally {
      writeFileSync(passwordFile, `${UP_PASSWORD}\n`);
    }
    assert.equal(proxy.server.reload().ok, true);
    assert.equal(await loginsAs('file_three', 'three-pw'), true);
  });
});

/* ------------------------------------------------------------------ MD5 */

describe('MD5 verifiers', () => {
  const md5 = (): Record<string, ProxyUserConfig> => ({
    md5user: proxyUser(PW.md5user, { password: createMd5Verifier('md5user', PW.md5user) }),
  });

  test('refused when the proxy is built, unless allow_md5', async () => {
    await assert.rejects(
      startProxy({ config: { auth: auth(md5()) } }),
      (err: unknown) =>
        err instanceof ConfigError &&
        /auth user "md5user": MD5 verifiers are refused unless auth.allow_md5 is true/.test(err.message),
    );
  });

  test('with allow_md5: AuthenticationMD5Password, and psql logs in', async () => {
    const proxy = await startProxy({ config: { auth: auth(md5(), { allowMd5: true }) } });
    try {
      const raw = await RawClient.connect(proxy.host, proxy.port);
      try {
        raw.send(
          encodeStartup([
            ['user', 'md5user'],
            ['database', 'postgres'],
          ]),
        );
        const first = await raw.read();
        assert.equal(first.type, 'R');
        assert.equal(first.body.readInt32BE(0), 5, 'AuthenticationMD5Password');
        await raw.login('md5user', PW.md5user, first);
        const rows = await raw.query('SELECT current_user');
        assert.ok(rows.some((m) => m.type === 'D' && m.body.includes(Buffer.from(UP.scram))));
      } finally {
        raw.close();
      }
      const ok = await login(proxy, 'md5user', PW.md5user);
      assert.equal(ok.status, 0, ok.stderr);
      assert.equal(ok.stdout.trim(), UP.scram);
      const wrong = await login(proxy, 'md5user', WRONG);
      assert.match(wrong.stderr, /password authentication failed for user "md5user"/);
      // Unknown names still get the SCRAM mock.
      assert.deepEqual((await scramTrace(proxy, 'nobody', WRONG)).steps, ['R 10', 'R 11', 'E 28P01']);
    } finally {
      await proxy.close();
    }
  });
});

/* ------------------------------------------------------------------ upstream methods */

describe('the proxy logs in upstream by the method the server asks for', () => {
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({
      config: {
        auth: auth({
          via_scram: proxyUser('via-pw', { upstreamUser: UP.scram }),
          via_md5: proxyUser('via-pw', { upstreamUser: UP.md5 }),
          via_clear: proxyUser('via-pw', { upstreamUser: UP.clear }),
        }),
      },
    });
  });
  after(() => proxy.close());

  const cases = [
    { user: 'via_scram', role: UP.scram, request: 10, mechanism: ['SCRAM-SHA-256'] },
    { user: 'via_md5', role: UP.md5, request: 5, mechanism: [] },
    { user: 'via_clear', role: UP.clear, request: 3, mechanism: [] },
  ];
  for (const c of cases) {
    test(`${c.role}: request ${c.request}`, async () => {
      const client = await pgClient(proxy, { user: c.user, password: 'via-pw' });
      try {
        assert.deepEqual((await client.query('SELECT current_user AS u')).rows, [{ u: c.role }]);
      } finally {
        await client.end();
      }
      assert.equal(seen.requests[0], c.request);
      assert.equal(seen.requests.at(-1), 0, 'AuthenticationOk last');
      assert.deepEqual(seen.upstream, c.mechanism);
    });
  }
});

describe('upstream TLS: SCRAM-SHA-256-PLUS to the server', () => {
  let proxy: RunningProxy;
  let undoTls: (() => Promise<void>) | undefined;
  before(async () => {
    undoTls = await serveTls(certs.localhost);
    const s = testServer();
    proxy = await startProxy({
      config: {
        upstream: parseUpstreamUrl(
          `postgres://${s.host}:${s.port}?sslmode=verify-ca&sslrootcert=${encodeURIComponent(certs.ca.cert)}`,
          'test',
        ),
        clientTls: tlsConfig(),
        auth: auth({ agent: proxyUser(PW.agent) }),
      },
    });
  });
  after(async () => {
    await proxy?.close();
    await undoTls?.();
  });

  test('bound on both sides: psql to the proxy and the proxy to PostgreSQL', async () => {
    const r = await login(proxy, 'agent', PW.agent, {
      tls: 'require',
      input: 'SELECT current_user;\nSELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();\n',
    });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), [UP.scram, 't']);
    assert.deepEqual(seen.client, ['SCRAM-SHA-256-PLUS']);
    assert.deepEqual(seen.upstream, ['SCRAM-SHA-256-PLUS']);
  });
});

/* ------------------------------------------------------------------ hash-password */

function hashPassword(input: string, args: string[] = []): Promise<PsqlResult> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'hash-password', ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(input);
  });
}

describe('hash-password', () => {
  const VERIFIER = /^SCRAM-SHA-256\$(\d+):[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=\n$/;
  const cases: Array<{ name: string; input: string; args?: string[]; status: number; iterations?: string }> =
    [
      { name: 'echo -n pw', input: 'pw', status: 0, iterations: '4096' },
      {
        name: '--iterations 10000',
        input: 'pw',
        args: ['--iterations', '10000'],
        status: 0,
        iterations: '10000',
      },
      { name: 'an empty password', input: '', status: 2 },
      { name: 'only a newline', input: '\n', status: 2 },
      { name: '--iterations 100 (below 4096)', input: 'pw', args: ['--iterations', '100'], status: 2 },
    ];
  for (const c of cases) {
    test(`${c.name}: exit ${c.status}`, async () => {
      const r = await hashPassword(c.input, c.args);
      assert.equal(r.status, c.status, r.stderr);
      if (c.status === 0) {
        assert.equal(VERIFIER.exec(r.stdout)?.[1], c.iterations, r.stdout);
      } else {
        assert.equal(r.stdout, '');
        assert.match(r.stderr, /^pg-readonly-proxy: /);
      }
    });
  }

  test('the verifier of `echo pw |` logs in with psql (the newline is not part of it)', async () => {
    const r = await hashPassword('cli-Hashed-pw\n');
    assert.equal(r.status, 0, r.stderr);
    const proxy = await startProxy({
      config: { auth: auth({ hashed: { ...proxyUser('x'), password: r.stdout.trim() } }) },
    });
    try {
      const ok = await login(proxy, 'hashed', 'cli-Hashed-pw');
      assert.equal(ok.status, 0, ok.stderr);
      assert.equal(ok.stdout.trim(), UP.scram);
      assert.notEqual((await login(proxy, 'hashed', 'cli-Hashed-pw\n')).status, 0);
    } finally {
      await proxy.close();
    }
  });
});

/* ------------------------------------------------------------------ startup timeout */

describe('startup_timeout_ms', () => {
  test('a client that never answers the SASL request is cut off with 57014', async () => {
    const proxy = await startProxy({
      config: { startupTimeoutMs: 300, auth: auth({ agent: proxyUser(PW.agent) }) },
    });
    try {
      const c = await RawClient.connect(proxy.host, proxy.port);
      const started = Date.now();
      c.send(
        encodeStartup([
          ['user', 'agent'],
          ['database', 'postgres'],
        ]),
      );
      const first = await c.read();
      assert.equal(first.type, 'R');
      assert.equal(first.body.readInt32BE(0), 10);
      const e = await c.read(3000);
      const elapsed = Date.now() - started;
      assert.equal(e.type, 'E');
      const f = errorFields(e.body);
      assert.equal(f.get('S'), 'FATAL');
      assert.equal(f.get('C'), '57014');
      assert.equal(f.get('M'), 'canceling authentication due to timeout');
      assert.ok(elapsed >= 250 && elapsed < 2000, `cut off after ${elapsed} ms`);
      await c.waitClosed();
      assert.ok(proxy.logs.some((l) => l.event === 'fatal' && l.kind === 'startup_timeout'));
      assert.equal(proxy.server.activeSessions, 0);
    } finally {
      await proxy.close();
    }
  });
});

/* ------------------------------------------------------------------ the client stays out of the upstream login */

const cstr = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');
const int32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};

/** What a raw client saw, one label per message: "R 12", "E 08P01", "Z", ... */
function labelOf(m: { type: string; body: Buffer }): string {
  if (m.type === 'R') return `R ${m.body.readInt32BE(0)}`;
  if (m.type === 'E') return `E ${errorFields(m.body).get('C')}`;
  return m.type;
}

/** Every message until the proxy closes the connection. */
async function readToClose(c: RawClient): Promise<Array<{ type: string; body: Buffer }>> {
  const out: Array<{ type: string; body: Buffer }> = [];
  for (;;) {
    try {
      out.push(await c.read(3000));
    } catch (err) {
      if (c.closed) return out;
      throw err;
    }
  }
}

describe('a proxy-managed client cannot take part in the upstream login', () => {
  const GUESSER_PW = 'guesser-pw-5';
  let proxy: RunningProxy;
  before(async () => {
    proxy = await startProxy({
      config: {
        // The upstream role logs in with a cleartext password, and the proxy is configured with a wrong one.
        auth: auth({
          guesser: proxyUser(GUESSER_PW, { upstreamUser: UP.clear, upstreamPasswordEnv: ENV_WRONG }),
        }),
      },
    });
  });
  after(() => proxy.close());

  test('a PasswordMessage sent with the SCRAM client-final is refused with 08P01, never reaching the server', async () => {
    const c = await RawClient.connect(proxy.host, proxy.port);
    try {
      c.send(
        encodeStartup([
          ['user', 'guesser'],
          ['database', 'postgres'],
        ]),
      );
      const sasl = await c.read();
      assert.equal(labelOf(sasl), 'R 10');
      const scram = new ScramClient({
        password: GUESSER_PW,
        serverMechanisms: sasl.body.toString('utf8', 4).split('\0').filter(Boolean),
      });
      const first = scram.clientFirst();
      c.send(frame('p', Buffer.concat([cstr(scram.mechanism), int32(first.length), first])));
      const cont = await c.read();
      assert.equal(labelOf(cont), 'R 11');
      const final = await scram.clientFinal(cont.body.subarray(4));
      // One write: the proof, and right behind it the upstream role's (right) password.
      c.send(Buffer.concat([frame('p', final), frame('p', cstr(UP_PASSWORD))]));
      const seenByClient = await readToClose(c);
      assert.deepEqual(seenByClient.map(labelOf), ['R 12', 'E 08P01'], 'no AuthenticationOk');
      scram.verifyServerFinal(seenByClient[0]!.body.subarray(4));
      const f = errorFields(seenByClient[1]!.body);
      assert.equal(f.get('S'), 'FATAL');
      assert.equal(f.get('M'), 'unexpected authentication response: the client is already authenticated');
    } finally {
      c.close();
    }
    assert.ok(proxy.logs.some((l) => l.event === 'fatal' && l.kind === 'protocol_violation'));
    assert.equal(
      proxy.logs.filter((l) => l.event === 'authenticated').length,
      0,
      'no session was established',
    );
    await eventually(() => proxy.server.activeSessions === 0, 3000, 'the session to end');
  });
});

/* ------------------------------------------------------------------ upstream.require_auth */

interface Relayed {
  /** Bytes the proxy sent the server, and the server the proxy. */
  toServer: Buffer[];
  toProxy: Buffer[];
  closed: boolean;
}

/** A TCP relay in front of the test server that keeps every byte of each connection. */
async function recordingRelay(): Promise<{ port: number; conns: Relayed[]; close(): Promise<void> }> {
  const conns: Relayed[] = [];
  const relay = await startRelay((inbound, outbound) => {
    const conn: Relayed = { toServer: [], toProxy: [], closed: false };
    conns.push(conn);
    inbound.on('close', () => (conn.closed = true));
    inbound.on('data', (b: Buffer) => conn.toServer.push(b));
    outbound.on('data', (b: Buffer) => conn.toProxy.push(b));
  });
  return { ...relay, conns };
}

/** The types of the frontend messages in `bytes`: the StartupMessage as "startup", then the type letters. */
function frontendTypes(bytes: Buffer): string[] {
  const out = ['startup'];
  let i = bytes.readInt32BE(0);
  while (i + 5 <= bytes.length) {
    out.push(String.fromCharCode(bytes[i]!));
    i += 1 + bytes.readInt32BE(i + 1);
  }
  return out;
}

/** The backend messages in `bytes`: "R 3" with the Authentication code, "E 08P01" with the SQLSTATE, ... */
function backendTypes(bytes: Buffer): string[] {
  const out: string[] = [];
  let i = 0;
  while (i + 5 <= bytes.length) {
    const type = String.fromCharCode(bytes[i]!);
    const end = 1 + bytes.readInt32BE(i + 1);
    if (type === 'R') out.push(`R ${bytes.readInt32BE(i + 5)}`);
    else if (type === 'E') out.push(`E ${errorFields(bytes.subarray(i + 5, i + end)).get('C')}`);
    else out.push(type);
    i += end;
  }
  return out;
}

describe('upstream.require_auth: the upstream login methods the proxy will answer', () => {
  let relay: Awaited<ReturnType<typeof recordingRelay>>;
  const users = {
    via_scram: proxyUser('via-pw', { upstreamUser: UP.scram }),
    via_md5: proxyUser('via-pw', { upstreamUser: UP.md5 }),
    via_clear: proxyUser('via-pw', { upstreamUser: UP.clear }),
  };
  before(async () => {
    relay = await recordingRelay();
  });
  after(() => relay.close());

  async function withRequireAuth<T>(
    methods: NonNullable<AuthConfig['upstreamRequireAuth']>,
    fn: (p: RunningProxy) => Promise<T>,
  ): Promise<T> {
    const p = await startProxy({
      config: {
        upstream: parseUpstreamUrl(`postgres://127.0.0.1:${relay.port}?sslmode=disable`, 'test'),
        auth: auth(users, { upstreamRequireAuth: methods }),
      },
    });
    try {
      return await fn(p);
    } finally {
      await p.close();
    }
  }

  async function logsIn(p: RunningProxy, user: string, role: string): Promise<void> {
    const client = await pgClient(p, { user, password: 'via-pw' });
    try {
      assert.deepEqual((await client.query('SELECT current_user AS u')).rows, [{ u: role }]);
    } finally {
      await client.end();
    }
  }

  const refusals = [
    { methods: ['scram-sha-256'], user: 'via_clear', request: 3, asked: 'password' },
    { methods: ['scram-sha-256'], user: 'via_md5', request: 5, asked: 'md5' },
    { methods: ['password'], user: 'via_scram', request: 10, asked: 'scram-sha-256' },
  ] as const;
  for (const r of refusals) {
    test(`[${r.methods.join(', ')}]: ${r.user}, asked for ${r.asked}, is refused before any secret is sent`, async () => {
      await withRequireAuth([...r.methods], async (p) => {
        const before = relay.conns.length;
        await assert.rejects(pgClient(p, { user: r.user, password: 'via-pw' }), (err: pg.DatabaseError) => {
          assert.equal(err.severity, 'FATAL');
          assert.equal(err.message, `pg-readonly-proxy: could not log in upstream for user "${r.user}"`);
          return true;
        });
        assert.deepEqual(seen.requests, [r.request], 'refused at the first request');
        const failed = p.logs.filter((l) => l.event === 'upstream_login_failed');
        assert.equal(failed.length, 1);
        assert.equal(
          failed[0]!.why,
          `the server asked for ${r.asked} authentication, which upstream.require_auth does not allow`,
        );
        assert.equal(p.logs.filter((l) => l.event === 'authenticated').length, 0);

        assert.equal(relay.conns.length, before + 1, 'one upstream connection');
        const conn = relay.conns.at(-1)!;
        await eventually(() => conn.closed, 3000, 'the upstream connection to close');
        const sent = Buffer.concat(conn.toServer);
        assert.ok(
          !frontendTypes(sent).includes('p'),
          `no password message: ${frontendTypes(sent).join(' ')}`,
        );
        assert.ok(!sent.includes(Buffer.from(UP_PASSWORD)), 'the upstream password never went out');
        // Nothing was answered, so the server had no password to refuse; it may
        // only complain (08P01) that the proxy's Terminate is not a password message.
        const answered = backendTypes(Buffer.concat(conn.toProxy));
        assert.deepEqual(
          answered.filter((t) => t !== 'E 08P01'),
          [`R ${r.request}`],
          answered.join(' '),
        );
      });
    });
  }

  test('[scram-sha-256]: the SCRAM role logs in', async () => {
    await withRequireAuth(['scram-sha-256'], (p) => logsIn(p, 'via_scram', UP.scram));
    assert.deepEqual(seen.upstream, ['SCRAM-SHA-256']);
  });

  test('[password]: the cleartext role logs in', async () => {
    await withRequireAuth(['password'], (p) => logsIn(p, 'via_clear', UP.clear));
    assert.deepEqual(seen.requests, [3, 0]);
  });

  test('[md5, scram-sha-256]: either of those', async () => {
    await withRequireAuth(['md5', 'scram-sha-256'], async (p) => {
      await logsIn(p, 'via_md5', UP.md5);
      await logsIn(p, 'via_scram', UP.scram);
    });
  });
});

/* ------------------------------------------------------------------ the mock exchange across a restart */

describe("an unknown name's mock exchange: the same after a restart, with the users' iteration count", () => {
  test('two proxies with the same users show an unknown name the same salt and iteration count', async () => {
    const users = {
      slow: proxyUser(PW.agent, { password: createScramVerifier(PW.agent, { iterations: 10000 }) }),
    };
    const traces = [];
    for (let i = 0; i < 2; i++) {
      const proxy = await startProxy({ config: { auth: auth(users) } });
      try {
        traces.push({
          known: await scramTrace(proxy, 'slow', WRONG),
          unknown: await scramTrace(proxy, 'nobody', WRONG),
        });
      } finally {
        await proxy.close();
      }
    }
    const [first, restarted] = traces as [(typeof traces)[0], (typeof traces)[0]];
    assert.equal(first.known.iterations, '10000');
    assert.equal(first.unknown.iterations, '10000', 'not the default 4096, which would stand out');
    assert.deepEqual(first.unknown.steps, first.known.steps);
    assert.equal(restarted.known.salt, first.known.salt);
    assert.equal(restarted.unknown.salt, first.unknown.salt, 'the same salt after a restart');
    assert.equal(restarted.unknown.iterations, '10000');
  });
});
