/**
 * The doctor's pure parts: severities and exit codes, grading facts into
 * findings, the sslmode → node-postgres mapping, and the text and JSON report.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { UpstreamTarget } from '../../src/config/config.js';
import { ConfigError } from '../../src/config/config.js';
import { isLoopback, pgSslAttempts, pinnedOptions } from '../../src/doctor/connect.js';
import {
  nothingFoundYet,
  type DoctorFacts,
  type MembershipFact,
  type PinFacts,
} from '../../src/doctor/facts.js';
import {
  grade,
  gradeConnection,
  gradeExtensions,
  gradeLanguages,
  gradeMemberships,
  gradePin,
  gradeRole,
  gradeSecurityDefiner,
  gradeServer,
  gradeSettingOverrides,
  listSome,
  quoteIdent,
} from '../../src/doctor/grade.js';
import { buildReport, formatJson, formatSummary, formatText, wrap } from '../../src/doctor/report.js';
import {
  exitCodeFor,
  parseSeverity,
  sortFindings,
  summarize,
  type Finding,
  type Severity,
} from '../../src/doctor/severity.js';

const NOW = new Date('2026-06-01T00:00:00Z');

function finding(id: string, severity: Severity): Finding {
  return { id, severity, title: id, detail: `${id} detail`, advice: `${id} advice` };
}

/** A minimal read-only role on PostgreSQL 18 over verified TLS: no finding but the pin. */
function baseFacts(over: Partial<DoctorFacts> = {}): DoctorFacts {
  return {
    server: { versionNum: 180001, version: '18.1' },
    connection: {
      target: 'db.internal:5432',
      unixSocket: false,
      local: false,
      sslmode: 'verify-full',
      sslrootcert: true,
      tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' },
      authMode: 'passthrough',
    },
    role: {
      name: 'agent_ro',
      database: 'shop',
      superuser: false,
      createrole: false,
      createdb: false,
      replication: false,
      bypassrls: false,
    },
    ...nothingFoundYet(),
    pin: PIN_OK,
    errors: [],
    ...over,
  };
}

const PIN_OK: PinFacts = {
  defaultReadOnly: 'on',
  standardConformingStrings: 'on',
  transactionReadOnly: 'on',
  writeSqlState: '25006',
  writeError: 'cannot execute CREATE TABLE in a read-only transaction',
};

function ids(findings: readonly Finding[]): Array<[string, Severity]> {
  return findings.map((f) => [f.id, f.severity]);
}

describe('severities and exit codes', () => {
  const cases: Array<{ severities: Severity[]; failOn: Severity; code: 0 | 1 }> = [
    { severities: [], failOn: 'info', code: 0 },
    { severities: ['info'], failOn: 'info', code: 1 },
    { severities: ['info', 'low'], failOn: 'medium', code: 0 },
    { severities: ['medium'], failOn: 'medium', code: 1 },
    { severities: ['high', 'low'], failOn: 'high', code: 1 },
    { severities: ['high'], failOn: 'critical', code: 0 },
    { severities: ['critical'], failOn: 'critical', code: 1 },
  ];
  for (const c of cases) {
    test(`[${c.severities.join(', ')}] with --fail-on ${c.failOn} exits ${c.code}`, () => {
      const findings = c.severities.map((s, i) => finding(`f${i}`, s));
      assert.equal(exitCodeFor(findings, c.failOn), c.code);
      assert.equal(summarize(findings, c.failOn).exitCode, c.code);
    });
  }

  test('summary counts every severity and names the highest', () => {
    const s = summarize([finding('a', 'low'), finding('b', 'high'), finding('c', 'low')], 'critical');
    assert.deepEqual(s.counts, { info: 0, low: 2, medium: 0, high: 1, critical: 0 });
    assert.equal(s.highest, 'high');
    assert.equal(summarize([], 'high').highest, null);
  });

  test('findings sort most severe first, then by id', () => {
    const sorted = sortFindings([finding('b', 'low'), finding('z', 'critical'), finding('a', 'low')]);
    assert.deepEqual(
      sorted.map((f) => f.id),
      ['z', 'a', 'b'],
    );
  });

  for (const [text, want] of [
    ['high', 'high'],
    ['CRITICAL', 'critical'],
    [' info ', 'info'],
  ] as const) {
    test(`--fail-on "${text}" is ${want}`, () => assert.equal(parseSeverity(text), want));
  }
  test('an unknown --fail-on names the choices', () => {
    assert.throws(
      () => parseSeverity('severe'),
      (err: Error) => {
        assert.ok(err instanceof ConfigError);
        assert.match(err.message, /info, low, medium, high, critical/);
        return true;
      },
    );
  });
});

