/**
 * Cuts a byte stream into whole messages. Bytes are kept as the chunks they
 * arrived in until a message is complete, then joined once, so a message claimed
 * to be large costs only the bytes actually sent, and the common case (whole
 * messages inside one chunk) is a subarray with no copy.
 */
export type FrameResult =
  | { kind: 'message'; code: number; msg: Buffer }
  | { kind: 'incomplete' }
  | { kind: 'error'; reason: 'length_invalid' | 'length_too_large'; length: number };

const EMPTY = Buffer.alloc(0);

export class MessageFramer {
  private head: Buffer = EMPTY;
  private tail: Buffer[] = [];
  private tailBytes = 0;
  /** The first packet of a connection has no type byte. */
  private untyped: boolean;

  constructor(
    private maxLength: number,
    opts: { untypedFirst?: boolean } = {},
  ) {
    this.untyped = opts.untypedFirst ?? false;
  }

  /** After the startup packet (or an SSL answer), messages carry a type byte. */
  expectUntyped(untyped: boolean): void {
    this.untyped = untyped;
  }

  /** The largest message accepted from now on (PostgreSQL caps messages before login lower). */
  setMaxLength(n: number): void {
    this.maxLength = n;
  }

  get buffered(): number {
    return this.head.length + this.tailBytes;
  }

  push(chunk: Buffer): void {
    if (this.head.length === 0 && this.tailBytes === 0) this.head = chunk;
    else {
      this.tail.push(chunk);
      this.tailBytes += chunk.length;
    }
  }

  /** Removes and returns whatever is buffered (used when handing the stream elsewhere). */
  drain(): Buffer {
    this.compact();
    const b = this.head;
    this.head = EMPTY;
    return b;
  }

  private compact(): void {
    if (this.tail.length === 0) return;
    this.head = Buffer.concat([this.head, ...this.tail], this.head.length + this.tailBytes);
    this.tail = [];
    this.tailBytes = 0;
  }

  next(): FrameResult {
    const headerLen = this.untyped ? 4 : 5;
    const avail = this.head.length + this.tailBytes;
    if (avail < headerLen) return INCOMPLETE;
    if (this.head.length < headerLen) this.compact();
    const lenOffset = this.untyped ? 0 : 1;
    const length = this.head.readInt32BE(lenOffset);
    if (length < 4 || (this.untyped && length < 8))
      return { kind: 'error', reason: 'length_invalid', length };
    if (length > this.maxLength) return { kind: 'error', reason: 'length_too_large', length };
    const total = lenOffset + length;
    if (avail < total) return INCOMPLETE;
    if (this.head.length < total) this.compact();
    const msg = this.head.subarray(0, total);
    this.head = this.head.length === total ? EMPTY : this.head.subarray(total);
    return { kind: 'message', code: this.untyped ? 0 : msg[0]!, msg };
  }
}

const INCOMPLETE: FrameResult = { kind: 'incomplete' };
