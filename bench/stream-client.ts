/**
 * A minimal PostgreSQL client for the streaming cells, run as a process of its
 * own: it logs in (SCRAM-SHA-256, with the project's own SCRAM client), sends
 * one simple Query, and then reads only message headers, skipping every body,
 * until ReadyForQuery. It prints one JSON line: the time from sending the query
 * to the last byte, the bytes and messages received, and its own CPU time (to
 * show the client is not what limits the measurement).
 *
 * Once logged in it prints {"ready":true} and waits for a line on stdin before
 * it sends the query, so the caller can measure the query alone.
 *
 *   BENCH_PASSWORD=... node --import tsx bench/stream-client.ts HOST PORT USER DATABASE SQL
 */
import { connect, type Socket } from 'node:net';
import { ScramClient } from '../src/auth/scram.js';
import { decodeSaslMechanisms } from '../src/protocol/backend-messages.js';
import { AuthCode } from '../src/protocol/codes.js';
import {
  encodeAuthResponse,
  encodePasswordMessage,
  encodeQuery,
  encodeSaslInitialResponse,
  encodeStartupMessage,
  encodeTerminate,
} from '../src/protocol/frontend-messages.js';

export interface StreamResult {
  seconds: number;
  bytes: number;
  /** DataRow or CopyData messages. */
  rows: number;
  /** Reads from the socket (more, smaller reads cost the client more). */
  reads: number;
  clientUserSeconds: number;
  clientSystemSeconds: number;
}

let reads = 0;

/**
 * While the result streams, a read of less than this many bytes makes the
 * client wait 1 ms before it reads again: PostgreSQL sends in 8 kB pieces, and
 * waking up for each would cost the client more CPU than the proxy it measures.
 * Meanwhile the data waits in the socket's receive buffer (megabytes, tuned by
 * the kernel), so the sender is not held up.
 */
const BATCH_BYTES = 256 * 1024;
let batching = false;

const ERROR = 0x45; // 'E'
const READY = 0x5a; // 'Z'
const DATA_ROW = 0x44; // 'D'
const COPY_DATA = 0x64; // 'd'
const AUTH = 0x52; // 'R'

function errorText(body: Buffer): string {
  const fields = new Map<string, string>();
  let i = 0;
  while (i < body.length && body[i] !== 0) {
    const end = body.indexOf(0, i + 1);
    fields.set(String.fromCharCode(body[i]!), body.toString('utf8', i + 1, end));
    i = end + 1;
  }
  return `${fields.get('S') ?? 'ERROR'} ${fields.get('C') ?? ''} ${fields.get('M') ?? ''}`.trim();
}

/**
 * The socket reads into one reused buffer (net's onread), so no buffer is
 * allocated per read; whoever reads at the moment is the sink, and must copy
 * what it keeps.
 */
let sink: (chunk: Buffer) => void = () => undefined;
const readBuffer = Buffer.allocUnsafe(1 << 20);

/** Whole messages during login, where speed does not matter. */
class LoginReader {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  private failure: Error | undefined;

  constructor(private readonly socket: Socket) {
    sink = this.onData;
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => this.fail(new Error('the server closed the connection')));
  }

  private readonly onData = (chunk: Buffer): void => {
    this.buf = Buffer.concat([this.buf, chunk]); // a copy
    this.wake?.();
  };

  private fail(err: Error): void {
    this.failure ??= err;
    this.wake?.();
  }

  async next(): Promise<{ code: number; body: Buffer }> {
    for (;;) {
      if (this.buf.length >= 5) {
        const len = this.buf.readInt32BE(1);
        if (this.buf.length >= 1 + len) {
          const code = this.buf[0]!;
          const body = this.buf.subarray(5, 1 + len);
          this.buf = this.buf.subarray(1 + len);
          return { code, body };
        }
      }
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }

  /** Stops reading; returns what arrived beyond the last message taken. */
  detach(): Buffer {
    // Nothing is due before the query is sent: reading waits until then.
    this.socket.pause();
    return this.buf;
  }
}

