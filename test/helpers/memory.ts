/**
 * For the memory tests: a process's resident memory as Linux reports it
 * (/proc/<pid>/status), and a raw protocol client that reads large results
 * without keeping them — it counts bytes and rows, looks only at message headers
 * for DataRow and CopyData, and can be paused to play a slow reader.
 */
import { createHash, type Hash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { ClientAuth } from './client-auth.js';
import { fe, frame, startupMessage } from './wire.js';

/* ------------------------------------------------------------------ memory */

export interface MemoryReading {
  /** VmRSS: resident now, in MiB. */
  rssMb: number;
  /** VmHWM: the highest VmRSS since the process started or since resetPeak(), in MiB. */
  hwmMb: number;
}

export function readMemory(pid: number): MemoryReading {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string): number => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
    if (!m) throw new Error(`/proc/${pid}/status has no ${field}`);
    return Number(m[1]);
  };
  return { rssMb: kb('VmRSS') / 1024, hwmMb: kb('VmHWM') / 1024 };
}

/**
 * Resets the process's VmHWM to its current RSS (Linux 4.0+: "5" to clear_refs),
 * so VmHWM afterwards is the peak of what follows. False if the kernel refused.
 */
export function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/**
 * Follows one process's RSS over a stretch of work: the idle RSS at the start,
 * then the peak, from VmHWM when it could be reset and from samples otherwise
 * (the samples also catch a peak VmHWM would miss if the reset failed).
 * close() (or stop()) must be called, in a finally: the sampling timer is
 * unref'd but keeps running until then.
 */
export class RssWatch {
  readonly baselineMb: number;
  private sampledMax: number;
  private readonly exactPeak: boolean;
  private readonly timer: NodeJS.Timeout;

  constructor(
    readonly pid: number,
    intervalMs = 20,
  ) {
    this.exactPeak = resetPeak(pid);
    this.baselineMb = readMemory(pid).rssMb;
    this.sampledMax = this.baselineMb;
    this.timer = setInterval(() => {
      try {
        this.sample();
      } catch {
        this.close(); // the process is gone; whoever reads the peak will find out
      }
    }, intervalMs).unref();
  }

  /** Reads RSS now (also folded into the peak). */
  sample(): number {
    const { rssMb } = readMemory(this.pid);
    if (rssMb > this.sampledMax) this.sampledMax = rssMb;
    return rssMb;
  }

  /** The peak so far, in MiB. */
  peakMb(): number {
    const now = readMemory(this.pid);
    const peak = Math.max(this.sampledMax, now.rssMb, this.exactPeak ? now.hwmMb : 0);
    this.sampledMax = peak;
    return peak;
  }

  close(): void {
    clearInterval(this.timer);
  }

  stop(): { baselineMb: number; peakMb: number; growthMb: number } {
    this.close();
    const peakMb = this.peakMb();
    return { baselineMb: this.baselineMb, peakMb, growthMb: peakMb - this.baselineMb };
  }
}

export const mb = (n: number): string => `${n.toFixed(1)} MiB`;

/* ------------------------------------------------------------ the client */

export interface StreamResult {
  /** Every byte received from sending the query to ReadyForQuery, included. */
  bytes: number;
  dataRows: number;
  copyData: number;
  /** CommandComplete tags, in order. */
  tags: string[];
  /** The first ErrorResponse's fields by code (C = SQLSTATE, M = message), if any. */
  error?: Record<string, string>;
  /** SHA-256 of those bytes, when asked for. */
  sha256?: string;
  /** The DataRows' first column as text, when asked for (small results only). */
  values?: Array<string | null>;
  ms: number;
}

/** DataRow and CopyData are counted from their headers; everything else is read whole. */
const DATA_ROW = 0x44; // 'D'
const COPY_DATA = 0x64; // 'd'

interface Pending {
  resolve: (r: StreamResult) => void;
  reject: (e: Error) => void;
  result: StreamResult;
  started: number;
  hash?: Hash;
  keepRows: boolean;
}

