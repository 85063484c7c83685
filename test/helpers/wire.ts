/**
 * A minimal raw PostgreSQL protocol client for tests: connects (through the
 * proxy or straight to the server), authenticates with SCRAM-SHA-256, MD5 or a
 * cleartext password, and then sends arbitrary bytes and reads typed backend
 * messages one at a time, with a timeout, so a test can assert the exact message
 * sequence a client sees — and what happens when it sends something malformed.
 */
import { ClientAuth } from './client-auth.js';
import { connect, type Socket } from 'node:net';

/* ------------------------------------------------------------------ encoding */

/** A typed frontend message: code byte, Int32 length, body. */
export function frame(code: string, body: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(5);
  head[0] = code.charCodeAt(0);
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

const cstr = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');
const int16 = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeInt16BE(n);
  return b;
};
const int32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};

/** Frontend messages, named as in the PostgreSQL docs. */
export const fe = {
  query: (sql: string): Buffer => frame('Q', cstr(sql)),
  parse: (name: string, sql: string, types: number[] = []): Buffer =>
    frame('P', Buffer.concat([cstr(name), cstr(sql), int16(types.length), ...types.map(int32)])),
  /** Text-format parameters (null for SQL NULL), text-format results. */
  bind: (portal: string, statement: string, params: Array<string | null> = []): Buffer =>
    frame(
      'B',
      Buffer.concat([
        cstr(portal),
        cstr(statement),
        int16(0),
        int16(params.length),
        ...params.map((p) => {
          if (p === null) return int32(-1);
          const v = Buffer.from(p, 'utf8');
          return Buffer.concat([int32(v.length), v]);
        }),
        int16(0),
      ]),
    ),
  execute: (portal = '', maxRows = 0): Buffer => frame('E', Buffer.concat([cstr(portal), int32(maxRows)])),
  describe: (kind: 'S' | 'P', name = ''): Buffer =>
    frame('D', Buffer.concat([Buffer.from(kind), cstr(name)])),
  close: (kind: 'S' | 'P', name = ''): Buffer => frame('C', Buffer.concat([Buffer.from(kind), cstr(name)])),
  sync: (): Buffer => frame('S'),
  flush: (): Buffer => frame('H'),
  terminate: (): Buffer => frame('X'),
  /** FunctionCall by OID with text arguments, text result. */
  functionCall: (oid: number, args: string[] = []): Buffer =>
    frame(
      'F',
      Buffer.concat([
        int32(oid),
        int16(0),
        int16(args.length),
        ...args.map((a) => {
          const v = Buffer.from(a, 'utf8');
          return Buffer.concat([int32(v.length), v]);
        }),
        int16(0),
      ]),
    ),
  copyData: (data: string | Buffer): Buffer => frame('d', Buffer.from(data)),
  copyDone: (): Buffer => frame('c'),
  copyFail: (reason: string): Buffer => frame('f', cstr(reason)),
};

/** An untyped startup-phase packet: Int32 length, then the body. */
export function untyped(body: Buffer): Buffer {
  return Buffer.concat([int32(body.length + 4), body]);
}

export function startupMessage(params: Record<string, string>): Buffer {
  const parts = [int32(196608)];
  for (const [k, v] of Object.entries(params)) parts.push(cstr(k), cstr(v));
  parts.push(Buffer.from([0]));
  return untyped(Buffer.concat(parts));
}

/* ------------------------------------------------------------------ decoding */

export interface BackendMessage {
  /** The type byte as a character ('Z', 'E', 'D', ...). */
  code: string;
  /** The body, without type byte and length. */
  body: Buffer;
}

