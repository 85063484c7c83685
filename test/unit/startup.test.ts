import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { createPolicy, loadParser, type Policy } from '../../src/policy/index.js';
import { SqlState } from '../../src/protocol/sqlstate.js';
import {
  PINNED_SETTINGS,
  parseOptionSwitches,
  sanitiseStartup,
  splitOptions,
} from '../../src/session/startup.js';

let policy: Policy;
let limited: Policy;
before(async () => {
  await loadParser();
  policy = createPolicy();
  limited = createPolicy({ settingLimits: { statement_timeout: 30000 } });
});

describe('splitOptions (pg_split_opts)', () => {
  const cases: Array<[string, string, string[]]> = [
    ['empty', '', []],
    ['only spaces', ' \t \n ', []],
    ['one word', '-cfoo=bar', ['-cfoo=bar']],
    ['several spaces between', '-c   a=b', ['-c', 'a=b']],
    ['leading and trailing space', '  -c a=b  ', ['-c', 'a=b']],
    ['tabs, newlines, CR, FF, VT split', '-c\ta=b\nx\ry\fz\vw', ['-c', 'a=b', 'x', 'y', 'z', 'w']],
    ['escaped space joins', '-c search_path=a\\ b', ['-c', 'search_path=a b']],
    ['escaped tab joins', 'a\\\tb', ['a\tb']],
    ['escaped backslash', 'a\\\\b', ['a\\b']],
    ['escaped backslash then space splits', 'a\\\\ b', ['a\\', 'b']],
    ['backslash before an ordinary char', '\\a\\b', ['ab']],
    ['escaped space at the start of an arg', '\\ -c', [' -c']],
    ['non-ASCII', '-c application_name=zoë\\ 日本', ['-c', 'application_name=zoë 日本']],
  ];
  for (const [name, input, want] of cases) {
    test(name, () => assert.deepEqual(splitOptions(input), want));
  }

  // pg_split_opts sets last_was_escape on a final backslash and never appends it:
  // "a\" is the argument "a", and a lone "\" an empty argument.
  test('trailing backslash is dropped, as PostgreSQL does', () => {
    assert.deepEqual(splitOptions('-c a=b\\'), ['-c', 'a=b']);
    assert.deepEqual(splitOptions('x \\'), ['x', '']);
  });
});

describe('parseOptionSwitches', () => {
  type Want = Array<[string, string]> | { refused: string };
  const cases: Array<[string, Want]> = [
    ['-c a=b', [['a', 'b']]],
    ['-ca=b', [['a', 'b']]],
    ['--a-b=c', [['a_b', 'c']]],
    ['-c a-b=c', [['a_b', 'c']]],
    ['-c a=b-c', [['a', 'b-c']]],
    ['-c a=', [['a', '']]],
    ['-c a=b=c', [['a', 'b=c']]],
    [
      '-c x.y=1 --z=2 -cw=3',
      [
        ['x.y', '1'],
        ['z', '2'],
        ['w', '3'],
      ],
    ],
    ['-c search_path=a\\ b', [['search_path', 'a b']]],
    ['', []],
    ['-c', { refused: '-c' }],
    ['-c a=b -c', { refused: '-c' }],
    ['-c ab', { refused: '-c' }],
    ['-c =b', { refused: '-c' }],
    ['-F', { refused: '-F' }],
    ['-B 100', { refused: '-B' }],
    ['-e', { refused: '-e' }],
    ['--x', { refused: '--x' }],
    ['--', { refused: '--' }],
    ['--=x', { refused: '--=x' }],
    ['foo', { refused: 'foo' }],
    ['-c a=b stray', { refused: 'stray' }],
  ];
  for (const [input, want] of cases) {
    test(JSON.stringify(input), () => {
      const got = parseOptionSwitches(input);
      if (Array.isArray(want)) assert.deepEqual(got, { ok: true, settings: want });
      else assert.deepEqual(got, { ok: false, arg: want.refused });
    });
  }
});

const P = (entries: Record<string, string>): Map<string, string> => new Map(Object.entries(entries));

