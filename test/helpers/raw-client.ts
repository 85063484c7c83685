/**
 * A tiny PostgreSQL frontend for tests that need exact control of the bytes:
 * arbitrary startup keys and protocol versions, SSLRequest, CancelRequest,
 * SCRAM-SHA-256 login. Written independently of src/protocol so the proxy's
 * codec is not used to check itself.
 */
import { ClientAuth } from './client-auth.js';
import { connect, type Socket } from 'node:net';

export interface BackendMessage {
  /** The message type as a character: 'R', 'E', 'Z', ... */
  type: string;
  /** The message body (after the type byte and length). */
  body: Buffer;
}

export const PROTOCOL_3_0 = 3 << 16;
export const PROTOCOL_3_2 = (3 << 16) | 2;
export const PROTOCOL_2_0 = 2 << 16;

function cstr(s: string): Buffer {
  return Buffer.concat([Buffer.from(s, 'utf8'), Buffer.from([0])]);
}

/** A StartupMessage with the given keys, in order, and protocol version. */
export function encodeStartup(params: Array<[string, string]>, version = PROTOCOL_3_0): Buffer {
  const body = Buffer.concat([...params.flatMap(([k, v]) => [cstr(k), cstr(v)]), Buffer.from([0])]);
  const head = Buffer.alloc(8);
  head.writeInt32BE(8 + body.length, 0);
  head.writeInt32BE(version, 4);
  return Buffer.concat([head, body]);
}

export function encodeSslRequest(): Buffer {
  const b = Buffer.alloc(8);
  b.writeInt32BE(8, 0);
  b.writeInt32BE(80877103, 4);
  return b;
}

export function encodeCancel(processId: number, secretKey: Buffer): Buffer {
  const b = Buffer.alloc(12 + secretKey.length);
  b.writeInt32BE(b.length, 0);
  b.writeInt32BE(80877102, 4);
  b.writeInt32BE(processId, 8);
  secretKey.copy(b, 12);
  return b;
}

function typed(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

export const encodeQueryMessage = (sql: string): Buffer => typed('Q', cstr(sql));
export const encodeTerminateMessage = (): Buffer => typed('X', Buffer.alloc(0));

/** ErrorResponse / NoticeResponse fields by their one-letter code. */
export function errorFields(body: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < body.length && body[i] !== 0) {
    const code = String.fromCharCode(body[i]!);
    const end = body.indexOf(0, i + 1);
    out.set(code, body.subarray(i + 1, end).toString('utf8'));
    i = end + 1;
  }
  return out;
}

export class RawClient {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  closed = false;

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  static connect(host: string, port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = connect({ host, port });
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new RawClient(s));
      });
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private async waitFor(n: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed (wanted ${n} bytes, have ${this.buf.length})`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  send(b: Buffer): void {
    this.socket.write(b);
  }

  /** One raw byte (the answer to SSLRequest). */
  async readByte(timeoutMs = 5000): Promise<string> {
    await this.waitFor(1, timeoutMs);
    const c = String.fromCharCode(this.buf[0]!);
    this.buf = this.buf.subarray(1);
    return c;
  }

  async read(timeoutMs = 5000): Promise<BackendMessage> {
    await this.waitFor(5, timeoutMs);
    const len = this.buf.readInt32BE(1);
    await this.waitFor(1 + len, timeoutMs);
    const msg = { type: String.fromCharCode(this.buf[0]!), body: Buffer.from(this.buf.subarray(5, 1 + len)) };
    this.buf = this.buf.subarray(1 + len);
    return msg;
  }

  /** Reads messages until one of type `type` (included) or the connection closes. */
  async readUntil(types: string, timeoutMs = 5000): Promise<BackendMessage[]> {
    const out: BackendMessage[] = [];
    for (;;) {
      const m = await this.read(timeoutMs);
      out.push(m);
      if (types.includes(m.type)) return out;
    }
  }

  /** Resolves once the server closed the connection (after reading what is left). */
  async waitClosed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('connection still open');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 50);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /**
   * Answers the authentication exchange (trust, cleartext, MD5, SCRAM-SHA-256)
   * and reads up to ReadyForQuery. Returns every message after the request
   * (ParameterStatus, BackendKeyData, ...). Throws on an ErrorResponse.
   */
  async login(user: string, password: string, first?: BackendMessage): Promise<BackendMessage[]> {
    const seen: BackendMessage[] = [];
    const auth = new ClientAuth(user, password);
    let m = first ?? (await this.read());
    for (;;) {
      if (m.type === 'E') throw new Error(`login failed: ${errorFields(m.body).get('M')}`);
      if (m.type === 'R') {
        const answer = auth.respond(m.body);
        if (answer) this.send(typed('p', answer));
      } else {
        seen.push(m);
        if (m.type === 'Z') return seen;
      }
      m = await this.read();
    }
  }

  /** Sends a simple Query and reads up to ReadyForQuery. */
  async query(sql: string, timeoutMs = 5000): Promise<BackendMessage[]> {
    this.send(encodeQueryMessage(sql));
    return this.readUntil('Z', timeoutMs);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** The values of the DataRows in `msgs`, as text (first column of each row). */
export function firstColumn(msgs: BackendMessage[]): Array<string | null> {
  return msgs
    .filter((m) => m.type === 'D')
    .map((m) => {
      const len = m.body.readInt32BE(2);
      return len < 0 ? null : m.body.subarray(6, 6 + len).toString('utf8');
    });
}
