/**
 * src/auth/users.ts (UserDirectory: config users and users_file, verifiers only,
 * upstream passwords from the environment or a file, rebuilt whole on reload) and
 * src/session/proxy-auth.ts, whose two halves are run against each other here:
 * ClientAuthenticator (the proxy as a server) and UpstreamLogin (the proxy as a
 * client). PostgreSQL and libpq judge them in test/integration/managed-users.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createMd5Verifier } from '../../src/auth/md5.js';
import { createScramVerifier } from '../../src/auth/scram.js';
import { UserDirectory } from '../../src/auth/users.js';
import { ConfigError, type AuthConfig, type ProxyUserConfig } from '../../src/config/config.js';
import { decodeAuthentication } from '../../src/protocol/backend-messages.js';
import { AuthCode } from '../../src/protocol/codes.js';
import { ClientAuthenticator, UpstreamLogin, UpstreamLoginError } from '../../src/session/proxy-auth.js';

let dir: string;
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'pgro-users-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

/** A verifier made once: PBKDF2 at 4096 iterations is the slow part of these tests. */
const VERIFIER = createScramVerifier('pw');

function user(over: Partial<ProxyUserConfig> = {}): ProxyUserConfig {
  return { password: VERIFIER, upstreamUser: 'reader', databases: ['app'], ...over };
}

function config(users: Record<string, ProxyUserConfig>, over: Partial<AuthConfig> = {}): AuthConfig {
  return { mode: 'proxy', allowMd5: false, users, ...over };
}

let fileCount = 0;
function file(text: string): string {
  const f = path.join(dir, `f${++fileCount}`);
  writeFileSync(f, text);
  return f;
}

function usersYaml(users: Record<string, Record<string, unknown>>): string {
  return JSON.stringify({ users }); // JSON is YAML
}

const fileUser = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
  password: VERIFIER,
  upstream_user: 'reader',
  databases: ['app'],
  ...over,
});

function refused(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    assert.match(err.message, re);
    return true;
  });
}