describe('grading', () => {
  const serverCases: Array<{ num: number; version: string; want: Array<[string, Severity]> }> = [
    { num: 130015, version: '13.15', want: [['server-unsupported', 'critical']] },
    { num: 140010, version: '14.10', want: [] },
    { num: 180001, version: '18.1', want: [] },
  ];
  for (const c of serverCases) {
    test(`PostgreSQL ${c.version} on ${NOW.toISOString().slice(0, 10)}`, () => {
      assert.deepEqual(ids(gradeServer({ versionNum: c.num, version: c.version }, NOW)), c.want);
    });
  }
  test('a major past its end of life is info', () => {
    const after = new Date('2026-12-01T00:00:00Z');
    assert.deepEqual(ids(gradeServer({ versionNum: 140010, version: '14.10' }, after)), [
      ['server-eol', 'info'],
    ]);
  });

  const conn = baseFacts().connection;
  const connectionCases: Array<{ name: string; c: Partial<typeof conn>; want: Array<[string, Severity]> }> = [
    { name: 'verified TLS', c: {}, want: [] },
    {
      name: 'no TLS over the network',
      c: { tls: undefined, sslmode: 'prefer' },
      want: [['tls-off', 'medium']],
    },
    { name: 'no TLS on loopback', c: { tls: undefined, local: true, sslmode: 'disable' }, want: [] },
    { name: 'a Unix socket', c: { tls: undefined, unixSocket: true, local: true }, want: [] },
    {
      name: 'unverified TLS, passthrough',
      c: { sslmode: 'require', sslrootcert: false },
      want: [['tls-unverified', 'low']],
    },
    {
      name: 'unverified TLS, proxy-managed logins',
      c: { sslmode: 'prefer', sslrootcert: false, authMode: 'proxy' },
      want: [['tls-unverified', 'medium']],
    },
    { name: 'require with sslrootcert (verify-ca)', c: { sslmode: 'require', sslrootcert: true }, want: [] },
  ];
  for (const c of connectionCases) {
    test(`connection: ${c.name}`, () => assert.deepEqual(ids(gradeConnection({ ...conn, ...c.c })), c.want));
  }

  const role = baseFacts().role;
  const roleCases: Array<{
    name: string;
    r: Partial<typeof role>;
    major?: number;
    want: Array<[string, Severity]>;
  }> = [
    { name: 'plain', r: {}, want: [] },
    {
      name: 'superuser (its other attributes add nothing)',
      r: { superuser: true, createrole: true, createdb: true, replication: true, bypassrls: true },
      want: [['role-superuser', 'critical']],
    },
    {
      name: 'every attribute but superuser',
      r: { createrole: true, createdb: true, replication: true, bypassrls: true },
      want: [
        ['role-createrole', 'high'],
        ['role-replication', 'high'],
        ['role-bypassrls', 'medium'],
        ['role-createdb', 'medium'],
      ],
    },
  ];
  for (const c of roleCases) {
    test(`role: ${c.name}`, () =>
      assert.deepEqual(ids(gradeRole({ ...role, ...c.r }, c.major ?? 18)), c.want));
  }
  test('CREATEROLE before 16 is called nearly a superuser', () => {
    const [f] = gradeRole({ ...role, createrole: true }, 15);
    assert.match(f!.detail, /nearly a superuser/);
  });

  const m = (over: Partial<MembershipFact>): MembershipFact => ({
    role: 'r',
    inherited: true,
    canSet: true,
    superuser: false,
    createrole: false,
    createdb: false,
    replication: false,
    bypassrls: false,
    ...over,
  });
  const membershipCases: Array<{ name: string; m: MembershipFact; want: Array<[string, Severity]> }> = [
    {
      name: 'pg_execute_server_program',
      m: m({ role: 'pg_execute_server_program' }),
      want: [['member-pg_execute_server_program', 'critical']],
    },
    {
      name: 'pg_write_server_files',
      m: m({ role: 'pg_write_server_files' }),
      want: [['member-pg_write_server_files', 'critical']],
    },
    {
      name: 'pg_read_server_files',
      m: m({ role: 'pg_read_server_files' }),
      want: [['member-pg_read_server_files', 'high']],
    },
    {
      name: 'pg_write_all_data',
      m: m({ role: 'pg_write_all_data' }),
      want: [['member-pg_write_all_data', 'high']],
    },
    {
      name: 'pg_signal_backend',
      m: m({ role: 'pg_signal_backend' }),
      want: [['member-pg_signal_backend', 'medium']],
    },
    {
      name: 'pg_read_all_data',
      m: m({ role: 'pg_read_all_data' }),
      want: [['member-pg_read_all_data', 'low']],
    },
    { name: 'pg_monitor', m: m({ role: 'pg_monitor' }), want: [['member-pg_monitor', 'low']] },
    {
      name: 'pg_read_all_settings',
      m: m({ role: 'pg_read_all_settings' }),
      want: [['member-pg_read_all_settings', 'info']],
    },
    {
      name: 'a predefined role neither inherited nor settable',
      m: m({ role: 'pg_write_all_data', inherited: false, canSet: false }),
      want: [['member-pg_write_all_data', 'info']],
    },
    {
      name: 'a predefined role it can SET ROLE to',
      m: m({ role: 'pg_write_all_data', inherited: false, canSet: true }),
      want: [['member-pg_write_all_data', 'high']],
    },
    {
      name: 'an unknown predefined role',
      m: m({ role: 'pg_future_thing' }),
      want: [['member-pg_future_thing', 'info']],
    },
    { name: 'a plain group role', m: m({ role: 'readers' }), want: [] },
    {
      name: 'a superuser role',
      m: m({ role: 'admin', superuser: true }),
      want: [['member-superuser-role', 'critical']],
    },
    {
      name: 'a superuser role without SET',
      m: m({ role: 'admin', superuser: true, canSet: false, inherited: false }),
      want: [['member-superuser-role', 'low']],
    },
    {
      name: 'a CREATEROLE role',
      m: m({ role: 'ops', createrole: true }),
      want: [['member-powerful-role', 'high']],
    },
    {
      name: 'a CREATEDB role',
      m: m({ role: 'dev', createdb: true }),
      want: [['member-powerful-role', 'medium']],
    },
  ];
  for (const c of membershipCases) {
    test(`membership: ${c.name}`, () => assert.deepEqual(ids(gradeMemberships('agent_ro', [c.m])), c.want));
  }

  const grantCases: Array<{ name: string; f: Partial<DoctorFacts>; want: Array<[string, Severity]> }> = [
    {
      name: 'INSERT on a table',
      f: { tableGrants: [{ name: 'public.orders', kind: 'r', privileges: ['INSERT'] }] },
      want: [['table-write', 'high']],
    },
    {
      name: 'TRIGGER on a view',
      f: { tableGrants: [{ name: 'public.v', kind: 'v', privileges: ['TRIGGER'] }] },
      want: [['table-write', 'high']],
    },
    {
      name: 'MAINTAIN only',
      f: { tableGrants: [{ name: 'public.t', kind: 'r', privileges: ['MAINTAIN'] }] },
      want: [['table-maintain', 'medium']],
    },
    {
      name: 'sequence USAGE',
      f: { sequenceGrants: [{ name: 'public.s', privileges: ['USAGE'] }] },
      want: [['sequence-write', 'medium']],
    },
    { name: 'CREATE on public', f: { schemaCreate: ['public'] }, want: [['schema-create', 'medium']] },
    { name: 'CREATE on the database', f: { databaseCreate: true }, want: [['database-create', 'medium']] },
    {
      name: 'owns a table',
      f: { owned: [{ kind: 'table', name: 'public.t' }] },
      want: [['owns-objects', 'high']],
    },
    {
      name: 'lo_compat_privileges',
      f: { loCompatPrivileges: true },
      want: [['lo-compat-privileges', 'high']],
    },
    { name: 'large objects granted', f: { largeObjectsGranted: 3 }, want: [['largeobject-write', 'medium']] },
  ];
  for (const c of grantCases) {
    test(`grants: ${c.name}`, () => {
      const all = ids(grade(baseFacts(c.f), NOW)).filter(([id]) => id !== 'pin-holds');
      assert.deepEqual(all, c.want);
    });
  }

  const extensionCases: Array<{ name: string; usable: boolean; want: Array<[string, Severity]> }> = [
    { name: 'dblink', usable: true, want: [['extension-dblink', 'high']] },
    { name: 'dblink', usable: false, want: [['extension-dblink', 'low']] },
    { name: 'postgres_fdw', usable: true, want: [['extension-postgres_fdw', 'high']] },
    { name: 'file_fdw', usable: false, want: [['extension-file_fdw', 'low']] },
    { name: 'adminpack', usable: true, want: [['extension-adminpack', 'high']] },
    { name: 'oracle_fdw', usable: true, want: [['extension-oracle_fdw', 'high']] },
    { name: 'pgcrypto', usable: true, want: [] },
    { name: 'plpgsql', usable: true, want: [] },
  ];
  for (const c of extensionCases) {
    test(`extension ${c.name}, ${c.usable ? 'usable' : 'not usable'}`, () => {
      assert.deepEqual(ids(gradeExtensions([{ name: c.name, version: '1.0', usable: c.usable }])), c.want);
    });
  }

  const languageCases: Array<{
    name: string;
    trusted: boolean;
    functions: number;
    superuser: boolean;
    want: Array<[string, Severity]>;
  }> = [
    { name: 'plpgsql', trusted: true, functions: 5, superuser: false, want: [] },
    {
      name: 'plpython3u',
      trusted: false,
      functions: 1,
      superuser: false,
      want: [['untrusted-language-plpython3u', 'high']],
    },
    {
      name: 'plperlu',
      trusted: false,
      functions: 0,
      superuser: false,
      want: [['untrusted-language-plperlu', 'medium']],
    },
    {
      name: 'pltclu',
      trusted: false,
      functions: 0,
      superuser: true,
      want: [['untrusted-language-pltclu', 'high']],
    },
  ];
  for (const c of languageCases) {
    test(`language ${c.name} (${c.functions} functions, superuser ${c.superuser})`, () => {
      const lang = { name: c.name, trusted: c.trusted, executableFunctions: c.functions };
      assert.deepEqual(ids(gradeLanguages([lang], c.superuser)), c.want);
    });
  }

  test('SECURITY DEFINER functions are graded by owner', () => {
    const fn = { ownerSuperuser: false, ownedBySelf: false, setsSearchPath: true };
    const found = gradeSecurityDefiner([
      { ...fn, name: 'app.a()', owner: 'postgres', ownerSuperuser: true, setsSearchPath: false },
      { ...fn, name: 'app.b()', owner: 'app_owner' },
      { ...fn, name: 'app.c()', owner: 'agent_ro', ownedBySelf: true },
    ]);
    assert.deepEqual(ids(found), [
      ['security-definer-superuser', 'high'],
      ['security-definer', 'medium'],
      ['security-definer-own', 'low'],
    ]);
    assert.match(found[0]!.detail, /app\.a\(\) owned by postgres, no SET search_path/);
    assert.deepEqual(found[1]!.objects, ['app.b()']);
  });

  test('settings that undo the pin are info', () => {
    assert.deepEqual(ids(gradeSettingOverrides([])), []);
    const found = gradeSettingOverrides([
      { scope: 'ALTER ROLE agent_ro', name: 'default_transaction_read_only', value: 'off' },
    ]);
    assert.deepEqual(ids(found), [['setting-override', 'info']]);
    assert.match(found[0]!.detail, /ALTER ROLE agent_ro: default_transaction_read_only = off/);
  });

  const pinCases: Array<{ name: string; pin: Partial<PinFacts>; want: Array<[string, Severity]> }> = [
    { name: 'holds', pin: {}, want: [['pin-holds', 'info']] },
    {
      name: 'default off',
      pin: { defaultReadOnly: 'off', transactionReadOnly: 'off', writeSqlState: undefined },
      want: [['pin-failed', 'critical']],
    },
    { name: 'write accepted', pin: { writeSqlState: undefined }, want: [['pin-failed', 'critical']] },
    {
      name: 'write refused for another reason',
      pin: { writeSqlState: '42501', writeError: 'permission denied' },
      want: [['pin-failed', 'critical']],
    },
    {
      name: 'standard_conforming_strings off',
      pin: { standardConformingStrings: 'off' },
      want: [['pin-failed', 'critical']],
    },
  ];
  for (const c of pinCases) {
    test(`pin: ${c.name}`, () => assert.deepEqual(ids(gradePin({ ...PIN_OK, ...c.pin })), c.want));
  }
  test('a pin check that could not run gives no pin finding, and the failed check is low', () => {
    const found = grade(baseFacts({ pin: undefined, errors: [{ check: 'pin', message: 'boom' }] }), NOW);
    assert.deepEqual(ids(found), [['check-failed-pin', 'low']]);
  });

  test('a minimal read-only role over verified TLS gets only "pin holds"', () => {
    assert.deepEqual(ids(grade(baseFacts(), NOW)), [['pin-holds', 'info']]);
  });

  test('grade() sorts most severe first', () => {
    const found = grade(
      baseFacts({
        schemaCreate: ['public'],
        role: { ...baseFacts().role, superuser: true },
        extensions: [{ name: 'dblink', version: '1.2', usable: true }],
      }),
      NOW,
    );
    assert.deepEqual(ids(found), [
      ['role-superuser', 'critical'],
      ['extension-dblink', 'high'],
      ['schema-create', 'medium'],
      ['pin-holds', 'info'],
    ]);
  });
});

