import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  ConfigError,
  parseHostPort,
  parseUpstreamUrl,
  readConfigFile,
  resolveConfig,
  validateRawConfig,
} from '../../src/config/config.js';

/** Host and port of a resolved upstream (its TLS settings are tested on their own). */
function addr(u: { host: string; port: number } | undefined): { host: string; port: number } | undefined {
  return u && { host: u.host, port: u.port };
}

/** Validates and returns the error message (or fails if it validated). */
function errorOf(raw: unknown): string {
  try {
    validateRawConfig(raw, 'test.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.message;
  }
  assert.fail(`validated: ${JSON.stringify(raw)}`);
}

describe('validateRawConfig names the key path', () => {
  const cases: Array<[string, unknown, RegExp[]]> = [
    ['unknown top-level key', { listne: '1.2.3.4:5' }, [/^ {2}listne: unknown key$/m]],
    ['unknown key in upstream', { upstream: { hots: 'x' } }, [/^ {2}upstream\.hots: unknown key$/m]],
    [
      'unknown key two levels down',
      { policy: { functions: { mde: 'allowlist' } } },
      [/^ {2}policy\.functions\.mde: unknown key$/m],
    ],
    ['unknown key in limits', { limits: { max_connections: 5 } }, [/limits\.max_connections: unknown key/]],
    ['unknown key in embedded', { embedded: { dir: 'x' } }, [/embedded\.dir: unknown key/]],
    [
      'several errors at once',
      { nope: 1, log: { lvl: 'x' }, policy: { max_sleep: 1 } },
      [/^ {2}nope: unknown key$/m, /log\.lvl: unknown key/, /policy\.max_sleep: unknown key/],
    ],
    ['port not an integer', { upstream: { port: 'x' } }, [/upstream\.port: must be integer/]],
    ['port out of range', { upstream: { port: 70000 } }, [/upstream\.port: must be <= 65535/]],
    ['port zero', { upstream: { port: 0 } }, [/upstream\.port: must be >= 1/]],
    ['port fractional', { upstream: { port: 5432.5 } }, [/upstream\.port: must be integer/]],
    [
      'log level enum',
      { log: { level: 'verbose' } },
      [/log\.level: must be one of fatal, error, warn, info/],
    ],
    [
      'function mode enum',
      { policy: { functions: { mode: 'blocklist' } } },
      [/policy\.functions\.mode: must be one of denylist, allowlist/],
    ],
    ['listen not a string', { listen: 6432 }, [/listen: must be string/]],
    ['listen without a port', { listen: 'localhost' }, [/listen: must match pattern/]],
    ['upstream url scheme', { upstream: { url: 'mysql://h:1' } }, [/upstream\.url: must match pattern/]],
    ['upstream not an object', { upstream: 'postgres://h' }, [/upstream: must be object/]],
    ['empty upstream host', { upstream: { host: '' } }, [/upstream\.host: must NOT have fewer than 1/]],
    [
      'array item type',
      { policy: { allow_statements: ['ANALYZE', 3] } },
      [/policy\.allow_statements\.1: must be string/],
    ],
    [
      'duplicate array items',
      { policy: { allow_statements: ['ANALYZE', 'ANALYZE'] } },
      [/policy\.allow_statements: must NOT have duplicate items/],
    ],
    [
      'setting limit negative',
      { policy: { setting_limits: { statement_timeout: -1 } } },
      [/policy\.setting_limits\.statement_timeout: must be >= 0/],
    ],
    [
      'setting limit bad name',
      { policy: { setting_limits: { 'Statement-Timeout': 1 } } },
      [/policy\.setting_limits/],
    ],
    [
      'max_message_bytes below 1 KB',
      { limits: { max_message_bytes: 10 } },
      [/limits\.max_message_bytes: must be >= 1024/],
    ],
    [
      'connect timeout too long',
      { upstream: { connect_timeout_ms: 600001 } },
      [/upstream\.connect_timeout_ms: must be <= 600000/],
    ],
    ['top level not an object', ['listen'], [/\(top level\): must be object/]],
    ['top level a string', 'listen: x', [/\(top level\): must be object/]],
  ];
  for (const [name, raw, patterns] of cases) {
    test(name, () => {
      const msg = errorOf(raw);
      assert.match(msg, /^invalid configuration in test\.yaml:/);
      for (const p of patterns) assert.match(msg, p);
    });
  }

  test('valid configurations pass through unchanged', () => {
    for (const raw of [
      {},
      { listen: '[::1]:6432' },
      { listen: '0.0.0.0:6432', upstream: { url: 'postgresql://db:5433', connect_timeout_ms: 100 } },
      { upstream: { host: '/var/run/postgresql', port: 5432 } },
      {
        policy: {
          allow_statements: ['ANALYZE'],
          functions: { mode: 'allowlist', allow: ['lower'], deny: [] },
          protected_settings: ['work_mem'],
          setting_limits: { statement_timeout: 30000 },
          max_sleep_seconds: 0.5,
          cache_size: 0,
        },
        log: { level: 'silent' },
        embedded: { data_dir: '/tmp/x', port: 0 },
      },
    ]) {
      assert.deepEqual(validateRawConfig(raw, 'x'), raw);
    }
    assert.deepEqual(validateRawConfig(null, 'x'), {});
    assert.deepEqual(validateRawConfig(undefined, 'x'), {});
  });
});

describe('resolveConfig: file < PGHOST/PGPORT < flags', () => {
  const file = validateRawConfig({ upstream: { url: 'postgres://file-host:5001' } }, 'f');
  const cases: Array<[string, Parameters<typeof resolveConfig>, { host: string; port: number } | undefined]> =
    [
      ['nothing: embedded', [{}, {}, {}], undefined],
      ['file url', [file, {}, {}], { host: 'file-host', port: 5001 }],
      [
        'file host + port',
        [validateRawConfig({ upstream: { host: 'h', port: 6000 } }, 'f'), {}, {}],
        { host: 'h', port: 6000 },
      ],
      [
        'file host without port',
        [validateRawConfig({ upstream: { host: 'h' } }, 'f'), {}, {}],
        { host: 'h', port: 5432 },
      ],
      [
        'file url, port overridden by file port',
        [validateRawConfig({ upstream: { url: 'postgres://u:1', port: 2 } }, 'f'), {}, {}],
        { host: 'u', port: 2 },
      ],
      ['PGHOST beats the file', [file, {}, { PGHOST: 'env-host' }], { host: 'env-host', port: 5432 }],
      [
        'PGHOST + PGPORT beat the file',
        [file, {}, { PGHOST: 'env-host', PGPORT: '7000' }],
        { host: 'env-host', port: 7000 },
      ],
      [
        'PGPORT alone changes the file url port',
        [file, {}, { PGPORT: '7001' }],
        { host: 'file-host', port: 7001 },
      ],
      ['PGPORT alone without any upstream: still embedded', [{}, {}, { PGPORT: '7001' }], undefined],
      [
        'PGHOST unix socket directory',
        [{}, {}, { PGHOST: '/var/run/postgresql' }],
        { host: '/var/run/postgresql', port: 5432 },
      ],
      [
        '--upstream beats PGHOST and the file',
        [file, { upstream: 'postgres://flag-host:8000' }, { PGHOST: 'env-host', PGPORT: '7000' }],
        { host: 'flag-host', port: 8000 },
      ],
      [
        '--upstream without a port',
        [{}, { upstream: 'postgresql://flag-host' }, {}],
        { host: 'flag-host', port: 5432 },
      ],
    ];
  for (const [name, args, want] of cases) {
    test(name, () => {
      assert.deepEqual(addr(resolveConfig(...args).upstream), want);
    });
  }

  test('bad PGPORT without PGHOST is refused too', {}, () => {
    const raws = [file, validateRawConfig({ upstream: { host: 'h' } }, 'f')];
    for (const raw of raws) {
      for (const PGPORT of ['abc', '0', '70000']) {
        assert.throws(() => resolveConfig(raw, {}, { PGPORT }), /PGPORT: not a port number/);
      }
    }
  });

  test('PGPORT beats the file port', {}, () => {
    const raw = validateRawConfig({ upstream: { host: 'h', port: 6000 } }, 'f');
    assert.deepEqual(addr(resolveConfig(raw, {}, { PGPORT: '7000' }).upstream), { host: 'h', port: 7000 });
  });

  test('bad PGPORT with PGHOST is refused', () => {
    for (const PGPORT of ['abc', '0', '70000', '54.3']) {
      assert.throws(() => resolveConfig({}, {}, { PGHOST: 'h', PGPORT }), /PGPORT: not a port number/);
    }
  });

  test('listen: default, file, flag', () => {
    assert.deepEqual(resolveConfig({}, {}, {}).listen, { host: '127.0.0.1', port: 6432 });
    assert.deepEqual(resolveConfig({ listen: '0.0.0.0:7000' }, {}, {}).listen, {
      host: '0.0.0.0',
      port: 7000,
    });
    assert.deepEqual(resolveConfig({ listen: '0.0.0.0:7000' }, { listen: '[::1]:7001' }, {}).listen, {
      host: '::1',
      port: 7001,
    });
  });

  for (const listen of [
    '6432',
    'host',
    'host:',
    ':6432',
    'host:port',
    'a b:1',
    'host:123456',
    'host:99999',
  ]) {
    test(`--listen ${JSON.stringify(listen)} refused naming the flag`, () => {
      assert.throws(
        () => resolveConfig({}, { listen }, {}),
        (err: unknown) => err instanceof ConfigError && /^--listen: expected HOST:PORT/.test(err.message),
      );
    });
  }

  test('defaults and policy mapping', () => {
    const c = resolveConfig(
      validateRawConfig(
        {
          policy: {
            allow_statements: ['analyze'],
            functions: { mode: 'allowlist', allow: ['f'], deny: ['g'] },
            protected_settings: ['Work_Mem'],
            setting_limits: { statement_timeout: 5 },
            max_sleep_seconds: 0,
            cache_size: 0,
          },
        },
        'f',
      ),
      {},
      {},
    );
    assert.deepEqual(c.policy, {
      allowStatements: ['ANALYZE'],
      functionMode: 'allowlist',
      allowFunctions: ['f'],
      denyFunctions: ['g'],
      protectedSettings: ['work_mem'],
      settingLimits: { statement_timeout: 5 },
      maxSleepSeconds: 0,
      cacheSize: 0,
    });
    assert.equal(c.maxMessageBytes, 64 * 1024 * 1024);
    assert.equal(c.logLevel, 'info');
  });
});

describe('parseUpstreamUrl', () => {
  const ok: Array<[string, { host: string; port: number }]> = [
    ['postgresql://h:5433', { host: 'h', port: 5433 }],
    ['postgres://h', { host: 'h', port: 5432 }],
    ['postgres://h/', { host: 'h', port: 5432 }],
    ['postgres://[::1]:5433', { host: '::1', port: 5433 }],
    ['postgres://10.0.0.1:1', { host: '10.0.0.1', port: 1 }],
    ['postgres://?host=/var/run/postgresql', { host: '/var/run/postgresql', port: 5432 }],
    ['postgres://%2Fvar%2Frun%2Fpostgresql:5433', { host: '/var/run/postgresql', port: 5433 }],
  ];
  for (const [url, want] of ok) {
    test(`accepts ${url}`, () => assert.deepEqual(addr(parseUpstreamUrl(url, '--upstream')), want));
  }
  const bad: Array<[string, RegExp]> = [
    ['postgres://user:pass@h:5432', /--upstream: credentials do not belong/],
    ['postgres://user@h:5432', /--upstream: credentials do not belong/],
    ['postgres://:secret@h', /--upstream: credentials do not belong/],
    ['postgres://h:5432/dbname', /--upstream: the database comes from each client; remove "\/dbname"/],
    ['postgres://h/db/x', /--upstream: the database comes from each client/],
    ['mysql://h:3306', /--upstream: expected postgres:\/\/HOST:PORT/],
    ['h:5432', /--upstream: /],
    ['not a url', /--upstream: not a URL/],
    ['postgres://', /--upstream: /],
  ];
  for (const [url, re] of bad) {
    test(`refuses ${url}`, () => {
      assert.throws(
        () => parseUpstreamUrl(url, '--upstream'),
        (err: unknown) => err instanceof ConfigError && re.test(err.message),
      );
    });
  }
  test('query parameters it does not apply are refused, not silently ignored', {}, () => {
    for (const url of ['postgres://h?sslfoo=require', 'postgres://h?port=7', 'postgres://h?sslpassword=x']) {
      let got: unknown;
      try {
        got = parseUpstreamUrl(url, '--upstream');
      } catch (err) {
        got = err;
      }
      const honoured = url.endsWith('port=7') && (got as { port?: number }).port === 7;
      assert.ok(got instanceof ConfigError || honoured, `${url} → ${JSON.stringify(got)}`);
    }
  });

  test('port 0 is refused as upstream.port and PGPORT are', () => {
    assert.throws(() => parseUpstreamUrl('postgres://h:0', '--upstream'), ConfigError);
  });

  test('file url with credentials is refused naming upstream.url', () => {
    assert.throws(
      () => resolveConfig(validateRawConfig({ upstream: { url: 'postgres://a:b@h:1' } }, 'f'), {}, {}),
      /^ConfigError: upstream\.url: credentials/,
    );
  });
});

describe('parseHostPort', () => {
  const ok: Array<[string, { host: string; port: number }]> = [
    ['127.0.0.1:6432', { host: '127.0.0.1', port: 6432 }],
    ['localhost:0', { host: 'localhost', port: 0 }],
    ['[::]:6432', { host: '::', port: 6432 }],
    ['[fe80::1%eth0]:1', { host: 'fe80::1%eth0', port: 1 }],
    ['h:65535', { host: 'h', port: 65535 }],
  ];
  for (const [s, want] of ok) test(`accepts ${s}`, () => assert.deepEqual(parseHostPort(s, 'x'), want));
  for (const s of ['::1:6432', 'h:65536', 'h:-1', 'h:1.5', '', ':1', 'h']) {
    test(`refuses ${JSON.stringify(s)}`, () =>
      assert.throws(() => parseHostPort(s, 'listen'), /^ConfigError: listen:/));
  }
});

describe('readConfigFile', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgro-config-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const write = (name: string, text: string): string => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };

  test('YAML with a typo names the path and the file', () => {
    const p = write('typo.yaml', 'policy:\n  functions:\n    mde: allowlist\n');
    assert.throws(
      () => readConfigFile(p),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.message.includes(p) &&
        err.message.includes('policy.functions.mde: unknown key'),
    );
  });

  test('duplicate YAML keys are refused', () => {
    const p = write('dup.yaml', 'listen: 1.2.3.4:1\nlisten: 1.2.3.4:2\n');
    assert.throws(() => readConfigFile(p), /^ConfigError: cannot parse/);
  });

  test('an empty file is an empty config; a missing file an error', () => {
    assert.deepEqual(readConfigFile(write('empty.yaml', '# nothing\n')), {});
    assert.throws(() => readConfigFile(join(dir, 'missing.yaml')), /^ConfigError: cannot read config file/);
  });

  const example = fileURLToPath(new URL('../../config.example.yaml', import.meta.url));
  test('config.example.yaml parses, validates and resolves', { skip: !existsSync(example) }, () => {
    const raw = readConfigFile(example);
    const c = resolveConfig(raw, {}, {});
    assert.ok(c.listen.port > 0);
  });
});

