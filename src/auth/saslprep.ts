/**
 * SASLprep (RFC 4013) of a SCRAM password, with PostgreSQL's behaviour
 * (src/common/saslprep.c), which both the server and libpq apply:
 *
 * - a pure-ASCII password is used as it is;
 * - otherwise non-ASCII spaces (RFC 3454 C.1.2) become U+0020, "commonly mapped
 *   to nothing" characters (B.1) are removed and the result is NFKC-normalised;
 * - if the mapped string is empty, contains a prohibited (C.1.2–C.9) or, in
 *   Unicode 3.2, unassigned (A.1) code point, or breaks the bidi rule (RFC 3454
 *   section 6), the password is NOT rejected: PostgreSQL falls back to the raw
 *   password, and so do we.
 *
 * As in PostgreSQL, the prohibited and bidi checks look at the mapped code points
 * before normalisation (e.g. U+0340, prohibited, normalises to the allowed U+0300).
 * Normalisation is the same with any Unicode version for code points assigned in
 * Unicode 3.2, and any other code point makes the password fall back anyway.
 */

/** Sorted, disjoint inclusive ranges, flattened: [lo0, hi0, lo1, hi1, ...]. */
type Ranges = readonly number[];

/** C.1.2: mapped to U+0020. */
const NON_ASCII_SPACE: Ranges = [
  0x00a0, 0x00a0, 0x1680, 0x1680, 0x2000, 0x200b, 0x202f, 0x202f, 0x205f, 0x205f, 0x3000, 0x3000,
];

/** B.1: removed. (U+200B is also a space above, and PostgreSQL maps it to U+0020.) */
const MAPPED_TO_NOTHING: Ranges = [
  0x00ad, 0x00ad, 0x034f, 0x034f, 0x1806, 0x1806, 0x180b, 0x180d, 0x200b, 0x200d, 0x2060, 0x2060, 0xfe00,
  0xfe0f, 0xfeff, 0xfeff,
];

/** C.1.2, C.2.1, C.2.2, C.3, C.4, C.5, C.6, C.7, C.8, C.9 merged (adjacent ranges joined). */
const PROHIBITED: Ranges = [
  0x0000, 0x001f, 0x007f, 0x00a0, 0x0340, 0x0341, 0x06dd, 0x06dd, 0x070f, 0x070f, 0x1680, 0x1680, 0x180e,
  0x180e, 0x2000, 0x200f, 0x2028, 0x202f, 0x205f, 0x2063, 0x206a, 0x206f, 0x2ff0, 0x2ffb, 0x3000, 0x3000,
  0xd800, 0xf8ff, 0xfdd0, 0xfdef, 0xfeff, 0xfeff, 0xfff9, 0xffff, 0x1d173, 0x1d17a, 0x1fffe, 0x1ffff, 0x2fffe,
  0x2ffff, 0x3fffe, 0x3ffff, 0x4fffe, 0x4ffff, 0x5fffe, 0x5ffff, 0x6fffe, 0x6ffff, 0x7fffe, 0x7ffff, 0x8fffe,
  0x8ffff, 0x9fffe, 0x9ffff, 0xafffe, 0xaffff, 0xbfffe, 0xbffff, 0xcfffe, 0xcffff, 0xdfffe, 0xdffff, 0xe0001,
  0xe0001, 0xe0020, 0xe007f, 0xefffe, 0x10ffff,
];

/** D.1: characters of bidi class R or AL (Unicode 3.2). */
const RAND_AL_CAT: Ranges = [
  0x05be, 0x05be, 0x05c0, 0x05c0, 0x05c3, 0x05c3, 0x05d0, 0x05ea, 0x05f0, 0x05f4, 0x061b, 0x061b, 0x061f,
  0x061f, 0x0621, 0x063a, 0x0640, 0x064a, 0x066d, 0x066f, 0x0671, 0x06d5, 0x06dd, 0x06dd, 0x06e5, 0x06e6,
  0x06fa, 0x06fe, 0x0700, 0x070d, 0x0710, 0x0710, 0x0712, 0x072c, 0x0780, 0x07a5, 0x07b1, 0x07b1, 0x200f,
  0x200f, 0xfb1d, 0xfb1d, 0xfb1f, 0xfb28, 0xfb2a, 0xfb36, 0xfb38, 0xfb3c, 0xfb3e, 0xfb3e, 0xfb40, 0xfb41,
  0xfb43, 0xfb44, 0xfb46, 0xfbb1, 0xfbd3, 0xfd3d, 0xfd50, 0xfd8f, 0xfd92, 0xfdc7, 0xfdf0, 0xfdfc, 0xfe70,
  0xfe74, 0xfe76, 0xfefc,
];

