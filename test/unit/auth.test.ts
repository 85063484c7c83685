/**
 * src/auth: SASLprep, SCRAM-SHA-256(-PLUS) both sides, MD5, tls-server-end-point.
 * The SCRAM checks are pinned to RFC 7677's example and to an independent
 * computation here; PostgreSQL itself is the judge in
 * test/integration/scram-interop.test.ts.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, createHmac, pbkdf2Sync, randomBytes, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { endPointHashName, tlsServerEndPoint } from '../../src/auth/channel-binding.js';
import { createMd5Verifier, isMd5Verifier, md5Check, md5Response } from '../../src/auth/md5.js';
import { saslprep } from '../../src/auth/saslprep.js';
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

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const MOCK_SECRET = Buffer.from('a mock secret of the proxy, 32 b');

/** A validator for assert.throws / rejects: a ScramError with this SQLSTATE and message (and detail, when given). */
function scramError(sqlstate: string, message: string | RegExp, detail?: RegExp): (err: unknown) => true {
  return (err: unknown) => {
    assert.ok(err instanceof ScramError, `expected a ScramError, got ${String(err)}`);
    assert.equal(err.sqlstate, sqlstate, `${err.message} (${err.detail ?? 'no detail'})`);
    if (typeof message === 'string') assert.equal(err.message, message);
    else assert.match(err.message, message);
    if (detail) assert.match(err.detail ?? '', detail);
    return true;
  };
}

/** Asserts that `fn` throws such a ScramError. */
function throwsScram(fn: () => unknown, sqlstate: string, message: string | RegExp, detail?: RegExp): void {
  assert.throws(fn, scramError(sqlstate, message, detail));
}

/** The same for a promise (or an async function): it rejects with such a ScramError. */
async function rejectsScram(
  promise: Promise<unknown> | (() => Promise<unknown>),
  sqlstate: string,
  message: string | RegExp,
  detail?: RegExp,
): Promise<void> {
  await assert.rejects(promise, scramError(sqlstate, message, detail));
}

describe('saslprep', () => {
  const cases: Array<[string, string, string]> = [
    ['ASCII is used as it is', 'pencil', 'pencil'],
    ['ASCII with control characters too (PostgreSQL looks no further)', 'a\x01b\x7f', 'a\x01b\x7f'],
    ['the empty password', '', ''],
    ['no-break space becomes a space', 'p\u00a0ss', 'p ss'],
    ['non-ASCII letters stay', 'pä\u00a0ss', 'pä ss'],
    ['ideographic space becomes a space', 'a\u3000b', 'a b'],
    ['zero width space: a space first, as PostgreSQL maps it', 'ä\u200bb', 'ä b'],
    ['soft hyphen is removed', 'I\u00adXä', 'IXä'],
    ['variation selectors are removed', 'ä\ufe0fb', 'äb'],
    ['NFKC: roman numeral nine', '\u2168', 'IX'],
    ['NFKC: ligature', '\ufb01x', 'fix'],
    ['NFKC: full-width letters', '\uff30\uff41\uff53\uff53', 'Pass'],
    ['NFKC composes', 'a\u0308', 'ä'],
    ['prohibited C.2.2 control: original', '\u0080ä\u00a0', '\u0080ä\u00a0'],
    ['prohibited private use: original', '\ue000\u00a0', '\ue000\u00a0'],
    ['prohibited non-character: original', '\ufdd0\u00a0', '\ufdd0\u00a0'],
    ['prohibited lone surrogate: original', '\ud800\u00a0', '\ud800\u00a0'],
    ['prohibited tagging character: original', 'ä\u{e0041}\u00a0', 'ä\u{e0041}\u00a0'],
    ['prohibited change-display character (LRM): original', '\u200eä\u00a0', '\u200eä\u00a0'],
    ['prohibited ideographic description: original', '\u2ff0\u00a0', '\u2ff0\u00a0'],
    ['checked before NFKC, as PostgreSQL: U+0340 (prohibited) → original', 'a\u0340\u00a0', 'a\u0340\u00a0'],
    ['unassigned in Unicode 3.2 (emoji): original', '\u{1f600}\u00a0', '\u{1f600}\u00a0'],
    ['empty once mapped: original', '\u00ad\u200c', '\u00ad\u200c'],
    ['right-to-left only', '\u05e9\u00a0\u05dd', '\u05e9 \u05dd'],
    ['right-to-left mixed with left-to-right: original', '\u05e9\u00a0a\u05dd', '\u05e9\u00a0a\u05dd'],
    ['right-to-left not first: original', '1\u00a0\u05e9', '1\u00a0\u05e9'],
    ['right-to-left not last: original', '\u05e9\u00a01', '\u05e9\u00a01'],
    ['Arabic presentation form normalised', '\ufe8d\u00a0\u0627', '\u0627 \u0627'],
  ];
  for (const [name, input, expected] of cases) {
    test(name, () => assert.equal(saslprep(input), expected));
  }
});

/** RFC 7677 section 3 (user "user", password "pencil"). */
const RFC7677 = {
  password: 'pencil',
  clientNonce: 'rOprNGfwEbeRWgbNEkqO',
  serverNonce: '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0',
  salt: Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64'),
  clientFirst: 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO',
  serverFirst: 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal:
    'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
};