describe('upstream TLS: libpq parameters from the URL, the file and PGSSL* variables', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgro-tls-config-'));
  const ca = join(dir, 'ca.pem');
  writeFileSync(ca, 'not parsed here');
  after(() => rmSync(dir, { recursive: true, force: true }));
  const tlsOf = (...args: Parameters<typeof resolveConfig>): unknown => resolveConfig(...args).upstream?.tls;

  const cases: Array<[string, Parameters<typeof resolveConfig>, unknown]> = [
    [
      'libpq default: prefer',
      [{}, { upstream: 'postgres://h' }, {}],
      { sslmode: 'prefer', sslnegotiation: 'postgres' },
    ],
    [
      'URL parameters',
      [{}, { upstream: `postgres://h?sslmode=verify-full&sslrootcert=${ca}&sslnegotiation=direct` }, {}],
      { sslmode: 'verify-full', sslrootcert: ca, sslnegotiation: 'direct' },
    ],
    [
      'file keys',
      [validateRawConfig({ upstream: { host: 'h', sslmode: 'verify-ca', sslrootcert: ca } }, 'f'), {}, {}],
      { sslmode: 'verify-ca', sslrootcert: ca, sslnegotiation: 'postgres' },
    ],
    [
      'PGSSLMODE does not change the sslmode the file sets',
      [
        validateRawConfig({ upstream: { host: 'h', sslmode: 'verify-ca', sslrootcert: ca } }, 'f'),
        {},
        { PGSSLMODE: 'prefer' },
      ],
      { sslmode: 'verify-ca', sslrootcert: ca, sslnegotiation: 'postgres' },
    ],
    [
      "nor one the file's URL sets",
      [
        validateRawConfig({ upstream: { url: 'postgres://h?sslmode=require' } }, 'f'),
        {},
        { PGSSLMODE: 'disable' },
      ],
      { sslmode: 'require', sslnegotiation: 'postgres' },
    ],
    [
      'PGSSLMODE and PGSSLROOTCERT fill in what the file leaves out',
      [
        validateRawConfig({ upstream: { host: 'h' } }, 'f'),
        {},
        { PGSSLMODE: 'verify-full', PGSSLROOTCERT: ca },
      ],
      { sslmode: 'verify-full', sslrootcert: ca, sslnegotiation: 'postgres' },
    ],
    [
      'a --upstream URL is taken whole: PGSSLMODE does not change it',
      [{}, { upstream: 'postgres://h?sslmode=disable' }, { PGSSLMODE: 'require' }],
      { sslmode: 'disable', sslnegotiation: 'postgres' },
    ],
    [
      'sslrootcert system with verify-full',
      [{}, { upstream: 'postgres://h?sslmode=verify-full&sslrootcert=system' }, {}],
      {
        sslmode: 'verify-full',
        sslrootcert: 'system',
        sslnegotiation: 'postgres',
      },
    ],
  ];
  for (const [name, args, want] of cases) test(name, () => assert.deepEqual(tlsOf(...args), want));

  const bad: Array<[string, Parameters<typeof resolveConfig>, RegExp]> = [
    [
      'verify-full without a CA',
      [{}, { upstream: 'postgres://h?sslmode=verify-full' }, {}],
      /needs sslrootcert/,
    ],
    ['verify-ca without a CA', [{}, {}, { PGHOST: 'h', PGSSLMODE: 'verify-ca' }], /needs sslrootcert/],
    [
      'system store with verify-ca',
      [{}, { upstream: 'postgres://h?sslmode=verify-ca&sslrootcert=system' }, {}],
      /needs sslmode verify-full/,
    ],
    [
      'direct with prefer',
      [{}, { upstream: 'postgres://h?sslnegotiation=direct' }, {}],
      /sslnegotiation direct needs/,
    ],
    ['unknown sslmode', [{}, { upstream: 'postgres://h?sslmode=on' }, {}], /sslmode: must be one of/],
    ['unknown PGSSLMODE', [{}, {}, { PGHOST: 'h', PGSSLMODE: 'yes' }], /PGSSLMODE: must be one of/],
    [
      'missing CA file',
      [{}, { upstream: 'postgres://h?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem' }, {}],
      /nonexistent/,
    ],
    [
      'cert without key',
      [{}, { upstream: `postgres://h?sslmode=require&sslcert=${ca}` }, {}],
      /sslcert and sslkey go together/,
    ],
  ];
  for (const [name, args, re] of bad) {
    test(`refused: ${name}`, () =>
      assert.throws(
        () => resolveConfig(...args),
        (e: unknown) => e instanceof ConfigError && re.test(e.message),
      ));
  }
  test('schema: an unknown sslmode in the file names the key', () => {
    assert.match(errorOf({ upstream: { sslmode: 'on' } }), /upstream\.sslmode: must be one of/);
  });
});