export const BackendName: Record<string, string> = {
  R: 'Authentication',
  K: 'BackendKeyData',
  '2': 'BindComplete',
  '3': 'CloseComplete',
  C: 'CommandComplete',
  d: 'CopyData',
  c: 'CopyDone',
  G: 'CopyInResponse',
  H: 'CopyOutResponse',
  W: 'CopyBothResponse',
  D: 'DataRow',
  I: 'EmptyQueryResponse',
  E: 'ErrorResponse',
  V: 'FunctionCallResponse',
  v: 'NegotiateProtocolVersion',
  n: 'NoData',
  N: 'NoticeResponse',
  A: 'NotificationResponse',
  t: 'ParameterDescription',
  S: 'ParameterStatus',
  '1': 'ParseComplete',
  s: 'PortalSuspended',
  Z: 'ReadyForQuery',
  T: 'RowDescription',
};

/** ErrorResponse / NoticeResponse fields by their one-letter code (C = SQLSTATE, M = message, ...). */
export function errorFields(m: BackendMessage): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < m.body.length && m.body[i] !== 0) {
    const key = String.fromCharCode(m.body[i]!);
    const end = m.body.indexOf(0, i + 1);
    out[key] = m.body.toString('utf8', i + 1, end);
    i = end + 1;
  }
  return out;
}

/** The first column of a DataRow as text (null for SQL NULL). */
export function firstColumn(m: BackendMessage): string | null {
  const len = m.body.readInt32BE(2);
  return len < 0 ? null : m.body.toString('utf8', 6, 6 + len);
}

/**
 * A short label for a message, for asserting sequences: the message name, plus
 * the SQLSTATE of an error, the status of ReadyForQuery, the tag of
 * CommandComplete: `ErrorResponse 25006`, `ReadyForQuery I`, `CommandComplete SELECT 1`.
 */
export function label(m: BackendMessage): string {
  const name = BackendName[m.code] ?? `Unknown(${m.code})`;
  switch (m.code) {
    case 'E':
      return `${name} ${errorFields(m).C}`;
    case 'Z':
      return `${name} ${String.fromCharCode(m.body[0]!)}`;
    case 'C':
      return `${name} ${m.body.toString('utf8', 0, m.body.length - 1)}`;
    default:
      return name;
  }
}

/* -------------------------------------------------------------------- client */

export interface WireOptions {
  host: string;
  port: number;
  user: string;
  password: string;
  database?: string;
  /** Extra startup parameters. */
  params?: Record<string, string>;
  timeoutMs?: number;
}

/** Thrown by next() when no message arrives in time. */
export class WireTimeout extends Error {}

const CLOSED: BackendMessage = { code: 'closed', body: Buffer.alloc(0) };

export class WireClient {
  private buf: Buffer = Buffer.alloc(0);
  private readonly queue: BackendMessage[] = [];
  private waiter: (() => void) | undefined;
  private ended = false;
  /** ParameterStatus values reported during startup and after. */
  readonly parameters = new Map<string, string>();
  /** The BackendKeyData the client was given. */
  processId = 0;
  secretKey: Buffer = Buffer.alloc(0);
  /** Resolves when the socket has closed. */
  readonly closed: Promise<void>;

