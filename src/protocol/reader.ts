/** A cursor over one whole message body. Reads past the end throw MalformedMessage. */
export class MalformedMessage extends Error {
  constructor(message = 'invalid message format') {
    super(message);
    this.name = 'MalformedMessage';
  }
}

export class MessageReader {
  constructor(
    private readonly buf: Buffer,
    public offset: number,
    private readonly end = buf.length,
  ) {}

  get remaining(): number {
    return this.end - this.offset;
  }

  int8(): number {
    if (this.offset + 1 > this.end) throw new MalformedMessage();
    return this.buf[this.offset++]!;
  }

  int16(): number {
    if (this.offset + 2 > this.end) throw new MalformedMessage();
    const v = this.buf.readInt16BE(this.offset);
    this.offset += 2;
    return v;
  }

  int32(): number {
    if (this.offset + 4 > this.end) throw new MalformedMessage();
    const v = this.buf.readInt32BE(this.offset);
    this.offset += 4;
    return v;
  }

  bytes(n: number): Buffer {
    if (n < 0 || this.offset + n > this.end) throw new MalformedMessage();
    const b = this.buf.subarray(this.offset, this.offset + n);
    this.offset += n;
    return b;
  }

  /** The raw bytes of a NUL-terminated string, without the NUL. */
  cstringBytes(): Buffer {
    const nul = this.buf.indexOf(0, this.offset);
    if (nul < 0 || nul >= this.end) throw new MalformedMessage();
    const b = this.buf.subarray(this.offset, nul);
    this.offset = nul + 1;
    return b;
  }

  cstring(encoding: BufferEncoding = 'utf8'): string {
    return this.cstringBytes().toString(encoding);
  }

  /** Like PostgreSQL's pq_getmsgend: a message must have no bytes left over. */
  expectEnd(): void {
    if (this.offset !== this.end) throw new MalformedMessage();
  }
}
