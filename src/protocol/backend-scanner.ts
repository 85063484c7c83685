/**
 * The upstream fast path. Looks only at message headers: messages the session
 * does not care about (DataRow, CopyData, RowDescription, ...) are forwarded as
 * the raw bytes they arrived in, in runs as long as the chunk, never decoded and
 * never copied. Only the few message types the session asks for are assembled
 * whole and handed to it; it may keep, replace or drop each.
 */

/** What the session does with a message it asked to see. */
export type Verdict = Buffer | null | undefined; // replacement | drop | keep as is

export type Inspector = (code: number, msg: Buffer) => Verdict;

/**
 * Told of each message of a counted type from its header alone (the body is
 * never assembled); returns true to drop the message instead of forwarding it.
 */
export type Counter = (code: number, length: number) => boolean;

export class BackendScanner {
  /** Bytes of a passthrough message body still to come. */
  private skip = 0;
  /** An interesting message (or a header) split across chunks. */
  private partial: Buffer[] = [];
  private partialBytes = 0;
  /** Length of the message being assembled, once its header is known (-1 while not). */
  private partialTotal = -1;
  /** Set by halt(): nothing after the current message is emitted. */
  private halted = false;
  /** The bytes being skipped belong to a dropped message: not forwarded either. */
  private dropping = false;

  constructor(
    /** interesting[code] is true for message types the inspector must see. */
    private readonly interesting: Uint8Array,
    private readonly inspect: Inspector,
    private readonly maxInspectedLength: number,
    /** counted[code] is true for message types `count` is told of (never assembled). */
    private readonly counted?: Uint8Array,
    private readonly count?: Counter,
  ) {}

  /** Stops the stream after the message being inspected (the session is ending). */
  halt(): void {
    this.halted = true;
  }

  /**
   * Returns the pieces to write, in order. Throws RangeError if a message the
   * session must inspect claims more than maxInspectedLength bytes.
   */
  scan(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    if (this.halted) return out;
    const len = chunk.length;
    let pos = 0;
    let runStart = 0;

    if (this.partialBytes > 0) {
      pos = this.continuePartial(chunk, out);
      if (this.halted) return out;
      runStart = pos;
    }

    while (pos < len) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, len - pos);
        this.skip -= n;
        pos += n;
        if (this.dropping) {
          runStart = pos;
          if (this.skip === 0) this.dropping = false;
        }
        continue;
      }
      if (len - pos < 5) {
        // A header split across chunks: hold it until the next chunk tells what it is.
        if (pos > runStart) out.push(chunk.subarray(runStart, pos));
        this.startPartial(chunk.subarray(pos));
        return out;
      }
      const code = chunk[pos]!;
      const total = 1 + chunk.readInt32BE(pos + 1);
      if (total < 5) throw new RangeError(`upstream message length ${total - 1} out of bounds`);
      if (this.interesting[code] !== 1) {
        if (this.counted?.[code] === 1 && this.count!(code, total)) {
          if (pos > runStart) out.push(chunk.subarray(runStart, pos));
          runStart = pos;
          this.dropping = true;
        }
        this.skip = total;
        continue;
      }
      this.checkLength(total);
      if (pos + total > len) {
        if (pos > runStart) out.push(chunk.subarray(runStart, pos));
        this.startPartial(chunk.subarray(pos));
        this.partialTotal = total;
        return out;
      }
      const msg = chunk.subarray(pos, pos + total);
      const verdict = this.inspect(code, msg);
      if (verdict !== undefined) {
        if (pos > runStart) out.push(chunk.subarray(runStart, pos));
        if (verdict !== null) out.push(verdict);
        runStart = pos + total;
      }
      if (this.halted) {
        if (verdict === undefined && pos + total > runStart) out.push(chunk.subarray(runStart, pos + total));
        return out;
      }
      pos += total;
    }
    if (len > runStart) out.push(runStart === 0 ? chunk : chunk.subarray(runStart));
    return out;
  }

  private checkLength(total: number): void {
    if (total < 5 || total > this.maxInspectedLength + 1) {
      throw new RangeError(`upstream message length ${total} out of bounds`);
    }
  }

  private startPartial(bytes: Buffer): void {
    // Copy: the chunk may be reused by the caller after scan() returns.
    this.partial = [Buffer.from(bytes)];
    this.partialBytes = bytes.length;
    this.partialTotal = -1;
  }

  /** Feeds the start of `chunk` to the split message; returns how many bytes it took. */
  private continuePartial(chunk: Buffer, out: Buffer[]): number {
    let used = 0;
    if (this.partialTotal < 0) {
      const need = 5 - this.partialBytes;
      const take = Math.min(need, chunk.length);
      this.partial.push(chunk.subarray(0, take));
      this.partialBytes += take;
      used = take;
      if (this.partialBytes < 5) {
        this.partial = [Buffer.concat(this.partial)];
        return used;
      }
      const header = Buffer.concat(this.partial);
      const code = header[0]!;
      const total = 1 + header.readInt32BE(1);
      if (total < 5) throw new RangeError(`upstream message length ${total - 1} out of bounds`);
      if (this.interesting[code] !== 1) {
        const drop = this.counted?.[code] === 1 && this.count!(code, total);
        if (!drop) out.push(header);
        this.partial = [];
        this.partialBytes = 0;
        this.skip = total - 5;
        this.dropping = drop && this.skip > 0;
        return used;
      }
      this.checkLength(total);
      this.partial = [header];
      this.partialTotal = total;
    }
    const take = Math.min(this.partialTotal - this.partialBytes, chunk.length - used);
    this.partial.push(Buffer.from(chunk.subarray(used, used + take)));
    this.partialBytes += take;
    used += take;
    if (this.partialBytes === this.partialTotal) {
      const msg = Buffer.concat(this.partial, this.partialTotal);
      this.partial = [];
      this.partialBytes = 0;
      this.partialTotal = -1;
      const verdict = this.inspect(msg[0]!, msg);
      if (verdict === undefined) out.push(msg);
      else if (verdict !== null) out.push(verdict);
    }
    return used;
  }
}

/** Builds the `interesting` table from a list of codes. */
export function codeSet(codes: readonly number[]): Uint8Array {
  const t = new Uint8Array(256);
  for (const c of codes) t[c] = 1;
  return t;
}