  private constructor(
    readonly socket: Socket,
    readonly timeoutMs: number,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
      while (this.buf.length >= 5) {
        const total = 1 + this.buf.readInt32BE(1);
        if (this.buf.length < total) break;
        this.queue.push({
          code: String.fromCharCode(this.buf[0]!),
          body: Buffer.from(this.buf.subarray(5, total)),
        });
        this.buf = this.buf.subarray(total);
      }
      this.wake();
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      }),
    );
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  /** Opens a TCP connection without sending anything. */
  static open(host: string, port: number, timeoutMs = 5000): Promise<WireClient> {
    return new Promise((resolve, reject) => {
      const s = connect({ host, port });
      s.once('connect', () => resolve(new WireClient(s, timeoutMs)));
      s.once('error', reject);
    });
  }

  /** Connects, authenticates and reads up to the first ReadyForQuery. */
  static async connect(o: WireOptions): Promise<WireClient> {
    const c = await WireClient.open(o.host, o.port, o.timeoutMs);
    try {
      c.write(startupMessage({ user: o.user, database: o.database ?? 'postgres', ...o.params }));
      await c.authenticate(o.user, o.password);
      for (;;) {
        const m = await c.next();
        if (m.code === 'Z') return c;
        if (m.code === 'E' || m.code === 'closed') {
          throw new Error(`startup failed: ${m.code === 'E' ? JSON.stringify(errorFields(m)) : 'closed'}`);
        }
      }
    } catch (err) {
      c.destroy();
      throw err;
    }
  }

  private async authenticate(user: string, password: string): Promise<void> {
    const auth = new ClientAuth(user, password);
    for (;;) {
      const m = await this.next();
      if (m.code === 'E') throw new Error(`authentication failed: ${JSON.stringify(errorFields(m))}`);
      if (m.code !== 'R') throw new Error(`unexpected message during authentication: ${label(m)}`);
      const answer = auth.respond(m.body);
      if (answer) this.write(frame('p', answer));
      if (m.body.readInt32BE(0) === 0) return;
    }
  }

  write(...bytes: Buffer[]): void {
    this.socket.write(bytes.length === 1 ? bytes[0]! : Buffer.concat(bytes));
  }

  /**
   * The next backend message; `{ code: 'closed' }` once the connection has closed
   * and every message before the close was read. Throws WireTimeout if nothing
   * arrives in time. Records ParameterStatus and BackendKeyData on the way.
   */
  async next(timeoutMs = this.timeoutMs): Promise<BackendMessage> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length === 0) {
      if (this.ended) return CLOSED;
      const left = deadline - Date.now();
      if (left <= 0) throw new WireTimeout(`no message within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    const m = this.queue.shift()!;
    if (m.code === 'S') {
      const name = m.body.toString('utf8', 0, m.body.indexOf(0));
      const value = m.body.toString('utf8', name.length + 1, m.body.length - 1);
      this.parameters.set(name, value);
    } else if (m.code === 'K') {
      this.processId = m.body.readInt32BE(0);
      this.secretKey = Buffer.from(m.body.subarray(4));
    }
    return m;
  }

  /** Reads messages up to and including the next ReadyForQuery (or the close). */
  async untilReady(timeoutMs = this.timeoutMs): Promise<BackendMessage[]> {
    const out: BackendMessage[] = [];
    for (;;) {
      const m = await this.next(timeoutMs);
      out.push(m);
      if (m.code === 'Z' || m.code === 'closed') return out;
    }
  }

  /** Like untilReady, as labels, with ParameterStatus and NoticeResponse left out. */
  async labelsUntilReady(timeoutMs = this.timeoutMs): Promise<string[]> {
    return (await this.untilReady(timeoutMs)).filter((m) => m.code !== 'S' && m.code !== 'N').map(label);
  }

  /** Reads messages until the connection closes (they are returned). */
  async untilClosed(timeoutMs = this.timeoutMs): Promise<BackendMessage[]> {
    const out: BackendMessage[] = [];
    for (;;) {
      const m = await this.next(timeoutMs);
      if (m.code === 'closed') return out;
      out.push(m);
    }
  }

  /** Sends simple Query messages and returns the label sequence up to ReadyForQuery. */
  async simple(sql: string): Promise<string[]> {
    this.write(fe.query(sql));
    return this.labelsUntilReady();
  }

  get isClosed(): boolean {
    return this.ended;
  }

  /** Sends Terminate and waits for the close. */
  async end(): Promise<void> {
    if (!this.ended) {
      this.socket.end(fe.terminate());
      await Promise.race([this.closed, new Promise((r) => setTimeout(r, 1000))]);
    }
    this.destroy();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Sends a CancelRequest on a fresh connection and waits until the other side closes it. */
export async function sendCancelRequest(
  host: string,
  port: number,
  processId: number,
  secretKey: Buffer,
): Promise<void> {
  const c = await WireClient.open(host, port);
  c.write(untyped(Buffer.concat([int32(80877102), int32(processId), secretKey])));
  await Promise.race([c.closed, new Promise((r) => setTimeout(r, 2000))]);
  c.destroy();
}