async function login(socket: Socket, user: string, database: string, password: string): Promise<Buffer> {
  const reader = new LoginReader(socket);
  socket.write(
    encodeStartupMessage([
      ['user', user],
      ['database', database],
      ['application_name', 'bench-stream-client'],
    ]),
  );
  let scram: ScramClient | undefined;
  for (;;) {
    const { code, body } = await reader.next();
    if (code === ERROR) throw new Error(`login refused: ${errorText(body)}`);
    if (code === READY) return reader.detach();
    if (code !== AUTH) continue; // ParameterStatus, BackendKeyData, notices
    const kind = body.readInt32BE(0);
    const data = body.subarray(4);
    switch (kind) {
      case AuthCode.Ok:
        break;
      case AuthCode.CleartextPassword:
        socket.write(encodePasswordMessage(password));
        break;
      case AuthCode.SASL:
        scram = new ScramClient({ password, serverMechanisms: decodeSaslMechanisms(data) });
        socket.write(encodeSaslInitialResponse(scram.mechanism, scram.clientFirst()));
        break;
      case AuthCode.SASLContinue:
        if (!scram) throw new Error('SASLContinue before SASL');
        socket.write(encodeAuthResponse(await scram.clientFinal(data)));
        break;
      case AuthCode.SASLFinal:
        scram?.verifyServerFinal(data);
        break;
      default:
        throw new Error(`unsupported authentication request ${kind}`);
    }
  }
}

/**
 * Reads the answer to the query: headers only, bodies skipped, except those of
 * ErrorResponse (to report it) and ReadyForQuery (the end).
 */
function drain(socket: Socket, leftover: Buffer): Promise<{ bytes: number; rows: number }> {
  return new Promise((resolve, reject) => {
    let bytes = 0;
    let rows = 0;
    let skip = 0; // body bytes of the current message still to skip
    let header: Buffer | undefined; // a header split across chunks
    let keep: { code: number; parts: Buffer[] } | undefined; // a body we read
    let error: string | undefined;
    const finish = (err?: Error): void => {
      sink = () => undefined;
      batching = false;
      if (err) reject(err);
      else if (error) reject(new Error(error));
      else resolve({ bytes, rows });
    };
    const onData = (chunk: Buffer): void => {
      bytes += chunk.length;
      let pos = 0;
      const n = chunk.length;
      while (pos < n) {
        if (skip > 0) {
          const take = Math.min(skip, n - pos);
          keep?.parts.push(Buffer.from(chunk.subarray(pos, pos + take)));
          skip -= take;
          pos += take;
          if (skip === 0 && keep) {
            const body = Buffer.concat(keep.parts);
            if (keep.code === ERROR) error ??= errorText(body);
            keep = undefined;
          }
          continue;
        }
        let code: number;
        let len: number;
        if (header || n - pos < 5) {
          const need = 5 - (header?.length ?? 0);
          const part = chunk.subarray(pos, pos + need);
          header = header ? Buffer.concat([header, part]) : Buffer.from(part);
          pos += part.length;
          if (header.length < 5) continue;
          code = header[0]!;
          len = header.readInt32BE(1);
          header = undefined;
        } else {
          code = chunk[pos]!;
          len = chunk.readInt32BE(pos + 1);
          pos += 5;
        }
        if (code === DATA_ROW || code === COPY_DATA) rows++;
        else if (code === READY) return finish();
        else if (code === ERROR) keep = { code, parts: [] };
        skip = len - 4;
      }
    };
    sink = onData;
    batching = true;
    socket.resume();
    socket.once('error', (err) => finish(err));
    socket.once('close', () => finish(new Error('the server closed the connection')));
    if (leftover.length > 0) onData(leftover);
  });
}

async function main(): Promise<void> {
  const [host, port, user, database, sql] = process.argv.slice(2);
  if (!host || !port || !user || !database || !sql) {
    process.stderr.write(
      'usage: stream-client.ts HOST PORT USER DATABASE SQL (password in BENCH_PASSWORD)\n',
    );
    process.exit(2);
  }
  const password = process.env.BENCH_PASSWORD ?? '';
  const socket = connect({
    host,
    port: Number(port),
    noDelay: true,
    onread: {
      buffer: readBuffer,
      callback: (n: number, buf: Uint8Array) => {
        reads++;
        sink(Buffer.from(buf.buffer, buf.byteOffset, n));
        if (batching && n < BATCH_BYTES) {
          setTimeout(() => {
            if (!socket.destroyed) socket.resume();
          }, 1);
          return false; // stop reading until then
        }
        return true;
      },
    },
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const leftover = await login(socket, user, database, password);
  // Logged in: the caller starts measuring, then says go.
  process.stdout.write('{"ready":true}\n');
  await new Promise<void>((resolve) => {
    process.stdin.once('data', () => resolve());
    process.stdin.once('end', () => resolve());
  });
  process.stdin.pause();
  const cpu = process.cpuUsage();
  reads = 0;
  const started = process.hrtime.bigint();
  socket.write(encodeQuery(sql));
  const { bytes, rows } = await drain(socket, leftover);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const used = process.cpuUsage(cpu);
  socket.end(encodeTerminate());
  const result: StreamResult = {
    seconds,
    bytes,
    rows,
    reads,
    clientUserSeconds: used.user / 1e6,
    clientSystemSeconds: used.system / 1e6,
  };
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((err: unknown) => {
  process.stderr.write(`stream-client: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