describe('UserDirectory', () => {
  test('config users and users_file users together, each as configured', () => {
    const usersFile = file(
      usersYaml({
        from_file: fileUser({ upstream_user: 'file_reader', databases: ['a', 'b'] }),
      }),
    );
    const d = new UserDirectory(config({ from_config: user() }, { usersFile }), {});
    assert.equal(d.size, 2);
    const c = d.get('from_config')!;
    assert.equal(c.name, 'from_config');
    assert.equal(c.upstreamUser, 'reader');
    assert.equal(c.upstreamPassword, undefined, 'none configured');
    assert.deepEqual(c.databases, new Set(['app']));
    assert.equal(c.verifier.kind, 'scram');
    const f = d.get('from_file')!;
    assert.equal(f.upstreamUser, 'file_reader');
    assert.deepEqual(f.databases, new Set(['a', 'b']));
    assert.equal(d.get('nobody'), undefined);
  });

  test("databases ['*'] means any: undefined", () => {
    const d = new UserDirectory(
      config({ any: user({ databases: ['*'] }), also: user({ databases: ['x', '*'] }) }),
      {},
    );
    assert.equal(d.get('any')!.databases, undefined);
    assert.equal(d.get('also')!.databases, undefined);
  });

  test('an empty users file adds nobody', () => {
    for (const text of ['', 'users: {}\n', '# nothing\n']) {
      const d = new UserDirectory(config({ a: user() }, { usersFile: file(text) }), {});
      assert.equal(d.size, 1, JSON.stringify(text));
    }
  });

  test('the upstream password from the environment, or from a file without its trailing newline', () => {
    const cases: Array<[string, string]> = [
      ['s3cret\n', 's3cret'],
      ['s3cret\r\n', 's3cret'],
      ['s3cret', 's3cret'],
      [' with spaces \n', ' with spaces '],
      ['two lines\n\n', 'two lines\n'], // only one newline is the file's, as with `echo`
    ];
    for (const [text, want] of cases) {
      const d = new UserDirectory(config({ a: user({ upstreamPasswordFile: file(text) }) }), {});
      assert.equal(d.get('a')!.upstreamPassword, want, JSON.stringify(text));
    }
    const e = new UserDirectory(config({ a: user({ upstreamPasswordEnv: 'UP_PW' }) }), { UP_PW: 'from-env' });
    assert.equal(e.get('a')!.upstreamPassword, 'from-env');
    const empty = new UserDirectory(config({ a: user({ upstreamPasswordEnv: 'UP_PW' }) }), { UP_PW: '' });
    assert.equal(empty.get('a')!.upstreamPassword, '', 'set but empty is set');
  });

  test('MD5 verifiers only with allow_md5', () => {
    const md5 = createMd5Verifier('old', 'pw');
    refused(
      () => new UserDirectory(config({ old: user({ password: md5 }) }), {}),
      /^auth user "old": MD5 verifiers are refused unless auth.allow_md5 is true; prefer a SCRAM verifier \(pg-readonly-proxy hash-password\)$/,
    );
    const d = new UserDirectory(config({ old: user({ password: md5 }) }, { allowMd5: true }), {});
    assert.deepEqual(d.get('old')!.verifier, { kind: 'md5', md5 });
    assert.equal(d.allowMd5, true);
  });

  const bad: Array<[string, () => AuthConfig, RegExp]> = [
    [
      'a plaintext password, with the hash-password hint',
      () => config({ u: user({ password: 'hunter2' }) }),
      /^auth user "u": password must be a SCRAM-SHA-256 verifier, not a plaintext password; make one with: pg-readonly-proxy hash-password$/,
    ],
    [
      'a verifier with a bad key length',
      () => config({ u: user({ password: VERIFIER.replace(/:[^:]+$/, ':AAAA') }) }),
      /not a plaintext password/,
    ],
    [
      'a plaintext password in the users file',
      () => config({}, { usersFile: file(usersYaml({ u: fileUser({ password: 'hunter2' }) })) }),
      /^auth user "u": password must be a SCRAM-SHA-256 verifier/,
    ],
    [
      'a user in both the config and the users file',
      () => config({ dup: user() }, { usersFile: file(usersYaml({ dup: fileUser() })) }),
      /^user "dup" is defined both in the config and in .*f\d+$/,
    ],
    [
      'a missing environment variable, named',
      () => config({ u: user({ upstreamPasswordEnv: 'PGRO_UNSET_VARIABLE' }) }),
      /^auth user "u": environment variable PGRO_UNSET_VARIABLE is not set$/,
    ],
    [
      'both upstream_password_env and upstream_password_file',
      () => config({ u: user({ upstreamPasswordEnv: 'X', upstreamPasswordFile: file('x') }) }),
      /give upstream_password_env or upstream_password_file, not both/,
    ],
    [
      'a missing upstream_password_file',
      () => config({ u: user({ upstreamPasswordFile: path.join(dir, 'missing') }) }),
      /^auth user "u": upstream_password_file: ENOENT/,
    ],
    [
      'a missing users file',
      () => config({}, { usersFile: path.join(dir, 'missing.yaml') }),
      /^cannot read users file .*missing\.yaml/,
    ],
    [
      'a users file that does not parse',
      () => config({}, { usersFile: file('users: [\n') }),
      /^cannot parse /,
    ],
    [
      'an unknown key in the users file',
      () => config({}, { usersFile: file('users: {}\nlisten: x\n') }),
      /^invalid users file .*: \(top level\) must NOT have additional properties$/,
    ],
    [
      'a users file user without databases',
      () => config({}, { usersFile: file(usersYaml({ u: { password: VERIFIER, upstream_user: 'r' } })) }),
      /^invalid users file .*: \/users\/u must have required property 'databases'$/,
    ],
    [
      'duplicate keys in the users file',
      () => config({}, { usersFile: file(`users:\n  u: {password: x}\n  u: {password: y}\n`) }),
      /^cannot parse .*[Mm]ap keys must be unique/,
    ],
  ];
  for (const [name, make, re] of bad) {
    test(`refused: ${name}`, () => refused(() => new UserDirectory(make(), {}), re));
  }

  test('reload: the users file and upstream passwords read again; on any error the old users stay', () => {
    const usersFile = path.join(dir, 'reload.yaml');
    const pwFile = path.join(dir, 'reload.pw');
    writeFileSync(pwFile, 'first\n');
    writeFileSync(usersFile, usersYaml({ one: fileUser({ upstream_password_file: pwFile }) }));
    const env: NodeJS.ProcessEnv = { CFG_PW: 'env-first' };
    const d = new UserDirectory(config({ cfg: user({ upstreamPasswordEnv: 'CFG_PW' }) }, { usersFile }), env);
    const secret = d.mockSecret;
    assert.deepEqual([d.size, d.get('one')!.upstreamPassword], [2, 'first']);
    const before = d.get('one');

    writeFileSync(usersFile, usersYaml({ two: fileUser({ upstream_password_file: pwFile }) }));
    writeFileSync(pwFile, 'second\n');
    env.CFG_PW = 'env-second';
    d.reload();
    assert.equal(d.get('one'), undefined);
    assert.equal(d.get('two')!.upstreamPassword, 'second');
    assert.equal(d.get('cfg')!.upstreamPassword, 'env-second');
    assert.equal(before!.upstreamPassword, 'first', 'what a session holds is not changed');
    assert.equal(d.mockSecret, secret, 'unknown users keep their mock salts');

    for (const text of ['users: [\n', usersYaml({ three: fileUser({ password: 'plain' }) })]) {
      writeFileSync(usersFile, text);
      assert.throws(() => d.reload(), ConfigError);
      assert.equal(d.size, 2);
      assert.ok(d.get('two'));
      assert.equal(d.get('three'), undefined);
    }
    writeFileSync(usersFile, usersYaml({ two: fileUser({ upstream_password_file: pwFile }) }));
    delete env.CFG_PW;
    assert.throws(() => d.reload(), /environment variable CFG_PW is not set/);
    assert.equal(d.get('cfg')!.upstreamPassword, 'env-second');
  });
});