describe('client TLS and auth resolution', () => {
  test('client TLS: disable without a certificate, allow with one, flags beat the file', () => {
    assert.equal(resolveConfig({}, {}, {}).clientTls.mode, 'disable');
    const withCert = resolveConfig({}, { tlsCert: 'c.pem', tlsKey: 'k.pem' }, {}).clientTls;
    assert.deepEqual(withCert, { mode: 'allow', certFile: 'c.pem', keyFile: 'k.pem', minVersion: 'TLSv1.2' });
    const raw = validateRawConfig(
      { client_tls: { mode: 'require', cert_file: 'a', key_file: 'b', min_version: 'TLSv1.3' } },
      'f',
    );
    assert.deepEqual(resolveConfig(raw, { clientTls: 'allow' }, {}).clientTls, {
      mode: 'allow',
      certFile: 'a',
      keyFile: 'b',
      minVersion: 'TLSv1.3',
    });
  });
  const bad: Array<[string, Parameters<typeof resolveConfig>, RegExp]> = [
    ['require without a certificate', [{}, { clientTls: 'require' }, {}], /needs a certificate/],
    ['a certificate without its key', [{}, { tlsCert: 'c.pem' }, {}], /go together/],
    [
      'an unknown --client-tls',
      [{}, { clientTls: 'on', tlsCert: 'c', tlsKey: 'k' }, {}],
      /--client-tls: must be one of/,
    ],
    [
      'users in passthrough mode',
      [validateRawConfig({ auth: { users_file: 'u.yaml' } }, 'f'), {}, {}],
      /need auth\.mode: proxy/,
    ],
    [
      'proxy mode without users',
      [validateRawConfig({ auth: { mode: 'proxy' } }, 'f'), {}, {}],
      /needs users/,
    ],
  ];
  for (const [name, args, re] of bad) {
    test(`refused: ${name}`, () =>
      assert.throws(
        () => resolveConfig(...args),
        (e: unknown) => e instanceof ConfigError && re.test(e.message),
      ));
  }
  test('schema: a user needs password, upstream_user and databases', () => {
    assert.match(
      errorOf({ auth: { mode: 'proxy', users: { a: { password: 'x' } } } }),
      /auth\.users\.a: must have required property/,
    );
    assert.match(
      errorOf({
        auth: {
          users: { a: { password: 'x', upstream_user: 'u', databases: ['d'], upstream_pasword_env: 'X' } },
        },
      }),
      /auth\.users\.a\.upstream_pasword_env: unknown key/,
    );
  });
});