/** StoredKey/ServerKey computed here, independently of src/auth (no SASLprep: ASCII only). */
function independentKeys(password: string, salt: Buffer, iterations: number) {
  const salted = pbkdf2Sync(password, salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  return {
    clientKey,
    storedKey: createHash('sha256').update(clientKey).digest(),
    serverKey: createHmac('sha256', salted).update('Server Key').digest(),
  };
}

describe('SCRAM-SHA-256: RFC 7677 example', () => {
  const verifier = (): ScramVerifier =>
    parseScramVerifier(createScramVerifier('pencil', { salt: RFC7677.salt }))!;

  test('client', async () => {
    const c = new ScramClient({
      password: RFC7677.password,
      serverMechanisms: [SCRAM_SHA_256],
      user: 'user',
      nonce: RFC7677.clientNonce,
    });
    assert.equal(c.mechanism, SCRAM_SHA_256);
    assert.equal(c.clientFirst().toString('latin1'), RFC7677.clientFirst);
    assert.equal((await c.clientFinal(b(RFC7677.serverFirst))).toString('latin1'), RFC7677.clientFinal);
    c.verifyServerFinal(b(RFC7677.serverFinal));
  });

  test('server', () => {
    const s = new ScramServer({
      user: 'user',
      verifier: verifier(),
      mockSecret: MOCK_SECRET,
      nonce: RFC7677.serverNonce,
    });
    assert.deepEqual(s.mechanisms(), [SCRAM_SHA_256]);
    assert.equal(
      s.handleClientFirst(SCRAM_SHA_256, b(RFC7677.clientFirst)).toString('latin1'),
      RFC7677.serverFirst,
    );
    assert.equal(s.handleClientFinal(b(RFC7677.clientFinal)).toString('latin1'), RFC7677.serverFinal);
  });

  test('the verifier holds the keys computed independently', () => {
    const v = verifier();
    const k = independentKeys('pencil', RFC7677.salt, 4096);
    assert.equal(v.iterations, 4096);
    assert.deepEqual(v.salt, RFC7677.salt);
    assert.deepEqual(v.storedKey, k.storedKey);
    assert.deepEqual(v.serverKey, k.serverKey);
  });
});

describe('SCRAM verifiers', () => {
  test('create → parse round trip, default 4096 iterations and a fresh 16-byte salt', () => {
    const one = createScramVerifier('secret');
    const two = createScramVerifier('secret');
    assert.match(one, /^SCRAM-SHA-256\$4096:[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=$/);
    assert.notEqual(one, two);
    const v = parseScramVerifier(one)!;
    assert.equal(v.salt.length, 16);
    const k = independentKeys('secret', v.salt, 4096);
    assert.deepEqual([v.storedKey, v.serverKey], [k.storedKey, k.serverKey]);
  });

  test('iterations and salt as told', () => {
    const salt = Buffer.from('0123456789');
    const v = parseScramVerifier(createScramVerifier('x', { iterations: 1, salt }))!;
    assert.equal(v.iterations, 1);
    assert.deepEqual(v.salt, salt);
  });

  test('the password goes through SASLprep', () => {
    const salt = randomBytes(16);
    assert.equal(createScramVerifier('pä\u00a0ss', { salt }), createScramVerifier('pä ss', { salt }));
    assert.equal(createScramVerifier('p\u00a0ss', { salt }), createScramVerifier('p ss', { salt }));
    // falls back to the raw password (U+0340 is prohibited), so not the same as its NFKC form
    assert.notEqual(createScramVerifier('pa\u0340ss', { salt }), createScramVerifier('pàss', { salt }));
  });

  test('bad options are refused', () => {
    assert.throws(() => createScramVerifier('x', { iterations: 0 }), RangeError);
    assert.throws(() => createScramVerifier('x', { iterations: 1.5 }), RangeError);
    assert.throws(() => createScramVerifier('x', { salt: Buffer.alloc(0) }), RangeError);
  });

  const key = Buffer.alloc(32, 7).toString('base64');
  const short = Buffer.alloc(31, 7).toString('base64');
  const malformed: Array<[string, string]> = [
    ['empty', ''],
    ['an MD5 verifier', 'md53175bce1d3201d16594cebf9d7eb3f9d'],
    ['another mechanism', `SCRAM-SHA-1$4096:c2FsdA==$${key}:${key}`],
    ['zero iterations', `SCRAM-SHA-256$0:c2FsdA==$${key}:${key}`],
    ['negative iterations', `SCRAM-SHA-256$-1:c2FsdA==$${key}:${key}`],
    ['iterations not a number', `SCRAM-SHA-256$4096x:c2FsdA==$${key}:${key}`],
    ['iterations past int32', `SCRAM-SHA-256$2147483648:c2FsdA==$${key}:${key}`],
    ['salt not base64', `SCRAM-SHA-256$4096:c2Fs!A==$${key}:${key}`],
    ['salt missing its padding', `SCRAM-SHA-256$4096:c2FsdA$${key}:${key}`],
    ['empty salt', `SCRAM-SHA-256$4096:$${key}:${key}`],
    ['StoredKey too short', `SCRAM-SHA-256$4096:c2FsdA==$${short}:${key}`],
    ['ServerKey too short', `SCRAM-SHA-256$4096:c2FsdA==$${key}:${short}`],
    ['ServerKey missing', `SCRAM-SHA-256$4096:c2FsdA==$${key}`],
    ['trailing field', `SCRAM-SHA-256$4096:c2FsdA==$${key}:${key}$x`],
    ['trailing newline', `SCRAM-SHA-256$4096:c2FsdA==$${key}:${key}\n`],
  ];
  for (const [name, text] of malformed) {
    test(`parse refuses: ${name}`, () => assert.equal(parseScramVerifier(text), undefined));
  }
  test('parse accepts the well-formed version of those', () => {
    assert.ok(parseScramVerifier(`SCRAM-SHA-256$4096:c2FsdA==$${key}:${key}`));
  });
});

/** One full exchange between our client and our server; rejects with whatever either side throws. */
async function exchange(opts: {
  serverPassword: string;
  clientPassword: string;
  serverBinding?: Buffer;
  clientBinding?: Buffer;
  /** What the client is told the server offers (a man in the middle may strip PLUS). */
  offered?: string[];
}): Promise<{ client: ScramClient; serverFinal: Buffer }> {
  const verifier = parseScramVerifier(createScramVerifier(opts.serverPassword, { iterations: 16 }))!;
  const server = new ScramServer({
    user: 'alice',
    verifier,
    mockSecret: MOCK_SECRET,
    channelBinding: opts.serverBinding,
  });
  const client = new ScramClient({
    password: opts.clientPassword,
    serverMechanisms: opts.offered ?? server.mechanisms(),
    channelBinding: opts.clientBinding,
  });
  const serverFirst = server.handleClientFirst(client.mechanism, client.clientFirst());
  const serverFinal = server.handleClientFinal(await client.clientFinal(serverFirst));
  client.verifyServerFinal(serverFinal);
  return { client, serverFinal };
}

describe('SCRAM: our client against our server', () => {
  const cb = createHash('sha256').update('proxy certificate').digest();
  const otherCb = createHash('sha256').update('a man in the middle').digest();
  const rows: Array<{
    name: string;
    serverBinding?: Buffer;
    clientBinding?: Buffer;
    offered?: string[];
    mechanism?: string;
    gs2?: string;
    fails?: [string, string | RegExp];
  }> = [
    { name: 'plaintext, client cannot bind: n', mechanism: SCRAM_SHA_256, gs2: 'n,,' },
    {
      name: 'plaintext server, client could bind: y',
      clientBinding: cb,
      mechanism: SCRAM_SHA_256,
      gs2: 'y,,',
    },
    {
      name: 'TLS, both bind: SCRAM-SHA-256-PLUS with p',
      serverBinding: cb,
      clientBinding: cb,
      mechanism: SCRAM_SHA_256_PLUS,
      gs2: 'p=tls-server-end-point,,',
    },
    {
      name: 'TLS, client cannot bind: n',
      serverBinding: cb,
      mechanism: SCRAM_SHA_256,
      gs2: 'n,,',
    },
    {
      name: 'TLS, PLUS stripped from the list on the way: y is refused',
      serverBinding: cb,
      clientBinding: cb,
      offered: [SCRAM_SHA_256],
      fails: ['28000', 'SCRAM channel binding negotiation error'],
    },
    {
      name: 'TLS through a man in the middle with its own certificate: binding check fails',
      serverBinding: cb,
      clientBinding: otherCb,
      fails: ['28000', 'SCRAM channel binding check failed'],
    },
  ];
  for (const row of rows) {
    test(row.name, async () => {
      const run = (clientPassword: string) =>
        exchange({
          serverPassword: 'correct horse',
          clientPassword,
          serverBinding: row.serverBinding,
          clientBinding: row.clientBinding,
          offered: row.offered,
        });
      if (row.fails) {
        await rejectsScram(run('correct horse'), ...row.fails);
        return;
      }
      const { client } = await run('correct horse');
      assert.equal(client.mechanism, row.mechanism);
      await rejectsScram(run('battery staple'), '28P01', 'password authentication failed for user "alice"');
    });
  }

  test('the gs2 header of each mode', () => {
    for (const row of rows.filter((r) => r.gs2)) {
      const client = new ScramClient({
        password: 'x',
        serverMechanisms:
          row.offered ?? (row.serverBinding ? [SCRAM_SHA_256_PLUS, SCRAM_SHA_256] : [SCRAM_SHA_256]),
        channelBinding: row.clientBinding,
        nonce: 'abc',
      });
      assert.equal(client.clientFirst().toString('latin1'), `${row.gs2}n=,r=abc`, row.name);
    }
  });

  test('non-ASCII passwords: SASLprep on both sides', async () => {
    await exchange({ serverPassword: 'pä\u00a0ss', clientPassword: 'pä ss' });
    await exchange({ serverPassword: '\u2168', clientPassword: 'IX' });
    await rejectsScram(exchange({ serverPassword: 'päss', clientPassword: 'pass' }), '28P01', /password/);
  });

  test('the server lists PLUS first when it can bind', () => {
    const verifier = parseScramVerifier(createScramVerifier('x', { iterations: 1 }))!;
    const s = (channelBinding?: Buffer) =>
      new ScramServer({ user: 'u', verifier, mockSecret: MOCK_SECRET, channelBinding });
    assert.deepEqual(s(cb).mechanisms(), [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
    assert.deepEqual(s().mechanisms(), [SCRAM_SHA_256]);
  });
});

describe('SCRAM: the client picks', () => {
  const cb = Buffer.alloc(32, 1);
  const rows: Array<[string, string[], Buffer | undefined, string | undefined]> = [
    ['PLUS offered, can bind', [SCRAM_SHA_256_PLUS, SCRAM_SHA_256], cb, SCRAM_SHA_256_PLUS],
    ['PLUS offered, cannot bind', [SCRAM_SHA_256_PLUS, SCRAM_SHA_256], undefined, SCRAM_SHA_256],
    ['order does not matter', [SCRAM_SHA_256, SCRAM_SHA_256_PLUS], cb, SCRAM_SHA_256_PLUS],
    ['only PLUS offered, cannot bind', [SCRAM_SHA_256_PLUS], undefined, undefined],
    ['nothing we know', ['SCRAM-SHA-1', 'OAUTHBEARER'], cb, undefined],
    ['nothing at all', [], undefined, undefined],
  ];
  for (const [name, offered, channelBinding, expected] of rows) {
    test(name, () => {
      const make = () => new ScramClient({ password: 'x', serverMechanisms: offered, channelBinding });
      if (expected) assert.equal(make().mechanism, expected);
      else throwsScram(make, '28000', "none of the server's SASL authentication mechanisms are supported");
    });
  }
});

describe('SCRAM server: unknown users', () => {
  const mock = (user: string, secret = MOCK_SECRET) =>
    new ScramServer({ user, verifier: undefined, mockSecret: secret, nonce: 'server' });
  const saltOf = (serverFirst: Buffer) => /,s=([^,]+),/.exec(serverFirst.toString('latin1'))![1]!;
  const first = (s: ScramServer) => s.handleClientFirst(SCRAM_SHA_256, b('n,,n=,r=client'));

  test('a full exchange that fails like a wrong password', async () => {
    const s = mock('nobody');
    const serverFirst = first(s);
    assert.match(serverFirst.toString('latin1'), /^r=clientserver,s=[A-Za-z0-9+/]{22}==,i=4096$/);
    const client = new ScramClient({ password: 'any', serverMechanisms: [SCRAM_SHA_256], nonce: 'client' });
    client.clientFirst();
    await rejectsScram(
      async () => s.handleClientFinal(await client.clientFinal(serverFirst)),
      '28P01',
      'password authentication failed for user "nobody"',
    );
  });

  test('the same salt every time for a user, another for another user or secret', () => {
    assert.equal(saltOf(first(mock('nobody'))), saltOf(first(mock('nobody'))));
    assert.notEqual(saltOf(first(mock('nobody'))), saltOf(first(mock('somebody'))));
    assert.notEqual(saltOf(first(mock('nobody'))), saltOf(first(mock('nobody', Buffer.alloc(32)))));
  });

  test('a malformed message still gets the malformed-message error (as for a real user)', () => {
    const s = mock('nobody');
    first(s);
    throwsScram(() => s.handleClientFinal(b('c=biws,r=clientserver')), '08P01', 'malformed SCRAM message');
  });
});

describe('SCRAM server: client-first-message', () => {
  const cb = Buffer.alloc(32, 9);
  const verifier = parseScramVerifier(createScramVerifier('x', { iterations: 1 }))!;
  const MALFORMED = 'malformed SCRAM message';
  const rows: Array<{
    name: string;
    data: string;
    mechanism?: string;
    tls?: boolean;
    ok?: true;
    fails?: [string, string | RegExp, RegExp?];
  }> = [
    { name: 'n', data: 'n,,n=,r=abc', ok: true },
    { name: 'the user name is ignored', data: 'n,,n=someone else,r=abc', ok: true },
    { name: 'optional extensions are ignored', data: 'n,,n=,r=abc,x=1,y=2', ok: true },
    { name: 'y on plaintext', data: 'y,,n=,r=abc', ok: true },
    { name: 'n on TLS', data: 'n,,n=,r=abc', tls: true, ok: true },
    {
      name: 'p with PLUS on TLS',
      data: 'p=tls-server-end-point,,n=,r=abc',
      mechanism: SCRAM_SHA_256_PLUS,
      tls: true,
      ok: true,
    },
    { name: 'empty', data: '', fails: ['08P01', MALFORMED, /empty/] },
    { name: 'NUL inside', data: 'n,,n=,r=a\0bc', fails: ['08P01', MALFORMED, /length/] },
    {
      name: 'unknown gs2 flag',
      data: 'x,,n=,r=abc',
      fails: ['08P01', MALFORMED, /channel-binding flag "'x'"/],
    },
    { name: 'no comma after the flag', data: 'nx,n=,r=abc', fails: ['08P01', MALFORMED, /Comma expected/] },
    {
      name: 'authzid',
      data: 'n,a=admin,n=,r=abc',
      fails: ['0A000', 'client uses authorization identity, but it is not supported'],
    },
    {
      name: 'junk where the authzid goes',
      data: 'n,x,n=,r=abc',
      fails: ['08P01', MALFORMED, /Unexpected attribute "'x'"/],
    },
    {
      name: 'mandatory extension',
      data: 'n,,m=ext,n=,r=abc',
      fails: ['0A000', 'client requires an unsupported SCRAM extension'],
    },
    { name: 'no user name', data: 'n,,r=abc', fails: ['08P01', MALFORMED, /Expected attribute "n"/] },
    {
      name: 'no nonce',
      data: 'n,,n=',
      fails: ['08P01', MALFORMED, /Expected attribute "r" but found "0x00"/],
    },
    {
      name: 'attribute without =',
      data: 'n,,n=,rabc',
      fails: ['08P01', MALFORMED, /Expected character "="/],
    },
    { name: 'empty nonce', data: 'n,,n=,r=', fails: ['08P01', 'non-printable characters in SCRAM nonce'] },
    {
      name: 'non-printable nonce',
      data: 'n,,n=,r=ab c',
      fails: ['08P01', 'non-printable characters in SCRAM nonce'],
    },
    {
      name: 'non-ASCII nonce',
      data: 'n,,n=,r=ab\u00e9',
      fails: ['08P01', 'non-printable characters in SCRAM nonce'],
    },
    {
      name: 'bad extension name',
      data: 'n,,n=,r=abc,1=x',
      fails: ['08P01', MALFORMED, /Attribute expected, but found invalid character "'1'"/],
    },
    {
      name: 'unknown mechanism',
      data: 'n,,n=,r=abc',
      mechanism: 'SCRAM-SHA-1',
      fails: ['08P01', 'client selected an invalid SASL authentication mechanism'],
    },
    {
      name: 'PLUS on plaintext',
      data: 'p=tls-server-end-point,,n=,r=abc',
      mechanism: SCRAM_SHA_256_PLUS,
      fails: ['08P01', 'client selected an invalid SASL authentication mechanism'],
    },
    {
      name: 'y on TLS (the server can bind): a downgrade',
      data: 'y,,n=,r=abc',
      tls: true,
      fails: ['28000', 'SCRAM channel binding negotiation error', /However, this server does support/],
    },
    {
      name: 'p without PLUS',
      data: 'p=tls-server-end-point,,n=,r=abc',
      tls: true,
      fails: ['08P01', MALFORMED, /selected SCRAM-SHA-256 without channel binding/],
    },
    {
      name: 'PLUS with n',
      data: 'n,,n=,r=abc',
      mechanism: SCRAM_SHA_256_PLUS,
      tls: true,
      fails: ['08P01', MALFORMED, /selected SCRAM-SHA-256-PLUS, but/],
    },
    {
      name: 'PLUS with y',
      data: 'y,,n=,r=abc',
      mechanism: SCRAM_SHA_256_PLUS,
      tls: true,
      fails: ['08P01', MALFORMED, /selected SCRAM-SHA-256-PLUS, but/],
    },
    {
      name: 'another channel binding type',
      data: 'p=tls-unique,,n=,r=abc',
      mechanism: SCRAM_SHA_256_PLUS,
      tls: true,
      fails: ['08P01', 'unsupported SCRAM channel-binding type "tls-unique"'],
    },
  ];
  for (const row of rows) {
    test(row.name, () => {
      const s = new ScramServer({
        user: 'u',
        verifier,
        mockSecret: MOCK_SECRET,
        channelBinding: row.tls ? cb : undefined,
        nonce: 'srv',
      });
      const run = () => s.handleClientFirst(row.mechanism ?? SCRAM_SHA_256, b(row.data));
      if (row.ok) {
        assert.equal(run().toString('latin1'), `r=abcsrv,s=${verifier.salt.toString('base64')},i=1`);
      } else {
        throwsScram(run, ...row.fails!);
        // and the exchange is over
        throwsScram(
          () => s.handleClientFinal(b('c=biws,r=abcsrv,p=x')),
          '08P01',
          'SCRAM messages out of order',
        );
      }
    });
  }
});

describe('SCRAM server: client-final-message', () => {
  const cb = Buffer.alloc(32, 9);
  const verifier = parseScramVerifier(createScramVerifier('pw', { iterations: 2 }))!;
  const keys = independentKeys('pw', verifier.salt, 2);
  const serverFirstOf = (nonce: string) => `r=${nonce},s=${verifier.salt.toString('base64')},i=2`;

  /** Proof for a final message computed here, so tampered messages carry a proof that matches them. */
  function signed(clientFirstBare: string, serverFirst: string, withoutProof: string): string {
    const auth = `${clientFirstBare},${serverFirst},${withoutProof}`;
    const sig = createHmac('sha256', keys.storedKey).update(auth).digest();
    const proof = Buffer.from(keys.clientKey.map((x, i) => x ^ sig[i]!));
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  function start(gs2: string, tls = false, mechanism = SCRAM_SHA_256): ScramServer {
    const s = new ScramServer({
      user: 'u',
      verifier,
      mockSecret: MOCK_SECRET,
      channelBinding: tls ? cb : undefined,
      nonce: 'srv',
    });
    assert.equal(
      s.handleClientFirst(mechanism, b(`${gs2}n=,r=abc`)).toString('latin1'),
      serverFirstOf('abcsrv'),
    );
    return s;
  }
  const pCbind = Buffer.concat([b('p=tls-server-end-point,,'), cb]).toString('base64');
  const MALFORMED = 'malformed SCRAM message';
  const rows: Array<{
    name: string;
    gs2?: string;
    tls?: boolean;
    mechanism?: string;
    /** The final message; PROOF is replaced by a proof that matches the rest. */
    final: string;
    fails?: [string, string | RegExp, RegExp?];
  }> = [
    { name: 'n: c=biws', final: 'c=biws,r=abcsrv,PROOF' },
    { name: 'y: c=eSws', gs2: 'y,,', final: 'c=eSws,r=abcsrv,PROOF' },
    {
      name: 'p: c=base64(gs2 header + certificate hash)',
      gs2: 'p=tls-server-end-point,,',
      tls: true,
      mechanism: SCRAM_SHA_256_PLUS,
      final: `c=${pCbind},r=abcsrv,PROOF`,
    },
    { name: 'extensions before the proof are signed and accepted', final: 'c=biws,r=abcsrv,x=1,PROOF' },
    {
      name: 'the flag changed from n to y',
      final: 'c=eSws,r=abcsrv,PROOF',
      fails: ['08P01', 'unexpected SCRAM channel-binding attribute in client-final-message'],
    },
    {
      name: 'binding data in c= without PLUS',
      final: `c=${pCbind},r=abcsrv,PROOF`,
      fails: ['08P01', 'unexpected SCRAM channel-binding attribute in client-final-message'],
    },
    {
      name: 'binding data of another certificate',
      gs2: 'p=tls-server-end-point,,',
      tls: true,
      mechanism: SCRAM_SHA_256_PLUS,
      final: `c=${Buffer.concat([b('p=tls-server-end-point,,'), Buffer.alloc(32, 8)]).toString('base64')},r=abcsrv,PROOF`,
      fails: ['28000', 'SCRAM channel binding check failed'],
    },
    {
      name: 'PLUS with c=biws',
      gs2: 'p=tls-server-end-point,,',
      tls: true,
      mechanism: SCRAM_SHA_256_PLUS,
      final: 'c=biws,r=abcsrv,PROOF',
      fails: ['28000', 'SCRAM channel binding check failed'],
    },
    {
      name: 'tampered nonce',
      final: 'c=biws,r=abcsrX,PROOF',
      fails: ['08P01', 'invalid SCRAM response', /Nonce does not match/],
    },
    {
      name: 'only the client nonce',
      final: 'c=biws,r=abc,PROOF',
      fails: ['08P01', 'invalid SCRAM response', /Nonce does not match/],
    },
    {
      name: 'proof of another password',
      final: 'c=biws,r=abcsrv,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
      fails: ['28P01', 'password authentication failed for user "u"'],
    },
    {
      name: 'proof too short',
      final: `c=biws,r=abcsrv,p=${Buffer.alloc(31).toString('base64')}`,
      fails: ['08P01', MALFORMED, /Malformed proof/],
    },
    {
      name: 'proof not base64',
      final: 'c=biws,r=abcsrv,p=***',
      fails: ['08P01', MALFORMED, /Malformed proof/],
    },
    { name: 'no proof', final: 'c=biws,r=abcsrv', fails: ['08P01', MALFORMED, /Attribute expected/] },
    {
      name: 'garbage after the proof',
      final: 'c=biws,r=abcsrv,PROOF,x',
      fails: ['08P01', MALFORMED, /Garbage/],
    },
    { name: 'no c=', final: 'r=abcsrv,PROOF', fails: ['08P01', MALFORMED, /Expected attribute "c"/] },
    { name: 'no r=', final: 'c=biws,PROOF', fails: ['08P01', MALFORMED, /Expected attribute "r"/] },
    { name: 'empty', final: '', fails: ['08P01', MALFORMED, /empty/] },
  ];
  for (const row of rows) {
    test(row.name, () => {
      const gs2 = row.gs2 ?? 'n,,';
      const s = start(gs2, row.tls, row.mechanism);
      const at = row.final.indexOf(',PROOF');
      const final =
        at < 0
          ? row.final
          : signed('n=,r=abc', serverFirstOf('abcsrv'), row.final.slice(0, at)) +
            row.final.slice(at + ',PROOF'.length);
      if (row.fails) {
        throwsScram(() => s.handleClientFinal(b(final)), ...row.fails);
      } else {
        const auth = `n=,r=abc,${serverFirstOf('abcsrv')},${final.slice(0, final.lastIndexOf(',p='))}`;
        const v = createHmac('sha256', keys.serverKey).update(auth).digest('base64');
        assert.equal(s.handleClientFinal(b(final)).toString('latin1'), `v=${v}`);
      }
    });
  }
});

describe('SCRAM: calls out of order', () => {
  const verifier = parseScramVerifier(createScramVerifier('x', { iterations: 1 }))!;
  const server = () => new ScramServer({ user: 'u', verifier, mockSecret: MOCK_SECRET });
  const client = () => new ScramClient({ password: 'x', serverMechanisms: [SCRAM_SHA_256] });
  const OUT_OF_ORDER = 'SCRAM messages out of order';

  test('server: final before first', () => {
    throwsScram(() => server().handleClientFinal(b('c=biws,r=x,p=x')), '08P01', OUT_OF_ORDER);
  });
  test('server: first twice', () => {
    const s = server();
    s.handleClientFirst(SCRAM_SHA_256, b('n,,n=,r=abc'));
    throwsScram(() => s.handleClientFirst(SCRAM_SHA_256, b('n,,n=,r=abc')), '08P01', OUT_OF_ORDER);
  });
  test('server: anything after a completed exchange', async () => {
    const s = server();
    const c = client();
    s.handleClientFinal(await c.clientFinal(s.handleClientFirst(SCRAM_SHA_256, c.clientFirst())));
    throwsScram(() => s.handleClientFinal(b('c=biws,r=x,p=x')), '08P01', OUT_OF_ORDER);
    throwsScram(() => s.handleClientFirst(SCRAM_SHA_256, c.clientFirst()), '08P01', OUT_OF_ORDER);
  });
  test('server: a wrong password ends the exchange', async () => {
    const s = server();
    const c = new ScramClient({ password: 'wrong', serverMechanisms: [SCRAM_SHA_256] });
    const final = await c.clientFinal(s.handleClientFirst(SCRAM_SHA_256, c.clientFirst()));
    throwsScram(() => s.handleClientFinal(final), '28P01', /password authentication failed/);
    throwsScram(() => s.handleClientFinal(final), '08P01', OUT_OF_ORDER);
  });
  test('client: final before first, server-final before final, first twice', async () => {
    await rejectsScram(client().clientFinal(b('r=x,s=c2FsdA==,i=1')), '08P01', OUT_OF_ORDER);
    const c = client();
    c.clientFirst();
    throwsScram(() => c.verifyServerFinal(b('v=x')), '08P01', OUT_OF_ORDER);
    const d = client();
    d.clientFirst();
    throwsScram(() => d.clientFirst(), '08P01', OUT_OF_ORDER);
  });
});

describe('SCRAM client: what the server sends', () => {
  const MALFORMED = 'malformed SCRAM message';
  const start = () => {
    const c = new ScramClient({ password: 'pencil', serverMechanisms: [SCRAM_SHA_256], nonce: 'cli' });
    c.clientFirst();
    return c;
  };
  const firstRows: Array<[string, string, string, string | RegExp, RegExp?]> = [
    ['nonce not extending ours', 'r=xyzsrv,s=c2FsdA==,i=4096', '08P01', 'invalid SCRAM response', /nonce/],
    ['nonce only ours', 'r=cli,s=c2FsdA==,i=4096', '08P01', 'invalid SCRAM response', /nonce/],
    ['nonce with a space', 'r=cli srv,s=c2FsdA==,i=4096', '08P01', 'invalid SCRAM response'],
    ['zero iterations', 'r=clisrv,s=c2FsdA==,i=0', '08P01', MALFORMED, /iteration count/],
    ['iterations not a number', 'r=clisrv,s=c2FsdA==,i=4k', '08P01', MALFORMED, /iteration count/],
    ['iterations past int32', 'r=clisrv,s=c2FsdA==,i=4294967296', '08P01', MALFORMED, /iteration count/],
    ['salt not base64', 'r=clisrv,s=c2F$dA==,i=1', '08P01', MALFORMED, /salt/],
    ['empty salt', 'r=clisrv,s=,i=1', '08P01', MALFORMED, /salt/],
    ['attributes out of order', 's=c2FsdA==,r=clisrv,i=1', '08P01', MALFORMED, /Expected attribute "r"/],
    ['no iteration count', 'r=clisrv,s=c2FsdA==', '08P01', MALFORMED, /Expected attribute "i"/],
    ['mandatory extension', 'm=x,r=clisrv,s=c2FsdA==,i=1', '0A000', /unsupported SCRAM extension/],
    ['empty', '', '08P01', MALFORMED, /empty/],
    [
      'more iterations than the proxy computes (409600)',
      'r=clisrv,s=c2FsdA==,i=409601',
      '08P01',
      'invalid SCRAM response',
      /409601/,
    ],
  ];
  for (const [name, serverFirst, sqlstate, message, detail] of firstRows) {
    test(`server-first: ${name}`, () =>
      rejectsScram(start().clientFinal(b(serverFirst)), sqlstate, message, detail));
  }
  test('server-first: optional extensions after the iteration count are ignored', async () => {
    assert.match(
      (await start().clientFinal(b('r=clisrv,s=c2FsdA==,i=1,x=y'))).toString('latin1'),
      /^c=biws,r=clisrv,p=/,
    );
  });
  test('server-first: 409600 iterations, the most the proxy computes, are accepted', async () => {
    const final = (await start().clientFinal(b('r=clisrv,s=c2FsdA==,i=409600'))).toString('latin1');
    const k = independentKeys('pencil', b('salt'), 409600);
    const withoutProof = 'c=biws,r=clisrv';
    const auth = `n=,r=cli,r=clisrv,s=c2FsdA==,i=409600,${withoutProof}`;
    const signature = createHmac('sha256', k.storedKey).update(auth).digest();
    const proof = Buffer.from(k.clientKey.map((x, i) => x ^ signature[i]!)).toString('base64');
    assert.equal(final, `${withoutProof},p=${proof}`);
  });
  test('the key derivation does not block the event loop', async () => {
    const c = start();
    let settled = false;
    let settledWhenImmediateRan: boolean | undefined;
    let timerTicks = 0;
    setImmediate(() => (settledWhenImmediateRan = settled));
    const timer = setInterval(() => timerTicks++, 1);
    try {
      // about 50 ms of PBKDF2: done inline, it would settle before any callback runs
      const final = c.clientFinal(b('r=clisrv,s=c2FsdA==,i=200000')).finally(() => (settled = true));
      assert.match((await final).toString('latin1'), /^c=biws,r=clisrv,p=/);
    } finally {
      clearInterval(timer);
    }
    assert.equal(settledWhenImmediateRan, false, 'setImmediate ran only after the derivation');
    assert.ok(timerTicks > 0, 'no timer callback ran during the derivation');
  });

  const atFinal = async () => {
    const c = start();
    await c.clientFinal(b(RFC7677.serverFirst.replace(RFC7677.clientNonce, 'cli')));
    return c;
  };
  const finalRows: Array<[string, string, string, string | RegExp, RegExp?]> = [
    ['wrong signature', RFC7677.serverFinal, '28000', 'incorrect server signature'],
    ['an error', 'e=invalid-proof', '28000', 'error received from server in SCRAM exchange', /invalid-proof/],
    ['signature too short', `v=${Buffer.alloc(31).toString('base64')}`, '08P01', MALFORMED, /signature/],
    ['signature not base64', 'v=!!!!', '08P01', MALFORMED, /signature/],
    ['no v=', 'x=1', '08P01', MALFORMED, /Expected attribute "v"/],
  ];
  for (const [name, serverFinal, sqlstate, message, detail] of finalRows) {
    test(`server-final: ${name}`, async () => {
      const c = await atFinal();
      throwsScram(() => c.verifyServerFinal(b(serverFinal)), sqlstate, message, detail);
    });
  }
});

describe('MD5', () => {
  const rows: Array<{ user: string; password: string; verifier: string; salt: number[]; response: string }> =
    [
      {
        user: 'postgres',
        password: 'postgres',
        verifier: 'md53175bce1d3201d16594cebf9d7eb3f9d',
        salt: [1, 2, 3, 4],
        response: 'md568be9ed08db75f318087ab337aaea044',
      },
      {
        user: 'user',
        password: 'pencil',
        verifier: 'md520c46e3762c864548e296b33c3406aa9',
        salt: [0xff, 0, 0x80, 0x7f],
        response: 'md5ff36538ed97e0250df3906bef88c533b',
      },
      {
        user: 'jürgen',
        password: 'pä ss',
        verifier: 'md54e3da9f113e2754f73ded4d6611324fb',
        salt: [0, 0, 0, 0],
        response: 'md5b30eaccce13bd809d6461accbd0fca31',
      },
    ];
  for (const r of rows) {
    test(`${r.user} / ${r.password}`, () => {
      const salt = Buffer.from(r.salt);
      assert.equal(createMd5Verifier(r.user, r.password), r.verifier);
      assert.ok(isMd5Verifier(r.verifier));
      assert.deepEqual(md5Response(r.user, r.password, salt), Buffer.from(`${r.response}\0`));
      assert.equal(md5Check(r.verifier, salt, r.response), true);
      assert.equal(md5Check(r.verifier, Buffer.from([9, 9, 9, 9]), r.response), false);
      assert.equal(md5Check(r.verifier, salt, r.response.toUpperCase()), false);
      assert.equal(md5Check(r.verifier, salt, `${r.response}\0`), false);
      assert.equal(md5Check(r.verifier, salt, ''), false);
    });
  }
  const notVerifiers = [
    '',
    'md5',
    'md53175BCE1D3201D16594CEBF9D7EB3F9D',
    'md53175bce1d3201d16594cebf9d7eb3f9',
    'SCRAM-SHA-256$4096:x$y:z',
  ];
  for (const text of notVerifiers) {
    test(`not an MD5 verifier: ${JSON.stringify(text)}`, () => {
      assert.equal(isMd5Verifier(text), false);
      assert.equal(md5Check(text, Buffer.alloc(4), 'md568be9ed08db75f318087ab337aaea044'), false);
    });
  }
});

/** DER of OID 1.2.840.113549.1.1.10 (RSASSA-PSS). */
const RSASSA_PSS_OID = Buffer.from('06092a864886f70d01010a', 'hex');

describe('tls-server-end-point', () => {
  let dir = '';
  let openssl = true;
  const certs = new Map<string, Buffer>();

  function run(args: string[]): void {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  }
  /** A self-signed certificate with this key, signed with these options; returns its DER. */
  function cert(name: string, key: string, sign: string[]): Buffer {
    run(['req', '-x509', '-key', key, ...sign, '-days', '1', '-subj', `/CN=${name}`, '-out', `${name}.pem`]);
    const pem = readFileSync(path.join(dir, `${name}.pem`), 'utf8');
    return Buffer.from(new X509Certificate(pem).raw);
  }

  before(() => {
    try {
      execFileSync('openssl', ['version'], { stdio: 'ignore' });
    } catch {
      openssl = false;
      return;
    }
    dir = mkdtempSync(path.join(tmpdir(), 'pgro-auth-'));
    run(['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', 'rsa.key']);
    run(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384', '-out', 'p384.key']);
    run(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'p256.key']);
    run(['genpkey', '-algorithm', 'ED25519', '-out', 'ed25519.key']);
    certs.set('rsa-sha256', cert('rsa-sha256', 'rsa.key', ['-sha256']));
    certs.set('rsa-sha384', cert('rsa-sha384', 'rsa.key', ['-sha384']));
    certs.set('rsa-sha512', cert('rsa-sha512', 'rsa.key', ['-sha512']));
    certs.set('rsa-sha1', cert('rsa-sha1', 'rsa.key', ['-sha1']));
    certs.set(
      'rsa-pss-sha384',
      cert('rsa-pss-sha384', 'rsa.key', ['-sha384', '-sigopt', 'rsa_padding_mode:pss']),
    );
    certs.set('ec-p384-sha384', cert('ec-p384-sha384', 'p384.key', ['-sha384']));
    certs.set('ec-p256-sha256', cert('ec-p256-sha256', 'p256.key', ['-sha256']));
    certs.set('ec-p256-sha512', cert('ec-p256-sha512', 'p256.key', ['-sha512']));
    certs.set('ed25519', cert('ed25519', 'ed25519.key', []));
  });
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const rows: Array<[string, string | undefined]> = [
    ['rsa-sha256', 'sha256'],
    ['rsa-sha384', 'sha384'],
    ['rsa-sha512', 'sha512'],
    ['rsa-sha1', 'sha256'], // SHA-1 is upgraded
    ['rsa-pss-sha384', 'sha384'], // the hash from the RSASSA-PSS parameters
    ['ec-p384-sha384', 'sha384'],
    ['ec-p256-sha256', 'sha256'],
    ['ec-p256-sha512', 'sha512'],
    ['ed25519', undefined], // no hash of its own: no channel binding, as with PostgreSQL
  ];
  for (const [name, hash] of rows) {
    test(name, (t) => {
      if (!openssl) return t.skip('openssl is not on PATH');
      const der = certs.get(name)!;
      if (name.includes('pss')) assert.ok(der.includes(RSASSA_PSS_OID), 'signed with RSASSA-PSS');
      assert.equal(endPointHashName(der), hash);
      const expected = hash ? createHash(hash).update(der).digest() : undefined;
      assert.deepEqual(tlsServerEndPoint(der), expected);
    });
  }

  test('malformed DER: undefined, never a throw', (t) => {
    if (!openssl) return t.skip('openssl is not on PATH');
    const good = certs.get('rsa-sha256')!;
    const indefinite = Buffer.from(good);
    indefinite[1] = 0x80;
    const samples: Array<[string, Buffer]> = [
      ['empty', Buffer.alloc(0)],
      ['one byte', Buffer.from([0x30])],
      ['not a SEQUENCE', Buffer.from([0x04, 0x01, 0x00])],
      ['indefinite length', indefinite],
      ['trailing bytes', Buffer.concat([good, Buffer.from([0])])],
      ['length past the end', Buffer.from([0x30, 0x84, 0x7f, 0xff, 0xff, 0xff, 0x30, 0x00])],
      ['no signature algorithm', Buffer.from([0x30, 0x02, 0x30, 0x00])],
      ['algorithm not an OID', Buffer.from([0x30, 0x06, 0x30, 0x00, 0x30, 0x02, 0x05, 0x00])],
      ['OID cut short', Buffer.from([0x30, 0x07, 0x30, 0x00, 0x30, 0x03, 0x06, 0x01, 0x86])],
    ];
    for (let cut = 1; cut < good.length; cut += 97)
      samples.push([`truncated at ${cut}`, good.subarray(0, cut)]);
    for (let i = 0; i < 200; i++) samples.push([`random ${i}`, randomBytes(1 + (i % 64))]);
    for (const [name, der] of samples) assert.equal(tlsServerEndPoint(der), undefined, name);
  });
});