function upstreamOf(params: Map<string, string>, pol = policy): Array<[string, string]> {
  const r = sanitiseStartup(params, pol);
  assert.ok(r.ok, `refused: ${!r.ok && JSON.stringify(r.refusal)}`);
  return r.ok ? r.startup.upstreamParams : [];
}

/** The pinned settings come last, once each, and the client never supplies its own copy. */
function assertPinned(up: Array<[string, string]>): void {
  // Pinned settings come after every client key and the options (PostgreSQL applies keys after options).
  const pinnedAt = up.findIndex(([k]) => k === 'default_transaction_read_only');
  assert.deepEqual(up.slice(pinnedAt, pinnedAt + 2), [
    ['default_transaction_read_only', 'on'],
    ['standard_conforming_strings', 'on'],
  ]);
  assert.ok(up.slice(pinnedAt + 2).every(([k]) => k !== 'options'));
  for (const [k, v] of up) {
    const lower = k.toLowerCase();
    if (lower === 'default_transaction_read_only' || lower === 'standard_conforming_strings') {
      assert.equal(k, lower);
      assert.equal(v, 'on');
    }
  }
  assert.equal(up.filter(([k]) => k.toLowerCase() === 'default_transaction_read_only').length, 1);
  assert.equal(up.filter(([k]) => k.toLowerCase() === 'standard_conforming_strings').length, 1);
  const options = up.find(([k]) => k === 'options')?.[1];
  if (options !== undefined) {
    const parsed = parseOptionSwitches(options);
    assert.ok(parsed.ok);
    for (const [n] of parsed.ok ? parsed.settings : []) {
      assert.notEqual(n, 'default_transaction_read_only');
      assert.notEqual(n, 'standard_conforming_strings');
    }
  }
}

test('PINNED_SETTINGS are the two guarantees the proxy relies on', () => {
  assert.deepEqual(
    PINNED_SETTINGS.map(([k, v]) => [k, v]),
    [
      ['default_transaction_read_only', 'on'],
      ['standard_conforming_strings', 'on'],
    ],
  );
});