/* ---------------------------------------------------------- proxy-auth, both halves */

interface Outcome {
  /** Authentication codes the client was sent, in order. */
  requests: number[];
  /** The mechanism of SASLInitialResponse, if any. */
  mechanism?: string;
  ok?: string;
  failed?: { reason: string; code: string; message: string };
}

/**
 * The proxy's server half against its client half: ClientAuthenticator for the
 * directory user `name`, UpstreamLogin with `password`; each with its own view
 * of the TLS certificate (undefined: no TLS on that side).
 */
async function exchange(
  d: UserDirectory,
  name: string,
  password: string,
  binding: { server?: Buffer; client?: Buffer } = {},
): Promise<Outcome> {
  const server = new ClientAuthenticator(name, d, binding.server);
  const client = new UpstreamLogin(name, password, binding.client);
  const out: Outcome = { requests: [] };
  let request = server.start();
  for (let round = 0; round < 4; round++) {
    const { code, data } = decodeAuthentication(request);
    out.requests.push(code);
    const answer = await client.onRequest(code, data);
    assert.equal(answer.kind, 'reply');
    if (answer.kind !== 'reply') break;
    if (code === AuthCode.SASL)
      out.mechanism = answer.message.toString('latin1', 5, answer.message.indexOf(0, 5));
    const step = server.onResponse(answer.message);
    if (step.kind === 'reply') {
      request = step.message;
      continue;
    }
    if (step.kind === 'failed') {
      out.failed = { reason: step.reason, code: step.error.code, message: step.error.message };
      return out;
    }
    if (step.message) {
      const final = decodeAuthentication(step.message);
      out.requests.push(final.code);
      assert.equal((await client.onRequest(final.code, final.data)).kind, 'wait');
    }
    assert.equal((await client.onRequest(AuthCode.Ok, Buffer.alloc(0))).kind, 'ok');
    out.ok = step.user.name;
    return out;
  }
  assert.fail('the exchange did not end');
}

