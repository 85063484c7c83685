/**
 * Offsets. The parser reports node locations and statement boundaries as byte
 * offsets into the UTF-8 query, while ErrorResponse positions count characters
 * (code points), 1-based, as the server counts them.
 */

const NON_ASCII = /[^\p{ASCII}]/u;

export class QueryText {
  readonly #sql: string;
  readonly #bytes: Buffer | undefined;

  constructor(sql: string) {
    this.#sql = sql;
    this.#bytes = NON_ASCII.test(sql) ? Buffer.from(sql, 'utf8') : undefined;
  }

  /** The text between two byte offsets (`end` undefined: to the end). */
  slice(start: number, end: number | undefined): string {
    if (this.#bytes === undefined) return this.#sql.slice(start, end);
    return this.#bytes.subarray(start, end).toString('utf8');
  }

  /** 1-based character position of a byte offset. */
  position(byteOffset: number): number {
    if (this.#bytes === undefined) return byteOffset + 1;
    let chars = 0;
    const end = Math.min(byteOffset, this.#bytes.length);
    for (let i = 0; i < end; i++) if (((this.#bytes[i] as number) & 0xc0) !== 0x80) chars++;
    return chars + 1;
  }
}
