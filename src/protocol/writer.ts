/**
 * A small append-only writer for the few messages the proxy builds itself. It
 * leaves room for the type byte and length at the front and fills them in on
 * finish(), so a message is built in one buffer with no copies after.
 */
export class MessageWriter {
  private buf: Buffer;
  private len = 5;

  constructor(
    private readonly code: number | null,
    initial = 256,
  ) {
    this.buf = Buffer.allocUnsafe(initial);
    if (code === null) this.len = 4;
  }

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  int8(v: number): this {
    this.reserve(1);
    this.buf[this.len++] = v & 0xff;
    return this;
  }

  int16(v: number): this {
    this.reserve(2);
    this.buf.writeInt16BE(v, this.len);
    this.len += 2;
    return this;
  }

  int32(v: number): this {
    this.reserve(4);
    this.buf.writeInt32BE(v, this.len);
    this.len += 4;
    return this;
  }

  bytes(b: Uint8Array): this {
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }

  /** A NUL-terminated UTF-8 string. */
  cstring(s: string): this {
    const n = Buffer.byteLength(s);
    this.reserve(n + 1);
    this.buf.write(s, this.len, 'utf8');
    this.len += n;
    this.buf[this.len++] = 0;
    return this;
  }

  finish(): Buffer {
    if (this.code === null) {
      this.buf.writeInt32BE(this.len, 0);
    } else {
      this.buf[0] = this.code;
      this.buf.writeInt32BE(this.len - 1, 1);
    }
    return this.buf.subarray(0, this.len);
  }
}