describe('upstream.require_auth', () => {
  const proxyAuth = {
    mode: 'proxy',
    users: { a: { password: 'SCRAM-SHA-256$4096:x', upstream_user: 'r', databases: ['d'] } },
  };

  test('proxy mode: the methods, as given; absent: any', () => {
    const raw = validateRawConfig(
      { upstream: { host: 'h', require_auth: ['scram-sha-256', 'password'] }, auth: proxyAuth },
      'f',
    );
    assert.deepEqual(resolveConfig(raw, {}, {}).auth.upstreamRequireAuth, ['scram-sha-256', 'password']);
    const none = validateRawConfig({ upstream: { host: 'h' }, auth: proxyAuth }, 'f');
    assert.equal(resolveConfig(none, {}, {}).auth.upstreamRequireAuth, undefined);
  });

  test('refused in passthrough mode, naming the key (the client answers the server there)', () => {
    for (const auth of [undefined, { mode: 'passthrough' }]) {
      const raw = validateRawConfig(
        { upstream: { host: 'h', require_auth: ['scram-sha-256'] }, ...(auth ? { auth } : {}) },
        'f',
      );
      assert.throws(
        () => resolveConfig(raw, {}, {}),
        (e: unknown) =>
          e instanceof ConfigError &&
          /^upstream\.require_auth applies to proxy-managed users \(auth\.mode: proxy\)/.test(e.message),
      );
    }
  });

  const schemaCases: Array<[string, unknown, RegExp]> = [
    [
      'an unknown method',
      ['scram-sha-256', 'gss'],
      /upstream\.require_auth\.1: must be one of password, md5/,
    ],
    ['an unknown method first', ['sspi'], /upstream\.require_auth\.0: must be one of/],
    ['an empty list', [], /upstream\.require_auth: must NOT have fewer than 1 items/],
    ['a method twice', ['md5', 'md5'], /upstream\.require_auth: must NOT have duplicate items/],
    ['not a list', 'scram-sha-256', /upstream\.require_auth: must be array/],
  ];
  for (const [name, value, re] of schemaCases) {
    test(`schema: ${name}`, () => {
      assert.match(errorOf({ upstream: { require_auth: value }, auth: proxyAuth }), re);
    });
  }
});