export class CountingClient {
  /** Bytes received since the connection opened. */
  received = 0;
  private skip = 0;
  /** A message (or header) split across chunks: its parts so far, and how many bytes are missing. */
  private parts: Buffer[] = [];
  private need = 0;
  private headerDone = false;
  private pending: Pending | undefined;
  private loginDone: { resolve: () => void; reject: (e: Error) => void } | undefined;
  private auth: ClientAuth | undefined;
  private closedError: Error | undefined;

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => this.fail(new Error(`connection closed after ${this.received} bytes`)));
  }

  /** Connects and logs in (trust, cleartext, MD5 or SCRAM-SHA-256), up to ReadyForQuery. */
  static async connect(o: {
    host: string;
    port: number;
    user: string;
    password: string;
    database?: string;
  }): Promise<CountingClient> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect({ host: o.host, port: o.port });
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(s);
      });
    });
    const c = new CountingClient(socket);
    c.auth = new ClientAuth(o.user, o.password);
    const ready = new Promise<void>((resolve, reject) => (c.loginDone = { resolve, reject }));
    socket.write(startupMessage({ user: o.user, database: o.database ?? 'postgres' }));
    try {
      await ready;
    } catch (err) {
      socket.destroy();
      throw err;
    }
    return c;
  }

  /**
   * Sends a simple Query and resolves at ReadyForQuery with what was counted.
   * An ErrorResponse does not reject: it is in the result.
   */
  query(sql: string, opts: { sha256?: boolean; keepRows?: boolean } = {}): Promise<StreamResult> {
    if (this.pending) return Promise.reject(new Error('a query is already running'));
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => {
      this.pending = {
        resolve,
        reject,
        result: {
          bytes: 0,
          dataRows: 0,
          copyData: 0,
          tags: [],
          ms: 0,
          values: opts.keepRows ? [] : undefined,
        },
        started: performance.now(),
        hash: opts.sha256 ? createHash('sha256') : undefined,
        keepRows: opts.keepRows ?? false,
      };
      this.socket.write(fe.query(sql));
    });
  }

  /** The first column of the first row of a small query. */
  async scalar(sql: string): Promise<string | null> {
    const r = await this.query(sql, { keepRows: true });
    if (r.error) throw new Error(`${sql}: ${r.error.C} ${r.error.M}`);
    return r.values![0] ?? null;
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  close(): void {
    if (!this.socket.destroyed) this.socket.end(fe.terminate());
    this.socket.destroy();
  }

  private fail(err: Error): void {
    this.closedError ??= err;
    const p = this.pending;
    this.pending = undefined;
    p?.reject(err);
    const l = this.loginDone;
    this.loginDone = undefined;
    l?.reject(err);
  }

  private onData(chunk: Buffer): void {
    this.received += chunk.length;
    const p = this.pending;
    if (p) {
      p.result.bytes += chunk.length;
      p.hash?.update(chunk);
    }
    const len = chunk.length;
    let pos = 0;
    while (pos < len) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, len - pos);
        this.skip -= n;
        pos += n;
        continue;
      }
      if (this.need > 0) {
        // Finishing a split header or message.
        const n = Math.min(this.need, len - pos);
        this.parts.push(chunk.subarray(pos, pos + n));
        this.need -= n;
        pos += n;
        if (this.need > 0) continue;
        const whole = Buffer.concat(this.parts);
        this.parts = [];
        if (!this.headerDone) {
          this.headerDone = true;
          this.startMessage(whole);
        } else {
          this.headerDone = false;
          this.message(whole[0]!, whole.subarray(5));
        }
        continue;
      }
      if (len - pos < 5) {
        this.parts = [chunk.subarray(pos)];
        this.need = 5 - (len - pos);
        this.headerDone = false;
        pos = len;
        continue;
      }
      const total = 1 + chunk.readInt32BE(pos + 1);
      const code = chunk[pos]!;
      if (this.counted(code)) {
        this.skip = total;
        continue;
      }
      if (pos + total <= len) {
        this.message(code, chunk.subarray(pos + 5, pos + total));
        pos += total;
        continue;
      }
      this.parts = [chunk.subarray(pos)];
      this.need = total - (len - pos);
      this.headerDone = true;
      pos = len;
    }
  }

  /** Whether a message of this type is only counted (its body skipped). */
  private counted(code: number): boolean {
    const p = this.pending;
    if (code === DATA_ROW) {
      if (p) p.result.dataRows++;
      return !p?.keepRows;
    }
    if (code === COPY_DATA) {
      if (p) p.result.copyData++;
      return true;
    }
    return false;
  }

  /** A header assembled from pieces: `head` holds exactly its 5 bytes. */
  private startMessage(head: Buffer): void {
    const code = head[0]!;
    const total = 1 + head.readInt32BE(1);
    if (this.counted(code)) {
      this.skip = total - 5;
      return;
    }
    if (total === 5) {
      this.headerDone = false;
      this.message(code, Buffer.alloc(0));
      return;
    }
    this.parts = [head];
    this.need = total - 5;
  }

  private message(code: number, body: Buffer): void {
    const type = String.fromCharCode(code);
    const p = this.pending;
    switch (type) {
      case 'R': {
        const answer = this.auth!.respond(body);
        if (answer) this.socket.write(frame('p', answer));
        return;
      }
      case 'E': {
        const fields = errorFieldsOf(body);
        if (this.loginDone) return this.fail(new Error(`login failed: ${fields.C} ${fields.M}`));
        if (p && !p.result.error) p.result.error = fields;
        return;
      }
      case 'C':
        p?.result.tags.push(body.toString('utf8', 0, body.length - 1));
        return;
      case 'D':
        if (p?.keepRows) {
          const n = body.readInt32BE(2);
          p.result.values!.push(n < 0 ? null : body.toString('utf8', 6, 6 + n));
        }
        return;
      case 'Z': {
        const l = this.loginDone;
        this.loginDone = undefined;
        l?.resolve();
        if (p) {
          this.pending = undefined;
          p.result.ms = performance.now() - p.started;
          if (p.hash) p.result.sha256 = p.hash.digest('hex');
          p.resolve(p.result);
        }
        return;
      }
      default:
        return; // ParameterStatus, BackendKeyData, RowDescription, CopyOutResponse, NoticeResponse, ...
    }
  }
}

function errorFieldsOf(body: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < body.length && body[i] !== 0) {
    const key = String.fromCharCode(body[i]!);
    const end = body.indexOf(0, i + 1);
    out[key] = body.toString('utf8', i + 1, end);
    i = end + 1;
  }
  return out;
}