describe('ClientAuthenticator against UpstreamLogin', () => {
  const md5 = createMd5Verifier('old', 'pw');
  const d = new UserDirectory(
    config({ agent: user(), old: user({ password: md5 }) }, { allowMd5: true }),
    {},
  );
  const cert = Buffer.alloc(32, 7);
  const other = Buffer.alloc(32, 8);
  const WRONG = { reason: 'wrong_password', code: '28P01' };

  const cases: Array<{
    name: string;
    user: string;
    password: string;
    binding?: { server?: Buffer; client?: Buffer };
    want: Partial<Outcome> & { failedLike?: { reason: string; code: string } };
  }> = [
    {
      name: 'SCRAM, plaintext',
      user: 'agent',
      password: 'pw',
      want: { requests: [10, 11, 12], mechanism: 'SCRAM-SHA-256', ok: 'agent' },
    },
    {
      name: 'SCRAM-SHA-256-PLUS, both on the same certificate',
      user: 'agent',
      password: 'pw',
      binding: { server: cert, client: cert },
      want: { requests: [10, 11, 12], mechanism: 'SCRAM-SHA-256-PLUS', ok: 'agent' },
    },
    {
      name: 'TLS, a client that does not bind ("n")',
      user: 'agent',
      password: 'pw',
      binding: { server: cert },
      want: { requests: [10, 11, 12], mechanism: 'SCRAM-SHA-256', ok: 'agent' },
    },
    {
      name: 'a man in the middle: the client sees another certificate',
      user: 'agent',
      password: 'pw',
      binding: { server: cert, client: other },
      want: {
        requests: [10, 11],
        mechanism: 'SCRAM-SHA-256-PLUS',
        failedLike: { reason: 'scram_error', code: '28000' },
      },
    },
    {
      name: 'SCRAM, wrong password',
      user: 'agent',
      password: 'wrong',
      want: { requests: [10, 11], mechanism: 'SCRAM-SHA-256', failedLike: WRONG },
    },
    {
      name: 'an unknown user: the mock exchange',
      user: 'nobody',
      password: 'pw',
      want: { requests: [10, 11], mechanism: 'SCRAM-SHA-256', failedLike: WRONG },
    },
    {
      name: 'an unknown user on TLS: PLUS offered as for a real one',
      user: 'nobody',
      password: 'pw',
      binding: { server: cert, client: cert },
      want: { requests: [10, 11], mechanism: 'SCRAM-SHA-256-PLUS', failedLike: WRONG },
    },
    { name: 'MD5', user: 'old', password: 'pw', want: { requests: [5], ok: 'old' } },
    {
      name: 'MD5, wrong password',
      user: 'old',
      password: 'wrong',
      want: { requests: [5], failedLike: WRONG },
    },
  ];
  for (const c of cases) {
    test(c.name, async () => {
      const out = await exchange(d, c.user, c.password, c.binding);
      assert.deepEqual(out.requests, c.want.requests);
      assert.equal(out.mechanism, c.want.mechanism);
      assert.equal(out.ok, c.want.ok);
      if (c.want.failedLike) {
        assert.equal(out.failed?.reason, c.want.failedLike.reason);
        assert.equal(out.failed?.code, c.want.failedLike.code);
        if (c.want.failedLike.code === '28P01') {
          assert.equal(out.failed?.message, `password authentication failed for user "${c.user}"`);
        }
      } else {
        assert.equal(out.failed, undefined);
      }
    });
  }

  test('a user removed by a reload mid-exchange still finishes with what it started', async () => {
    const file = path.join(dir, 'midway.yaml');
    writeFileSync(file, usersYaml({ mid: fileUser() }));
    const dd = new UserDirectory(config({}, { usersFile: file }), {});
    const server = new ClientAuthenticator('mid', dd, undefined);
    const client = new UpstreamLogin('mid', 'pw', undefined);
    const first = decodeAuthentication(server.start());
    const a = await client.onRequest(first.code, first.data);
    writeFileSync(file, usersYaml({}));
    dd.reload();
    assert.equal(dd.get('mid'), undefined);
    assert.equal(a.kind, 'reply');
    const s1 = server.onResponse((a as { message: Buffer }).message);
    assert.equal(s1.kind, 'reply');
    const second = decodeAuthentication((s1 as { message: Buffer }).message);
    const b = await client.onRequest(second.code, second.data);
    const s2 = server.onResponse((b as { message: Buffer }).message);
    assert.equal(s2.kind, 'done');
  });
});

