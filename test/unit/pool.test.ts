/**
 * The upstream pool's pure parts: the `pool` config section, the pool key, the
 * greeting a client gets with a pooled session, and the DataRow reader of the
 * reset's check. The pool itself runs against a real PostgreSQL in
 * test/integration/pool.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ConfigError, resolveConfig, validateRawConfig } from '../../src/config/config.js';
import type { ProxyUser } from '../../src/auth/users.js';
import { credentialOf, decodeDataRow, handoffGreeting, poolIdentity } from '../../src/upstream/pool.js';

const SCRAM_USER = {
  password: 'SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy',
  upstream_user: 'reader',
  databases: ['*'],
};

describe('the pool section', () => {
  test('on by default with proxy-managed users, with PgBouncer-like timeouts', () => {
    const c = resolveConfig({ auth: { mode: 'proxy', users: { a: SCRAM_USER } } }, {}, {});
    assert.deepEqual(c.pool, {
      enabled: true,
      maxIdle: 8,
      maxIdleTotal: 64,
      idleTimeoutMs: 600_000,
      maxLifetimeMs: 3_600_000,
      resetTimeoutMs: 5000,
    });
  });

  test('off in passthrough (the proxy holds no credentials to share)', () => {
    assert.equal(resolveConfig({}, {}, {}).pool.enabled, false);
  });

  test('every key read', () => {
    const raw = validateRawConfig(
      {
        auth: { mode: 'proxy', users: { a: SCRAM_USER } },
        pool: {
          enabled: false,
          max_idle: 2,
          max_idle_total: 5,
          idle_timeout_ms: 0,
          max_lifetime_ms: 1000,
          reset_timeout_ms: 250,
        },
      },
      'test.yaml',
    );
    assert.deepEqual(resolveConfig(raw, {}, {}).pool, {
      enabled: false,
      maxIdle: 2,
      maxIdleTotal: 5,
      idleTimeoutMs: 0,
      maxLifetimeMs: 1000,
      resetTimeoutMs: 250,
    });
  });

  const bad: Array<[string, unknown, RegExp]> = [
    ['an unknown key', { pool: { max_idel: 3 } }, /pool\.max_idel: unknown key/],
    ['a negative size', { pool: { max_idle: -1 } }, /pool\/max_idle|pool\.max_idle/],
    ['a reset timeout too short to mean anything', { pool: { reset_timeout_ms: 10 } }, /reset_timeout_ms/],
    ['a string for a number', { pool: { idle_timeout_ms: '10s' } }, /idle_timeout_ms/],
  ];
  for (const [what, raw, message] of bad) {
    test(`refused: ${what}`, () => {
      assert.throws(
        () => validateRawConfig(raw, 'test.yaml'),
        (err: Error) => err instanceof ConfigError && message.test(err.message),
      );
    });
  }
});

function user(name: string, over: Partial<ProxyUser> = {}): ProxyUser {
  return {
    name,
    verifier: { kind: 'md5', md5: 'md5' + '0'.repeat(32) },
    upstreamUser: 'reader',
    upstreamPassword: 'pw',
    databases: undefined,
    ...over,
  };
}

describe('the pool key', () => {
  const params: Array<[string, string]> = [
    ['user', 'reader'],
    ['database', 'shop'],
    ['application_name', 'psql'],
    ['default_transaction_read_only', 'on'],
  ];
  const base = poolIdentity(user('agent'), 'shop', params);

  test('the same for the same user, database, credentials and parameters', () => {
    assert.deepEqual(
      poolIdentity(
        user('agent'),
        'shop',
        params.map(([k, v]) => [k, v]),
      ),
      base,
    );
  });

  const differs: Array<[string, ReturnType<typeof poolIdentity>]> = [
    ['another proxy user with the same upstream role', poolIdentity(user('other'), 'shop', params)],
    ['another database', poolIdentity(user('agent'), 'shop2', params)],
    ['another upstream password', poolIdentity(user('agent', { upstreamPassword: 'pw2' }), 'shop', params)],
    ['no upstream password', poolIdentity(user('agent', { upstreamPassword: undefined }), 'shop', params)],
    ['another upstream role', poolIdentity(user('agent', { upstreamUser: 'writer' }), 'shop', params)],
    [
      'another application_name',
      poolIdentity(user('agent'), 'shop', [...params.slice(0, 2), ['application_name', 'x'], params[3]!]),
    ],
    ['one more startup setting', poolIdentity(user('agent'), 'shop', [...params, ['DateStyle', 'ISO']])],
  ];
  for (const [what, id] of differs) {
    test(`differs with ${what}`, () => assert.notEqual(id.key, base.key));
  }

  test('holds no password', () => {
    assert.ok(!base.key.includes('"pw"'), base.key);
    assert.ok(!base.credential.includes('pw'));
    assert.equal(
      credentialOf(user('x')),
      credentialOf(user('y')),
      'the fingerprint is of the credentials only',
    );
  });
});

describe('the greeting of a pooled session', () => {
  test('AuthenticationOk, every ParameterStatus in order, BackendKeyData, ReadyForQuery I', () => {
    const params = new Map([
      ['server_version', '18.1'],
      ['application_name', 'psql'],
    ]);
    const key = { processId: 0x01020304, secretKey: Buffer.from([9, 8, 7, 6]) };
    const g = handoffGreeting(params, key);
    const expected = Buffer.concat([
      Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0]),
      Buffer.from('S\0\0\0\x18server_version\x0018.1\0', 'latin1'),
      Buffer.from('S\0\0\0\x1aapplication_name\0psql\0', 'latin1'),
      Buffer.from([0x4b, 0, 0, 0, 12, 1, 2, 3, 4, 9, 8, 7, 6]),
      Buffer.from([0x5a, 0, 0, 0, 5, 0x49]),
    ]);
    assert.deepEqual(g, expected);
    // A changed value is seen, though the ParameterStatus block is cached per map.
    params.set('application_name', 'app');
    assert.ok(handoffGreeting(params, key).includes(Buffer.from('application_name\0app\0')));
  });
});

describe('decodeDataRow', () => {
  const row = (cols: Array<string | null>): Buffer => {
    const parts = cols.map((c) => {
      if (c === null) return Buffer.from([0xff, 0xff, 0xff, 0xff]);
      const v = Buffer.from(c);
      const len = Buffer.alloc(4);
      len.writeInt32BE(v.length);
      return Buffer.concat([len, v]);
    });
    const body = Buffer.concat([Buffer.from([0, cols.length]), ...parts]);
    const head = Buffer.alloc(5);
    head[0] = 0x44;
    head.writeInt32BE(body.length + 4, 1);
    return Buffer.concat([head, body]);
  };

  test('text columns and NULL, from a slice of a larger buffer', () => {
    const msg = row(['on', null, '', 'reader']);
    const sliced = Buffer.concat([Buffer.from('xx'), msg, Buffer.from('yy')]).subarray(2, 2 + msg.length);
    assert.deepEqual(decodeDataRow(sliced), ['on', null, '', 'reader']);
  });

  test('a column running past the end, or bytes left over, is refused', () => {
    const msg = row(['on']);
    const short = Buffer.from(msg);
    short.writeInt32BE(msg.length - 2, 1);
    assert.throws(() => decodeDataRow(short.subarray(0, msg.length - 1)));
    const long = Buffer.concat([msg, Buffer.from([0])]);
    long.writeInt32BE(msg.length, 1);
    assert.throws(() => decodeDataRow(long));
  });
});