describe('sanitiseStartup: refusals', () => {
  const protectedCase = 'startup_protected_setting';
  const refusals: Array<[string, Record<string, string>, string, string?]> = [
    ['options -c', { options: '-c default_transaction_read_only=off' }, protectedCase],
    ['options --dashed', { options: '--default-transaction-read-only=off' }, protectedCase],
    ['options --underscored', { options: '--default_transaction_read_only=off' }, protectedCase],
    ['options -cname=value', { options: '-cdefault_transaction_read_only=off' }, protectedCase],
    ['options -c name with dashes', { options: '-c default-transaction-read-only=off' }, protectedCase],
    ['options upper case', { options: '-c DEFAULT_TRANSACTION_READ_ONLY=off' }, protectedCase],
    ['options mixed case', { options: '-c Default_Transaction_Read_Only=0' }, protectedCase],
    ['options second of two', { options: '-c a.b=1 -c transaction_read_only=off' }, protectedCase],
    [
      'options escaped spaces smuggling a switch into a value',
      { options: '-c default_transaction_read_only=off\\ -c\\ x=y' },
      protectedCase,
    ],
    [
      'options escaped space before the name',
      { options: '-c\\ default_transaction_read_only=off' },
      'startup_invalid_setting',
    ],
    ['options escaped space in the name', { options: '-c default\\ x=off' }, 'startup_invalid_setting'],
    ['own key', { default_transaction_read_only: 'off' }, protectedCase],
    ['own key, upper case', { DEFAULT_TRANSACTION_READ_ONLY: 'off' }, protectedCase],
    ['own key, yes-ish but not on', { default_transaction_read_only: 'of' }, protectedCase],
    ['transaction_read_only key', { transaction_read_only: 'false' }, protectedCase],
    ['replication key', { replication: 'database' }, 'startup_replication'],
    ['replication key, true', { replication: 'true' }, 'startup_replication'],
    ['role key', { role: 'postgres' }, protectedCase],
    ['role in options', { options: '-c role=postgres' }, protectedCase],
    ['session_authorization key', { session_authorization: 'postgres' }, protectedCase],
    ['session_authorization in options', { options: '--session-authorization=postgres' }, protectedCase],
    ['standard_conforming_strings=off key', { standard_conforming_strings: 'off' }, protectedCase],
    [
      'standard_conforming_strings=off options',
      { options: '-c standard_conforming_strings=off' },
      protectedCase,
    ],
    ['client_encoding=SJIS', { client_encoding: 'SJIS' }, protectedCase],
    ['client_encoding=Shift-JIS', { client_encoding: 'Shift-JIS' }, protectedCase],
    ['client_encoding=BIG5', { client_encoding: 'BIG5' }, protectedCase],
    ['client_encoding=gbk in options', { options: '-c client_encoding=gbk' }, protectedCase],
    ['frozen setting zero_damaged_pages', { zero_damaged_pages: 'on' }, protectedCase],
    ['log_statement in options', { options: '-c log_statement=none' }, protectedCase],
    ['an unknown switch', { options: '-F' }, 'startup_options_switch'],
    ['-c without a value', { options: '-c' }, 'startup_options_switch'],
    ['--x without =', { options: '--x' }, 'startup_options_switch'],
    ['a key that is no setting name', { 'a b': 'c' }, 'startup_invalid_setting'],
    ['a key with a quote', { 'x"y': 'c' }, 'startup_invalid_setting'],
  ];
  for (const [name, extra, event] of refusals) {
    test(name, () => {
      const r = sanitiseStartup(P({ user: 'alice', database: 'shop', ...extra }), policy);
      assert.equal(r.ok, false);
      if (r.ok) return;
      assert.equal(r.refusal.event, event, JSON.stringify(r.refusal));
      assert.match(r.refusal.sqlstate, /^(42501|08P01)$/);
      assert.ok(r.refusal.message.length > 0);
      if (event === protectedCase) assert.equal(r.refusal.sqlstate, SqlState.InsufficientPrivilege);
    });
  }

  test('missing or empty user', () => {
    for (const params of [P({ database: 'shop' }), P({ user: '' })]) {
      const r = sanitiseStartup(params, policy);
      assert.equal(r.ok, false);
      if (!r.ok) {
        assert.equal(r.refusal.event, 'startup_no_user');
        assert.equal(r.refusal.sqlstate, SqlState.InvalidAuthorizationSpecification);
      }
    }
  });
});