/*
 * The two long tables, packed: each entry is "gap" or "gap+extra" in hex, where
 * the range starts `gap` code points after the end of the previous one (the first
 * after -1) and spans `extra` more. Generated from Python's stringprep module
 * (RFC 3454 over Unicode 3.2): in_table_a1 and in_table_d2.
 */

/** A.1: unassigned in Unicode 3.2. */
const UNASSIGNED = unpack(
  '221 12+1b 5e+1 3f+10 50+f 10+3 2+3 1+2 1+4 7 1 14 2c 27+8 87 47 26+1 2+5 10+20 26+1 7 27 2+5 11 17 a+a ' +
    '1b+4 5+16 1+d 1+2 1 1a+4 16+9 8e+1 f e 1e+2 1b+34 32+14e 3 35+1 12+1 5+2 19+f 3 8+1 2+1 16 7 1+2 4+1 ' +
    '1 7+1 2+1 3+8 1+3 2 5+1 15+6 1+1 6+3 2+1 16 7 2 2 2+1 1 5+3 2+1 3+a 4 1+6 f+b 3 7 1 3 16 7 2 5+1 a 3 ' +
    '3+1 1+e 1+4 a+10 3 8+1 2+1 16 7 2+1 4+1 8+2 2+1 3+7 2+3 2 3+3 b+10 2 6+2 3 4+2 2 1 2+2 2+2 3+2 8 3+3 ' +
    '5+2 3 4+8 1+e c+d 3 8 3 17 a 5+3 7 3 4+6 2+8 2+3 a+11 2 8 3 17 a 5+3 7 3 4+6 2+6 1 2+3 a+11 2 8 3 17 ' +
    '10+3 6+1 3 4+8 1+7 2+3 a+11 2 12+2 18 9 1+1 7+2 1+3 6 1 8+11 3+b 3a+3 1d+24 2 1+1 2 1+1 1+5 4 7 3 1 ' +
    '1+1 2 d 3+1 5 1 6+1 a+1 2+21 48 22+5 1b+3 8 24 f+1 1+2f 22 5 2 7+2 4+5 1a+45 26+9 29+1 1+3 5a+4 44+4 ' +
    '52+5 7 3f 1 4+1 7 1 4+1 27 1 4+1 1f 1 4+1 7 1 4+1 7 7 17 1f 1 4+1 7 27 13+5 1c+22 55+b 276+8 1d+2 ' +
    '51+e d 7+a 17+8 14+b d 3 2+b 5d+2 a+15 f a+5 58+7 2a+555 9c+3 5a+5 16+1 6+1 26+1 6+1 8 1 1 1 1f+1 35 ' +
    'f e+1 6 13+1 3 9 53+3 1+6 5+5 8+1 1b+10 12+1d 1b+14 3b+1 f+6 31+b 23f+30 27+18 b+14 9f 114+1 2 65+1 ' +
    'a+76 4 4+1 1c 23 1 4+2 1 7+1 34+2 18 e+10 1c+3 310+37f 1a 59+b d6+19 c+3 40 56+1 67+4 28+3 5e 28+37 ' +
    '2d+2 24+c 2b+2 4d+3 2f 77+3 63+1 1f 19b6+49 51a6+59 48d+2 37+738 2ba4+5b 222e+1 3b+94 7+b 5+4 1a 5 1 2 ' +
    '2 6c+20 16d+f 40+1 36+7 2d+2 10+f 4+b 17+1 a 13 4+3 5 87+1 1 be+2 6+1 6+1 6+1 3+2 7 7+9 7+2ff 1f 4+b ' +
    '1b+b4 26+1 26+cbb1 f6+9 27+2 b4+221 55 47 2+1 1+1 2+1 4 c 1 4 2 41 4+1 8 7 1c 4 5 1+2 7 152+3 122+3 ' +
    '32+27fd a6d9+5128 21e+5df 2+fffd 2+fffd 2+fffd 2+fffd 2+fffd 2+fffd 2+fffd 2+fffd 2+fffd 2+fffd 2+fffd ' +
    '2 1+1d 60+ff7d',
);

