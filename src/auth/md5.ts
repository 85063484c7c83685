/**
 * PostgreSQL's MD5 password authentication, both sides. The stored verifier is
 * 'md5' + hex(md5(password + user)); the server sends a 4-byte salt and the client
 * answers 'md5' + hex(md5(hex(md5(password + user)) + salt)). MD5 passwords are
 * deprecated in PostgreSQL (a stolen verifier is as good as the password); this
 * is here for servers and roles that still use them.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

const MD5_VERIFIER = /^md5[0-9a-f]{32}$/;

function md5Hex(...parts: Array<string | Buffer>): string {
  const h = createHash('md5');
  for (const p of parts) h.update(p);
  return h.digest('hex');
}

/** PostgreSQL's stored form: 'md5' + hex(md5(password + user)). */
export function createMd5Verifier(user: string, password: string): string {
  return `md5${md5Hex(password, user)}`;
}

export function isMd5Verifier(text: string): boolean {
  return MD5_VERIFIER.test(text);
}

/** The answer to the stored verifier's hex part and a salt: 'md5' + hex(md5(hex + salt)). */
function saltedAnswer(verifierHex: string, salt: Buffer): string {
  return `md5${md5Hex(verifierHex, salt)}`;
}

/**
 * The client's answer to AuthenticationMD5Password, NUL-terminated: the body of
 * the PasswordMessage to send.
 */
export function md5Response(user: string, password: string, salt: Buffer): Buffer {
  return Buffer.from(`${saltedAnswer(md5Hex(password, user), salt)}\0`, 'latin1');
}

/**
 * The server's check of a PasswordMessage body (without its NUL) against a stored
 * MD5 verifier and the salt it sent, in constant time. False for a verifier that
 * is not an MD5 one.
 */
export function md5Check(verifier: string, salt: Buffer, response: string): boolean {
  if (!isMd5Verifier(verifier)) return false;
  const expected = Buffer.from(saltedAnswer(verifier.slice(3), salt), 'latin1');
  const got = Buffer.from(response, 'utf8');
  // The length of a correct answer is public (35 bytes); only its contents are compared in constant time.
  return got.length === expected.length && timingSafeEqual(got, expected);
}