describe('UpstreamLogin: what the server may ask', () => {
  test('cleartext: the password as a PasswordMessage', async () => {
    const step = await new UpstreamLogin('r', 'pä ss', undefined).onRequest(
      AuthCode.CleartextPassword,
      Buffer.alloc(0),
    );
    assert.equal(step.kind, 'reply');
    const m = (step as { message: Buffer }).message;
    assert.equal(m.toString('latin1', 0, 1), 'p');
    assert.equal(m.subarray(5).toString('utf8'), 'pä ss\0');
  });

  const errors: Array<[string, () => unknown, RegExp]> = [
    [
      'a password request with none configured',
      () => new UpstreamLogin('r', undefined, undefined).onRequest(AuthCode.MD5Password, Buffer.alloc(4)),
      /asked for a password and none is configured/,
    ],
    [
      'GSS',
      () => new UpstreamLogin('r', 'pw', undefined).onRequest(AuthCode.GSS, Buffer.alloc(0)),
      /does not do \(7\)/,
    ],
    [
      'SASLContinue before SASL',
      () => new UpstreamLogin('r', 'pw', undefined).onRequest(AuthCode.SASLContinue, Buffer.from('r=x')),
      /SASL continue before SASL start/,
    ],
  ];
  for (const [name, fn, re] of errors) {
    test(`refused: ${name}`, () =>
      assert.throws(fn, (e: unknown) => e instanceof UpstreamLoginError && re.test(e.message)));
  }

  test('AuthenticationOk in the middle of SCRAM (a server that skips its proof) is refused', async () => {
    const login = new UpstreamLogin('r', 'pw', undefined);
    const mechanisms = Buffer.from('SCRAM-SHA-256\0\0');
    assert.equal((await login.onRequest(AuthCode.SASL, mechanisms)).kind, 'reply');
    assert.throws(
      () => login.onRequest(AuthCode.Ok, Buffer.alloc(0)),
      (e: unknown) =>
        e instanceof UpstreamLoginError && /without proving it knows the password/.test(e.message),
    );
  });

  test('a trust server: AuthenticationOk at once, no password needed', async () => {
    assert.equal(
      (await new UpstreamLogin('r', undefined, undefined).onRequest(AuthCode.Ok, Buffer.alloc(0))).kind,
      'ok',
    );
  });

  test('a malformed client answer to the proxy is a protocol error, not a crash', () => {
    const d = new UserDirectory(config({ agent: user() }), {});
    const server = new ClientAuthenticator('agent', d, undefined);
    server.start();
    // SASLInitialResponse naming a mechanism that was not offered
    const msg = Buffer.concat([
      Buffer.from('p'),
      Buffer.from([0, 0, 0, 0]),
      Buffer.from('SCRAM-SHA-1\0'),
      Buffer.from([0, 0, 0, 3]),
      Buffer.from('n,,'),
    ]);
    msg.writeInt32BE(msg.length - 1, 1);
    const step = server.onResponse(msg);
    assert.equal(step.kind, 'failed');
    assert.equal((step as { error: { code: string } }).error.code, '08P01');
  });
});

/* ---------------------------------------------------------- the mock exchange */

/** The attributes of the server-first-message a client gets for `name` (r, s, i). */
async function serverFirstFor(d: UserDirectory, name: string): Promise<Map<string, string>> {
  const server = new ClientAuthenticator(name, d, undefined);
  const client = new UpstreamLogin(name, 'any-password', undefined);
  const first = decodeAuthentication(server.start());
  assert.equal(first.code, AuthCode.SASL);
  const answer = await client.onRequest(first.code, first.data);
  assert.equal(answer.kind, 'reply');
  const step = server.onResponse((answer as { message: Buffer }).message);
  assert.equal(step.kind, 'reply');
  const { code, data } = decodeAuthentication((step as { message: Buffer }).message);
  assert.equal(code, AuthCode.SASLContinue);
  return new Map(
    data
      .toString('utf8')
      .split(',')
      .map((kv) => [kv[0]!, kv.slice(2)] as const),
  );
}

