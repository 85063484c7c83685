/**
 * SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677) as PostgreSQL speaks
 * them, both sides: ScramServer authenticates a client against a stored verifier,
 * ScramClient logs in to a server with a password. Messages are handled as bytes
 * (latin1 strings), so the AuthMessage both sides sign is exactly what was sent.
 *
 * PostgreSQL's rules, followed here: the username in client-first-message is
 * ignored (the startup packet's user counts), authzid and mandatory extensions are
 * refused, optional extensions ignored; channel binding is tls-server-end-point
 * only; a client that says "y" (I could bind, I think you can't) to a server that
 * offers binding is refused, as that is what a man in the middle stripping
 * SCRAM-SHA-256-PLUS from the list looks like. Passwords go through SASLprep.
 */
import { createHash, createHmac, pbkdf2, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import { SqlState } from '../protocol/sqlstate.js';
import { saslprep } from './saslprep.js';

export const SCRAM_SHA_256 = 'SCRAM-SHA-256';
export const SCRAM_SHA_256_PLUS = 'SCRAM-SHA-256-PLUS';

const KEY_LENGTH = 32;
const DEFAULT_ITERATIONS = 4096;
const DEFAULT_SALT_LENGTH = 16;
const NONCE_BYTES = 18;
const MAX_ITERATIONS = 0x7fffffff;
/** What the proxy, as a client, will compute for a server: 100 times PostgreSQL's default (about 0.2 s of one core). */
const MAX_SERVER_ITERATIONS = 409_600;
const CHANNEL_BINDING_TYPE = 'tls-server-end-point';
/** gs2 headers: without channel binding ("n": not supported, "y": supported but not offered), and with. */
const GS2_NO_BINDING = { n: 'n,,', y: 'y,,' } as const;
const GS2_BINDING = `p=${CHANNEL_BINDING_TYPE},,`;

export interface ScramVerifier {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

export class ScramError extends Error {
  constructor(
    message: string,
    readonly sqlstate: SqlState,
    readonly detail?: string,
  ) {
    super(message);
    this.name = 'ScramError';
  }
}

const malformed = (detail: string): ScramError =>
  new ScramError('malformed SCRAM message', SqlState.ProtocolViolation, detail);
const outOfOrder = (expected: string): ScramError =>
  new ScramError('SCRAM messages out of order', SqlState.ProtocolViolation, `Expected ${expected}.`);

const sha256 = (data: Buffer): Buffer => createHash('sha256').update(data).digest();
const hmac = (key: Buffer, data: string | Buffer): Buffer =>
  createHmac('sha256', key)
    .update(typeof data === 'string' ? Buffer.from(data, 'latin1') : data)
    .digest();

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.alloc(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

const pbkdf2Async = promisify(pbkdf2);

interface Keys {
  clientKey: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

function keysOf(salted: Buffer): Keys {
  const clientKey = hmac(salted, 'Client Key');
  return { clientKey, storedKey: sha256(clientKey), serverKey: hmac(salted, 'Server Key') };
}

/** StoredKey and ServerKey (and ClientKey, for the client) of a password. */
function deriveKeys(password: string, salt: Buffer, iterations: number): Keys {
  return keysOf(pbkdf2Sync(Buffer.from(saslprep(password), 'utf8'), salt, iterations, KEY_LENGTH, 'sha256'));
}

/**
 * The same off the event loop: the server chooses the iteration count, and a
 * hostile one (or a man in the middle) must not stall every other session.
 */
async function deriveKeysAsync(password: string, salt: Buffer, iterations: number): Promise<Keys> {
  const salted = await pbkdf2Async(
    Buffer.from(saslprep(password), 'utf8'),
    salt,
    iterations,
    KEY_LENGTH,
    'sha256',
  );
  return keysOf(salted);
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict base64 (padding required, no whitespace); undefined when it is not. */
function decodeBase64(text: string): Buffer | undefined {
  return BASE64.test(text) ? Buffer.from(text, 'base64') : undefined;
}

function validIterations(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= MAX_ITERATIONS;
}

/** A SCRAM nonce: printable ASCII other than ','. */
function printable(s: string): boolean {
  return /^[\x21-\x2b\x2d-\x7e]+$/.test(s);
}

/**
 * PostgreSQL's text form of a verifier:
 * SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>.
 * 4096 iterations and a 16-byte random salt unless told; the password goes
 * through SASLprep, as PostgreSQL's does.
 */
export function createScramVerifier(
  password: string,
  opts: { iterations?: number; salt?: Buffer } = {},
): string {
  const iterations = opts.iterations ?? DEFAULT_ITERATIONS;
  if (!validIterations(iterations)) throw new RangeError(`invalid SCRAM iteration count ${iterations}`);
  const salt = opts.salt ?? randomBytes(DEFAULT_SALT_LENGTH);
  if (salt.length === 0) throw new RangeError('empty SCRAM salt');
  const { storedKey, serverKey } = deriveKeys(password, salt, iterations);
  const b64 = (b: Buffer): string => b.toString('base64');
  return `${SCRAM_SHA_256}$${iterations}:${b64(salt)}$${b64(storedKey)}:${b64(serverKey)}`;
}

/** Undefined when the text is not a well-formed SCRAM-SHA-256 verifier. */
export function parseScramVerifier(text: string): ScramVerifier | undefined {
  const m = /^SCRAM-SHA-256\$([0-9]{1,10}):([^$:]+)\$([^$:]+):([^$:]+)$/.exec(text);
  if (!m) return undefined;
  const iterations = Number(m[1]);
  const salt = decodeBase64(m[2]!);
  const storedKey = decodeBase64(m[3]!);
  const serverKey = decodeBase64(m[4]!);
  if (!validIterations(iterations) || !salt?.length) return undefined;
  if (storedKey?.length !== KEY_LENGTH || serverKey?.length !== KEY_LENGTH) return undefined;
  return { iterations, salt, storedKey, serverKey };
}

/** A character for an error detail, as PostgreSQL shows it: quoted if printable, else its code. */
function shown(ch: string | undefined): string {
  const code = ch === undefined ? 0 : ch.charCodeAt(0);
  return code >= 0x21 && code <= 0x7e ? `'${ch}'` : `0x${code.toString(16).padStart(2, '0')}`;
}

/** A string for an error message, as PostgreSQL shows it: '?' for what is not printable, 30 characters at most. */
function shownString(s: string): string {
  return s.slice(0, 30).replace(/[^\x21-\x7e]/g, '?');
}

/** The text of a SCRAM message (bytes as latin1); NULs are not allowed in it. */
function messageText(data: Buffer): string {
  if (data.length === 0) throw malformed('The message is empty.');
  if (data.includes(0)) throw malformed('Message length does not match input length.');
  return data.toString('latin1');
}

/** Reads `name=value` attributes separated by commas, from `pos`. */
class AttributeReader {
  constructor(
    readonly text: string,
    public pos = 0,
  ) {}

  get atEnd(): boolean {
    return this.pos >= this.text.length;
  }

  /** The value of attribute `name`, which must be next. */
  read(name: string): string {
    const found = this.text[this.pos];
    if (found !== name) throw malformed(`Expected attribute "${name}" but found "${shown(found)}".`);
    return this.value(name);
  }

  /** Whatever attribute is next (an extension, or the proof after extensions). */
  readAny(): { name: string; value: string } {
    const name = this.text[this.pos];
    if (name === undefined || !/^[A-Za-z]$/.test(name)) {
      throw malformed(`Attribute expected, but found invalid character "${shown(name)}".`);
    }
    return { name, value: this.value(name) };
  }

  private value(name: string): string {
    if (this.text[this.pos + 1] !== '=') throw malformed(`Expected character "=" for attribute "${name}".`);
    const start = this.pos + 2;
    const comma = this.text.indexOf(',', start);
    const end = comma < 0 ? this.text.length : comma;
    this.pos = comma < 0 ? end : end + 1;
    return this.text.slice(start, end);
  }
}

/** The server side of one exchange (the proxy authenticating a client). */
export class ScramServer {
  private readonly user: string;
  private readonly verifier: ScramVerifier;
  /** No such user or no SCRAM verifier: the exchange runs to its end and then fails. */
  private readonly mock: boolean;
  private readonly channelBinding: Buffer | undefined;
  private readonly serverNonce: string | undefined;
  private state: 'client-first' | 'client-final' | 'done' = 'client-first';
  private exchange:
    | {
        gs2Header: string;
        binding: boolean;
        combinedNonce: string;
        clientFirstBare: string;
        serverFirst: string;
      }
    | undefined;

  /**
   * verifier undefined: the user does not exist or has no SCRAM verifier. Then the
   * exchange runs with a salt derived from mockSecret and the user name (the same
   * every time for a user, as a real one would be) and ends with the same 28P01 as
   * a wrong password, so user names cannot be probed.
   *
   * channelBinding: the tls-server-end-point data of the proxy's certificate when
   * the client is on TLS (SCRAM-SHA-256-PLUS is then offered too); undefined on
   * plaintext or when the certificate allows no binding.
   *
   * nonce: for tests only, the server's part of the nonce instead of 18 random bytes.
   */
  constructor(opts: {
    user: string;
    verifier: ScramVerifier | undefined;
    mockSecret: Buffer;
    /** The iteration count the mock exchange shows: that of the real users, so it does not stand out. */
    mockIterations?: number;
    channelBinding?: Buffer;
    nonce?: string;
  }) {
    this.user = opts.user;
    this.mock = opts.verifier === undefined;
    this.verifier = opts.verifier ?? {
      iterations: opts.mockIterations ?? DEFAULT_ITERATIONS,
      salt: hmac(opts.mockSecret, Buffer.from(opts.user, 'utf8')).subarray(0, DEFAULT_SALT_LENGTH),
      storedKey: randomBytes(KEY_LENGTH),
      serverKey: randomBytes(KEY_LENGTH),
    };
    this.channelBinding = opts.channelBinding;
    if (opts.nonce !== undefined && !printable(opts.nonce)) throw new RangeError('invalid SCRAM nonce');
    this.serverNonce = opts.nonce;
  }

  /** Mechanism list for AuthenticationSASL, SCRAM-SHA-256-PLUS first when channel binding is available. */
  mechanisms(): string[] {
    return this.channelBinding ? [SCRAM_SHA_256_PLUS, SCRAM_SHA_256] : [SCRAM_SHA_256];
  }

  /** SASLInitialResponse: the mechanism and client-first-message. Returns server-first-message. */
  handleClientFirst(mechanism: string, data: Buffer): Buffer {
    if (this.state !== 'client-first') throw this.fail(outOfOrder('client-final-message'));
    try {
      const out = this.clientFirst(mechanism, data);
      this.state = 'client-final';
      return out;
    } catch (err) {
      throw this.fail(err);
    }
  }

  /** SASLResponse: client-final-message. Returns server-final-message ("v=..."); 28P01 for a wrong password. */
  handleClientFinal(data: Buffer): Buffer {
    if (this.state !== 'client-final') {
      throw this.fail(
        outOfOrder(this.state === 'client-first' ? 'client-first-message' : 'no more messages'),
      );
    }
    try {
      const out = this.clientFinal(data);
      this.state = 'done';
      return out;
    } catch (err) {
      throw this.fail(err);
    }
  }

  /** An error ends the exchange: nothing after it is accepted. */
  private fail(err: unknown): unknown {
    this.state = 'done';
    this.exchange = undefined;
    return err;
  }

  private clientFirst(mechanism: string, data: Buffer): Buffer {
    if (!this.mechanisms().includes(mechanism)) {
      throw new ScramError(
        'client selected an invalid SASL authentication mechanism',
        SqlState.ProtocolViolation,
      );
    }
    const plus = mechanism === SCRAM_SHA_256_PLUS;
    const text = messageText(data);
    const r = new AttributeReader(text);
    const flag = text[0];
    if (flag === 'n' || flag === 'y') {
      if (plus) {
        throw malformed(
          'The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.',
        );
      }
      if (flag === 'y' && this.channelBinding) {
        throw new ScramError(
          'SCRAM channel binding negotiation error',
          SqlState.InvalidAuthorizationSpecification,
          'The client supports SCRAM channel binding but thinks the server does not.  ' +
            'However, this server does support channel binding.',
        );
      }
      if (text[1] !== ',') throw malformed(`Comma expected, but found character "${shown(text[1])}".`);
      r.pos = 2;
    } else if (flag === 'p') {
      if (!plus) {
        throw malformed(
          'The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.',
        );
      }
      const type = r.read('p');
      if (type !== CHANNEL_BINDING_TYPE) {
        throw new ScramError(
          `unsupported SCRAM channel-binding type "${shownString(type)}"`,
          SqlState.ProtocolViolation,
        );
      }
    } else {
      throw malformed(`Unexpected channel-binding flag "${shown(flag)}".`);
    }
    if (text[r.pos] === 'a') {
      throw new ScramError(
        'client uses authorization identity, but it is not supported',
        SqlState.FeatureNotSupported,
      );
    }
    if (text[r.pos] !== ',') {
      throw malformed(`Unexpected attribute "${shown(text[r.pos])}" in client-first-message.`);
    }
    r.pos++;
    const gs2Header = text.slice(0, r.pos);
    const clientFirstBare = text.slice(r.pos);
    if (text[r.pos] === 'm') {
      throw new ScramError('client requires an unsupported SCRAM extension', SqlState.FeatureNotSupported);
    }
    r.read('n'); // ignored: the user name of the startup packet is the one that counts
    const clientNonce = r.read('r');
    if (!printable(clientNonce)) {
      throw new ScramError('non-printable characters in SCRAM nonce', SqlState.ProtocolViolation);
    }
    while (!r.atEnd) r.readAny(); // optional extensions: none supported, ignored
    const combinedNonce = clientNonce + (this.serverNonce ?? randomBytes(NONCE_BYTES).toString('base64'));
    const v = this.verifier;
    const serverFirst = `r=${combinedNonce},s=${v.salt.toString('base64')},i=${v.iterations}`;
    this.exchange = { gs2Header, binding: plus, combinedNonce, clientFirstBare, serverFirst };
    return Buffer.from(serverFirst, 'latin1');
  }

  private clientFinal(data: Buffer): Buffer {
    const ex = this.exchange!;
    const text = messageText(data);
    const r = new AttributeReader(text);
    const cbind = r.read('c');
    if (ex.binding) {
      const expected = Buffer.concat([Buffer.from(ex.gs2Header, 'latin1'), this.channelBinding!]);
      if (cbind !== expected.toString('base64')) {
        throw new ScramError(
          'SCRAM channel binding check failed',
          SqlState.InvalidAuthorizationSpecification,
        );
      }
    } else if (cbind !== Buffer.from(ex.gs2Header, 'latin1').toString('base64')) {
      // "biws" for "n,,", "eSws" for "y,,": the flag must be the one the client sent first
      throw new ScramError(
        'unexpected SCRAM channel-binding attribute in client-final-message',
        SqlState.ProtocolViolation,
      );
    }
    const nonce = r.read('r');
    let proofAt: number;
    let proofText: string;
    for (;;) {
      proofAt = r.pos;
      const { name, value } = r.readAny(); // optional extensions, then the proof
      if (name === 'p') {
        proofText = value;
        break;
      }
    }
    const proof = decodeBase64(proofText);
    if (proof?.length !== KEY_LENGTH) throw malformed('Malformed proof in client-final-message.');
    if (!r.atEnd) throw malformed('Garbage found at the end of client-final-message.');
    if (nonce !== ex.combinedNonce) {
      throw new ScramError('invalid SCRAM response', SqlState.ProtocolViolation, 'Nonce does not match.');
    }
    const withoutProof = text.slice(0, proofAt - 1);
    const authMessage = `${ex.clientFirstBare},${ex.serverFirst},${withoutProof}`;
    const v = this.verifier;
    const clientKey = xor(proof, hmac(v.storedKey, authMessage));
    const proven = timingSafeEqual(sha256(clientKey), v.storedKey);
    if (!proven || this.mock) {
      throw new ScramError(
        `password authentication failed for user "${this.user}"`,
        SqlState.InvalidPassword,
      );
    }
    return Buffer.from(`v=${hmac(v.serverKey, authMessage).toString('base64')}`, 'latin1');
  }
}

/** The n= attribute of client-first-message: a saslname, with ',' and '=' escaped. */
function saslname(user: string): string {
  return Buffer.from(user.replace(/=/g, '=3D').replace(/,/g, '=2C'), 'utf8').toString('latin1');
}

/** The client side (the proxy logging in upstream with a configured password). */
export class ScramClient {
  /** SCRAM-SHA-256-PLUS when the server offers it and channel binding data was given; else SCRAM-SHA-256. */
  readonly mechanism: string;
  private password: string;
  private readonly gs2Header: string;
  private readonly bindingData: Buffer;
  private readonly clientFirstBare: string;
  private readonly clientNonce: string;
  private state: 'client-first' | 'server-first' | 'deriving' | 'server-final' | 'done' = 'client-first';
  private serverSignature: Buffer | undefined;

  /**
   * channelBinding: the tls-server-end-point data of the server's certificate, when
   * on TLS and the certificate allows binding. With it, the client binds when the
   * server offers SCRAM-SHA-256-PLUS, and otherwise says so ("y"), which a server
   * that can bind refuses. Throws when the server offers neither mechanism.
   *
   * user: the n= attribute; PostgreSQL ignores it and libpq sends it empty (the
   * default). nonce: for tests only, the client nonce instead of 18 random bytes.
   */
  constructor(opts: {
    password: string;
    serverMechanisms: string[];
    channelBinding?: Buffer;
    user?: string;
    nonce?: string;
  }) {
    const offered = opts.serverMechanisms;
    if (opts.channelBinding && offered.includes(SCRAM_SHA_256_PLUS)) {
      this.mechanism = SCRAM_SHA_256_PLUS;
      this.gs2Header = GS2_BINDING;
      this.bindingData = opts.channelBinding;
    } else if (offered.includes(SCRAM_SHA_256)) {
      this.mechanism = SCRAM_SHA_256;
      this.gs2Header = opts.channelBinding ? GS2_NO_BINDING.y : GS2_NO_BINDING.n;
      this.bindingData = Buffer.alloc(0);
    } else {
      throw new ScramError(
        "none of the server's SASL authentication mechanisms are supported",
        SqlState.InvalidAuthorizationSpecification,
        `The server offers: ${offered.join(', ') || 'nothing'}.`,
      );
    }
    if (opts.nonce !== undefined && !printable(opts.nonce)) throw new RangeError('invalid SCRAM nonce');
    this.password = opts.password;
    this.clientNonce = opts.nonce ?? randomBytes(NONCE_BYTES).toString('base64');
    this.clientFirstBare = `n=${saslname(opts.user ?? '')},r=${this.clientNonce}`;
  }

  /** client-first-message: the gs2 header, then "n=,r=<nonce>". The body of SASLInitialResponse's data. */
  clientFirst(): Buffer {
    if (this.state !== 'client-first') throw this.fail(outOfOrder('no second client-first-message'));
    this.state = 'server-first';
    return Buffer.from(this.gs2Header + this.clientFirstBare, 'latin1');
  }

  /**
   * Takes server-first-message (AuthenticationSASLContinue); resolves to
   * client-final-message with the proof. The key derivation runs in the thread
   * pool; an iteration count above MAX_SERVER_ITERATIONS is refused.
   */
  async clientFinal(serverFirst: Buffer): Promise<Buffer> {
    if (this.state !== 'server-first') throw this.fail(outOfOrder('server-first-message after client-first'));
    try {
      const text = messageText(serverFirst);
      if (text[0] === 'm') {
        throw new ScramError('server requires an unsupported SCRAM extension', SqlState.FeatureNotSupported);
      }
      const r = new AttributeReader(text);
      const nonce = r.read('r');
      if (
        nonce.length <= this.clientNonce.length ||
        !nonce.startsWith(this.clientNonce) ||
        !printable(nonce)
      ) {
        throw new ScramError(
          'invalid SCRAM response',
          SqlState.ProtocolViolation,
          "The server's nonce does not extend the client's.",
        );
      }
      const salt = decodeBase64(r.read('s'));
      if (!salt?.length) throw malformed('Invalid salt in server-first-message.');
      const iterationText = r.read('i');
      const iterations = /^[0-9]{1,10}$/.test(iterationText) ? Number(iterationText) : 0;
      if (!validIterations(iterations)) throw malformed('Invalid iteration count in server-first-message.');
      if (iterations > MAX_SERVER_ITERATIONS) {
        throw new ScramError(
          'invalid SCRAM response',
          SqlState.ProtocolViolation,
          `The server asks for ${iterations} iterations; at most ${MAX_SERVER_ITERATIONS} are accepted.`,
        );
      }
      while (!r.atEnd) r.readAny(); // optional extensions, ignored
      this.state = 'deriving';
      const { clientKey, storedKey, serverKey } = await deriveKeysAsync(this.password, salt, iterations);
      this.password = '';
      const cbind = Buffer.concat([Buffer.from(this.gs2Header, 'latin1'), this.bindingData]).toString(
        'base64',
      );
      const withoutProof = `c=${cbind},r=${nonce}`;
      const authMessage = `${this.clientFirstBare},${text},${withoutProof}`;
      const proof = xor(clientKey, hmac(storedKey, authMessage));
      this.serverSignature = hmac(serverKey, authMessage);
      this.state = 'server-final';
      return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`, 'latin1');
    } catch (err) {
      throw this.fail(err);
    }
  }

  /**
   * Takes server-final-message (AuthenticationSASLFinal) and throws unless it proves
   * the server knows the verifier: a server that cannot is not the real one.
   */
  verifyServerFinal(serverFinal: Buffer): void {
    if (this.state !== 'server-final') throw this.fail(outOfOrder('server-final-message after client-final'));
    try {
      const text = messageText(serverFinal);
      const r = new AttributeReader(text);
      if (text[0] === 'e') {
        throw new ScramError(
          'error received from server in SCRAM exchange',
          SqlState.InvalidAuthorizationSpecification,
          r.read('e'),
        );
      }
      const signature = decodeBase64(r.read('v'));
      if (signature?.length !== KEY_LENGTH)
        throw malformed('Invalid server signature in server-final-message.');
      while (!r.atEnd) r.readAny(); // optional extensions, ignored
      if (!timingSafeEqual(signature, this.serverSignature!)) {
        throw new ScramError('incorrect server signature', SqlState.InvalidAuthorizationSpecification);
      }
      this.state = 'done';
    } catch (err) {
      throw this.fail(err);
    }
  }

  private fail(err: unknown): unknown {
    this.state = 'done';
    this.password = '';
    this.serverSignature = undefined;
    return err;
  }
}