describe('text helpers', () => {
  test('listSome names up to the limit', () => {
    assert.equal(listSome(['a', 'b']), 'a, b');
    assert.equal(listSome(['a', 'b', 'c', 'd'], 2), 'a, b and 2 more');
  });
  for (const [name, want] of [
    ['agent_ro', 'agent_ro'],
    ['Agent', '"Agent"'],
    ['a"b', '"a""b"'],
    ['my role', '"my role"'],
  ] as const) {
    test(`quoteIdent(${name})`, () => assert.equal(quoteIdent(name), want));
  }
  test('wrap keeps lines within the width, indented', () => {
    const text = 'one two three four five six seven eight nine ten';
    const out = wrap(text, 20, '  ');
    for (const line of out.split('\n')) {
      assert.ok(line.length <= 20, line);
      assert.ok(line.startsWith('  '));
    }
    assert.equal(out.replace(/\s+/g, ' ').trim(), text);
  });
});

describe('sslmode → node-postgres', () => {
  const target = (sslmode: UpstreamTarget['tls']['sslmode'], host = 'db.internal'): UpstreamTarget => ({
    host,
    port: 5432,
    tls: { sslmode, sslnegotiation: 'postgres' },
  });
  const cases: Array<{ sslmode: UpstreamTarget['tls']['sslmode']; host?: string; want: string[] }> = [
    { sslmode: 'disable', want: ['plain'] },
    { sslmode: 'allow', want: ['plain', 'tls-unchecked'] },
    { sslmode: 'prefer', want: ['tls-unchecked', 'plain'] },
    { sslmode: 'require', want: ['tls-unchecked'] },
    { sslmode: 'prefer', host: '/var/run/postgresql', want: ['plain'] },
    { sslmode: 'require', host: '/var/run/postgresql', want: ['plain'] },
  ];
  for (const c of cases) {
    test(`${c.sslmode}${c.host ? ` on ${c.host}` : ''}: ${c.want.join(' then ')}`, () => {
      const got = pgSslAttempts(target(c.sslmode, c.host)).map((a) =>
        a === false ? 'plain' : a.rejectUnauthorized ? 'tls-checked' : 'tls-unchecked',
      );
      assert.deepEqual(got, c.want);
    });
  }
  test('verify-full with sslrootcert system checks the chain and the name', () => {
    const [opts] = pgSslAttempts({
      host: 'db.internal',
      port: 5432,
      tls: { sslmode: 'verify-full', sslrootcert: 'system', sslnegotiation: 'postgres' },
    });
    assert.ok(opts);
    assert.equal(opts.rejectUnauthorized, true);
    // The trusted CAs are in a TLS context built once for this set of files.
    assert.ok(opts.secureContext, 'a secure context');
    const [again] = pgSslAttempts({
      host: 'db.internal',
      port: 5432,
      tls: { sslmode: 'verify-full', sslrootcert: 'system', sslnegotiation: 'postgres' },
    });
    assert.ok(again && again.secureContext === opts.secureContext, 'the same context, not rebuilt');
    assert.equal(opts.checkServerIdentity, undefined, "Node's own name check");
    assert.deepEqual(opts.ALPNProtocols, ['postgresql']);
  });
  test('the session is pinned as the proxy pins it', () => {
    const o = pinnedOptions(1000);
    assert.match(o, /-c default_transaction_read_only=on/);
    assert.match(o, /-c standard_conforming_strings=on/);
    assert.match(o, /-c statement_timeout=1000/);
  });
  for (const [host, local] of [
    ['127.0.0.1', true],
    ['127.1.2.3', true],
    ['::1', true],
    ['localhost', true],
    ['/tmp', true],
    ['10.0.0.5', false],
    ['db.internal', false],
  ] as const) {
    test(`${host} is ${local ? '' : 'not '}local`, () => assert.equal(isLoopback(host), local));
  }
});