describe('the mock exchange for unknown users: as stable and as ordinary as a real one', () => {
  /** Made once each: PBKDF2 is the slow part. */
  const OTHER = createScramVerifier('other-pw');
  const SLOW = [
    createScramVerifier('a', { iterations: 10000 }),
    createScramVerifier('b', { iterations: 10000 }),
  ];

  test('mockSecret: the same for the same users (a restart), different for other users, kept on reload', () => {
    const users = { agent: user(), second: user({ password: OTHER }) };
    const a = new UserDirectory(config(users), {});
    const b = new UserDirectory(config(users), {});
    assert.equal(a.mockSecret.length, 32);
    assert.deepEqual(a.mockSecret, b.mockSecret, 'the same users: the same secret');
    const other = new UserDirectory(config({ agent: user({ password: OTHER }) }), {});
    assert.notDeepEqual(other.mockSecret, a.mockSecret, 'other verifiers: another secret');
    const fewer = new UserDirectory(config({ agent: user() }), {});
    assert.notDeepEqual(fewer.mockSecret, a.mockSecret, 'a user fewer: another secret');

    const usersFile = path.join(dir, 'mock-reload.yaml');
    writeFileSync(usersFile, usersYaml({ one: fileUser() }));
    const d = new UserDirectory(config({}, { usersFile }), {});
    const secret = Buffer.from(d.mockSecret);
    writeFileSync(usersFile, usersYaml({ two: fileUser({ password: OTHER }) }));
    d.reload();
    assert.ok(d.get('two'));
    assert.deepEqual(d.mockSecret, secret, 'kept on reload');
  });

  test('mockIterations: the count most SCRAM users have; 4096 without any', () => {
    const slow = { s1: user({ password: SLOW[0] }), s2: user({ password: SLOW[1] }) };
    assert.equal(new UserDirectory(config({ ...slow, fast: user() }), {}).mockIterations, 10000);
    assert.equal(new UserDirectory(config({ fast: user() }), {}).mockIterations, 4096);
    const md5Only = config({ old: user({ password: createMd5Verifier('old', 'pw') }) }, { allowMd5: true });
    assert.equal(new UserDirectory(md5Only, {}).mockIterations, 4096);

    const usersFile = path.join(dir, 'iterations-reload.yaml');
    writeFileSync(usersFile, usersYaml({ fast: fileUser() }));
    const d = new UserDirectory(config({}, { usersFile }), {});
    assert.equal(d.mockIterations, 4096);
    writeFileSync(
      usersFile,
      usersYaml({ s1: fileUser({ password: SLOW[0] }), s2: fileUser({ password: SLOW[1] }) }),
    );
    d.reload();
    assert.equal(d.mockIterations, 10000, 'follows the users on reload');
  });

  test("an unknown name's server-first: the real users' iteration count, a salt stable across a restart", async () => {
    const users = { s1: user({ password: SLOW[0] }), s2: user({ password: SLOW[1] }) };
    const d = new UserDirectory(config(users), {});
    const known = await serverFirstFor(d, 's1');
    const unknown = await serverFirstFor(d, 'nobody');
    assert.equal(known.get('i'), '10000');
    assert.equal(unknown.get('i'), '10000', "the mock shows the real users' count");
    assert.equal(
      Buffer.from(unknown.get('s')!, 'base64').length,
      Buffer.from(known.get('s')!, 'base64').length,
    );

    const restarted = new UserDirectory(config(users), {});
    const again = await serverFirstFor(restarted, 'nobody');
    assert.equal(
      again.get('s'),
      unknown.get('s'),
      'the same salt after a restart, as a real user keeps hers',
    );
    assert.equal(again.get('i'), '10000');
    assert.notEqual(again.get('r'), unknown.get('r'), 'a fresh nonce each time');
    const otherName = await serverFirstFor(restarted, 'somebody');
    assert.notEqual(otherName.get('s'), unknown.get('s'), 'a salt per name');
    const otherUsers = await serverFirstFor(new UserDirectory(config({ agent: user() }), {}), 'nobody');
    assert.notEqual(otherUsers.get('s'), unknown.get('s'), 'other users: other salts');
    assert.equal(otherUsers.get('i'), '4096');
  });
});