describe('sanitiseStartup: allowed', () => {
  const allowed: Array<[string, Record<string, string>]> = [
    ['nothing extra', {}],
    ['application_name', { application_name: 'psql' }],
    ['harmless keys', { DateStyle: 'ISO, MDY', TimeZone: 'UTC', extra_float_digits: '3' }],
    ['client_encoding UTF8', { client_encoding: 'UTF8' }],
    ['client_encoding LATIN1', { client_encoding: 'LATIN1' }],
    ['search_path in options', { options: '-c search_path=public,other' }],
    ['an escaped space in a value', { options: '-c application_name=a\\ b' }],
    ['options with several switches', { options: '-cgeqo=off --work-mem=4MB -c datestyle=ISO' }],
    ['default_transaction_read_only=on key (pinned anyway)', { default_transaction_read_only: 'on' }],
    ['DEFAULT_TRANSACTION_READ_ONLY=ON key', { DEFAULT_TRANSACTION_READ_ONLY: 'ON' }],
    ['standard_conforming_strings=on in options', { options: '-c standard_conforming_strings=true' }],
    ['default_transaction_read_only=on in options', { options: '--default-transaction-read-only=yes' }],
    ['role none', { options: '-c role=none' }],
  ];
  for (const [name, extra] of allowed) {
    test(name, () => {
      const up = upstreamOf(P({ user: 'alice', database: 'shop', ...extra }));
      assert.deepEqual(up.slice(0, 2), [
        ['user', 'alice'],
        ['database', 'shop'],
      ]);
      assertPinned(up);
    });
  }

  test('upstream params in order: user, database, keys, options, pinned', () => {
    const up = upstreamOf(
      P({
        user: 'alice',
        application_name: 'app',
        options: '-c search_path=a\\ b --geqo=off -c default_transaction_read_only=on',
        TimeZone: 'UTC',
      }),
    );
    assert.deepEqual(up, [
      ['user', 'alice'],
      ['database', 'alice'],
      ['application_name', 'app'],
      ['TimeZone', 'UTC'],
      ['options', '-c search_path=a\\ b -c geqo=off'],
      ['default_transaction_read_only', 'on'],
      ['standard_conforming_strings', 'on'],
    ]);
  });

  test('the forwarded options parse back to exactly what was judged', () => {
    const tricky = '-c application_name=x\\ -c\\ default_transaction_read_only=off\\\\ -c search_path=a\\\tb';
    const judged = parseOptionSwitches(tricky);
    assert.ok(judged.ok);
    const up = upstreamOf(P({ user: 'u', options: tricky }));
    const forwarded = up.find(([k]) => k === 'options')?.[1];
    assert.ok(forwarded !== undefined);
    assert.deepEqual(parseOptionSwitches(forwarded), judged);
    assert.deepEqual(judged.ok && judged.settings[0], [
      'application_name',
      'x -c default_transaction_read_only=off\\',
    ]);
  });

  test('database defaults to user (also when empty)', () => {
    for (const params of [P({ user: 'bob' }), P({ user: 'bob', database: '' })]) {
      const r = sanitiseStartup(params, policy);
      assert.ok(r.ok);
      if (r.ok) {
        assert.equal(r.startup.user, 'bob');
        assert.equal(r.startup.database, 'bob');
      }
    }
  });

  test('_pq_ protocol options are collected, not forwarded', () => {
    const r = sanitiseStartup(P({ user: 'u', '_pq_.foo': 'x', '_pq_.bar': '' }), policy);
    assert.ok(r.ok);
    if (!r.ok) return;
    assert.deepEqual(r.startup.unsupportedProtocolOptions, ['_pq_.foo', '_pq_.bar']);
    assert.ok(r.startup.upstreamParams.every(([k]) => !k.startsWith('_pq_')));
  });
});

describe('sanitiseStartup: operator setting limits', () => {
  test('pinned when the client did not set it', () => {
    const up = upstreamOf(P({ user: 'u' }), limited);
    assert.deepEqual(
      up.filter(([k]) => k === 'statement_timeout'),
      [['statement_timeout', '30000']],
    );
    assertPinned(up);
  });

  const lower: Array<[string, Record<string, string>, Array<[string, string]>]> = [
    ['own key', { statement_timeout: '1000' }, [['statement_timeout', '1000']]],
    ['own key with a unit', { statement_timeout: '10s' }, [['statement_timeout', '10s']]],
    ['own key, upper case', { STATEMENT_TIMEOUT: '5000' }, [['STATEMENT_TIMEOUT', '5000']]],
    ['options', { options: '-c statement_timeout=2000' }, [['options', '-c statement_timeout=2000']]],
    [
      'options, dashed',
      { options: '--statement-timeout=30000' },
      [['options', '-c statement_timeout=30000']],
    ],
  ];
  for (const [name, extra, want] of lower) {
    test(`a client's lower value is kept: ${name}`, () => {
      const up = upstreamOf(P({ user: 'u', ...extra }), limited);
      assert.deepEqual(
        up.filter(([k, v]) => k.toLowerCase() === 'statement_timeout' || v.includes('statement_timeout')),
        want,
      );
    });
  }

  for (const value of ['30001', '1min', '0', '-1', 'abc', '']) {
    test(`a client's value ${JSON.stringify(value)} beyond the limit is refused`, () => {
      for (const params of [
        P({ user: 'u', statement_timeout: value }),
        P({ user: 'u', options: `-c statement_timeout=${value}` }),
      ]) {
        const r = sanitiseStartup(params, limited);
        assert.equal(r.ok, false, JSON.stringify([...params]));
        if (!r.ok) assert.equal(r.refusal.event, 'startup_protected_setting');
      }
    });
  }

  test('without limits, no statement_timeout is added', () => {
    const up = upstreamOf(P({ user: 'u' }));
    assert.ok(up.every(([k]) => k !== 'statement_timeout'));
  });
});