/** D.2: characters of bidi class L (Unicode 3.2). */
const L_CAT = unpack(
  '41+19 6+19 2f a 4 5+16 1+1e 1+128 1+11 1c+5d 2+8 2+6 e+1 e+4 9 8b b 1+2 1 1+13 1+2b 1+25 a+82 7+44 ' +
    '1+25 2+1 6+f 21+25 2+6 1+26 1 379 1+34 3+3 8+3 3 7+9 2+c 11+1 1+7 2+1 2+15 1+6 1 3+3 4+2 6+1 2+1 a ' +
    '4+1 1+2 4+b 2+6 a+5 4+1 2+15 1+6 1+1 1+1 1+1 4+2 18+3 1 7+9 2+2 e 1+6 1 1+2 1+15 1+6 1+1 1+4 3+3 8 ' +
    '1+1 3 f 5+9 12+1 1+7 2+1 2+15 1+6 1+1 2+3 3+1 1 6+1 2+1 a 4+1 1+2 4+a 12 1+5 3+2 1+3 3+1 1 1+1 3+1 ' +
    '3+2 3+7 1+2 4+1 1+1 3+2 1+2 a f+b e+2 1+7 1+2 1+16 1+9 1+4 7+3 1b+1 4+9 12+1 1+7 1+2 1+16 1+9 1+4 4 ' +
    '1+4 2+1 1+1 9+1 7 1+1 4+9 12+1 1+7 1+2 1+16 1+f 4+2 5+2 1+2 a 8+1 4+9 12+1 1+11 3+17 1+8 1 2+6 8+2 ' +
    '6+7 12+2 c+2f 1+1 c+6 8+c 25+1 1 2+1 1 2 6+3 1+6 1+2 1 1 2+1 1+3 1+1 9 2+4 1 9+9 2+1 22+17 2+1a 1 1 ' +
    '5+9 1+21 14 5 2+3 32+7 1+5 2 30+21 1+4 1+1 1 4 6 7+17 48+25 a+28 2 4+59 5+43 5+51 6+6 1+3e 1 1+3 ' +
    '2+6 1 1+3 2+26 1 1+3 2+1e 1 1+3 2+6 1 1+3 2+6 1+6 1+16 1+1e 1 1+3 2+6 1+26 1+12 6+1b 23+54 c+275 ' +
    'a+19 5+50 f+c 1+3 e+11 3+1 9+11 e+c 1+2 f+36 7+7 1+1 b+6 1 3+9 26+9 6+57 8+28 557+9b 4+59 6+15 2+5 ' +
    '2+25 2+5 2+7 1 1 1 1+1e 2+34 1+6 1 3+2 1+6 3+3 2+5 4+c 5+2 1+6 11 62 d 82 4 2+9 1 3+4 6 1 1 1+3 1+2 ' +
    '1+6 3+2 5+4 16+23 1b2+44 1a 106+4d b1b+2 19+8 7+4 2+4 4+55 6+2 1+59 1+3 5+27 4+5d 1+27 38+2c 3+23 ' +
    '1c+1b 3+31 f+b 4+2e 1+76 4+62 2+1e 1+19b5 4a+51a5 5a+48c 773+2ba3 85c+1a2d 2+3a 95+6 c+4 409+19 ' +
    '6+19 b+58 3+5 2+5 2+5 2+2 323+1e 1+3 c+1a b5+25 2+25 cbb2+f5 a+26 3+3c 3+8 10+1 7+1d 4+2f 222+54 ' +
    '1+46 1+1 2 2+1 2+3 1+b 1 1+3 1+1 1+40 1+3 2+7 1+6 1+1b 1+3 1+4 1 3+6 1+151 4+121 2836+a6d6 5129+21d ' +
    'c05e2+fffd 2+fffd',
);

function unpack(packed: string): Ranges {
  const out: number[] = [];
  let end = -1;
  for (const entry of packed.split(' ')) {
    const [gap, extra] = entry.split('+');
    const lo = end + 1 + parseInt(gap!, 16);
    end = lo + (extra === undefined ? 0 : parseInt(extra, 16));
    out.push(lo, end);
  }
  return out;
}

function inRanges(table: Ranges, cp: number): boolean {
  let lo = 0;
  let hi = table.length / 2 - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (cp < table[2 * mid]!) hi = mid - 1;
    else if (cp > table[2 * mid + 1]!) lo = mid + 1;
    else return true;
  }
  return false;
}

/** The password as SCRAM hashes it: prepared when SASLprep allows, else unchanged. */
export function saslprep(password: string): string {
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\x7f]*$/.test(password)) return password;
  const mapped: number[] = [];
  for (const ch of password) {
    const cp = ch.codePointAt(0)!;
    if (inRanges(NON_ASCII_SPACE, cp)) mapped.push(0x20);
    else if (!inRanges(MAPPED_TO_NOTHING, cp)) mapped.push(cp);
  }
  if (mapped.length === 0) return password;
  if (mapped.some((cp) => inRanges(PROHIBITED, cp) || inRanges(UNASSIGNED, cp))) return password;
  if (mapped.some((cp) => inRanges(RAND_AL_CAT, cp))) {
    if (mapped.some((cp) => inRanges(L_CAT, cp))) return password;
    if (!inRanges(RAND_AL_CAT, mapped[0]!) || !inRanges(RAND_AL_CAT, mapped[mapped.length - 1]!)) {
      return password;
    }
  }
  return mapped
    .map((cp) => String.fromCodePoint(cp))
    .join('')
    .normalize('NFKC');
}