describe('report', () => {
  const facts = baseFacts({
    role: { ...baseFacts().role, proxyUser: 'agent' },
    tableGrants: [{ name: 'public.orders', kind: 'r', privileges: ['INSERT', 'UPDATE'] }],
    schemaCreate: ['public'],
  });
  const report = buildReport(facts, grade(facts, NOW), 'high');

  test('JSON has server, role, findings and summary', () => {
    const parsed = JSON.parse(formatJson(report)) as Record<string, unknown>;
    assert.deepEqual(Object.keys(parsed), ['server', 'role', 'findings', 'summary']);
    assert.deepEqual(parsed.server, {
      version: '18.1',
      versionNum: 180001,
      target: 'db.internal:5432',
      sslmode: 'verify-full',
      tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' },
    });
    assert.equal((parsed.role as { proxyUser: string }).proxyUser, 'agent');
    assert.deepEqual(
      (parsed.findings as Finding[]).map((f) => f.id),
      ['table-write', 'schema-create', 'pin-holds'],
    );
    assert.deepEqual(parsed.summary, {
      counts: { info: 1, low: 0, medium: 1, high: 1, critical: 0 },
      highest: 'high',
      failOn: 'high',
      exitCode: 1,
    });
  });

  test('text groups by severity, most severe first, and ends with the summary', () => {
    const text = formatText(report);
    const lines = text.trimEnd().split('\n');
    assert.equal(lines[0], 'pg-readonly-proxy doctor');
    assert.match(lines[1]!, /PostgreSQL 18\.1 at db\.internal:5432 \(TLS TLSv1\.3 .*, sslmode verify-full\)/);
    assert.match(lines[2]!, /"agent_ro" \(for proxy user "agent"\) in database "shop"/);
    const headings = lines.filter((l) => /^[A-Z]+ \(\d+\)$/.test(l));
    assert.deepEqual(headings, ['HIGH (1)', 'MEDIUM (1)', 'INFO (1)']);
    assert.ok(text.indexOf('[table-write]') < text.indexOf('[schema-create]'));
    assert.match(text, /public\.orders \(INSERT, UPDATE\)/);
    assert.equal(
      lines.at(-1),
      'Summary: 0 critical, 1 high, 1 medium, 0 low, 1 info; fails: findings at high or above (exit 1).',
    );
    for (const line of lines) assert.ok(!line.startsWith('      ') || line.length <= 100, line);
  });

  test('summary line when nothing fails', () => {
    assert.equal(
      formatSummary(summarize([finding('x', 'low')], 'medium')),
      'Summary: 0 critical, 0 high, 0 medium, 1 low, 0 info; nothing at medium or above (exit 0).',
    );
  });
});
