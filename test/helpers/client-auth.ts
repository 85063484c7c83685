/**
 * The client side of PostgreSQL's password authentication, for the tests' raw
 * protocol clients: cleartext, MD5 and SCRAM-SHA-256 (without channel binding).
 * Written independently of the proxy, which only relays these messages.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';

export class ClientAuth {
  private scram: { nonce: string; bare: string; serverSignature?: Buffer } | undefined;

  constructor(
    private readonly user: string,
    private readonly password: string,
  ) {}

  /**
   * Takes the body of an Authentication ('R') message (after type and length) and
   * returns the body of the 'p' message to answer with, or undefined when none is
   * due. Throws on a request it cannot answer or a server that fails SCRAM.
   */
  respond(body: Buffer): Buffer | undefined {
    const kind = body.readInt32BE(0);
    switch (kind) {
      case 0: // AuthenticationOk
        return undefined;
      case 3: // CleartextPassword
        return cstr(this.password);
      case 5: {
        const salt = body.subarray(4, 8);
        const inner = createHash('md5')
          .update(this.password + this.user)
          .digest('hex');
        const outer = createHash('md5')
          .update(Buffer.concat([Buffer.from(inner), salt]))
          .digest('hex');
        return cstr(`md5${outer}`);
      }
      case 10: {
        const nonce = randomBytes(18).toString('base64');
        const bare = `n=*,r=${nonce}`;
        this.scram = { nonce, bare };
        const first = Buffer.from(`n,,${bare}`);
        const len = Buffer.alloc(4);
        len.writeInt32BE(first.length);
        return Buffer.concat([cstr('SCRAM-SHA-256'), len, first]);
      }
      case 11: {
        const scram = this.scram;
        if (!scram) throw new Error('SASLContinue without SASL');
        const serverFirst = body.toString('utf8', 4);
        const attrs = new Map(serverFirst.split(',').map((kv) => [kv[0], kv.slice(2)] as const));
        const serverNonce = attrs.get('r') ?? '';
        if (!serverNonce.startsWith(scram.nonce)) throw new Error('SCRAM: bad server nonce');
        const salt = Buffer.from(attrs.get('s') ?? '', 'base64');
        const salted = pbkdf2Sync(
          this.password.normalize('NFKC'),
          salt,
          Number(attrs.get('i')),
          32,
          'sha256',
        );
        const clientKey = createHmac('sha256', salted).update('Client Key').digest();
        const storedKey = createHash('sha256').update(clientKey).digest();
        const withoutProof = `c=biws,r=${serverNonce}`;
        const authMessage = `${scram.bare},${serverFirst},${withoutProof}`;
        const clientSignature = createHmac('sha256', storedKey).update(authMessage).digest();
        const proof = Buffer.from(clientKey.map((b, i) => b ^ clientSignature[i]!));
        const serverKey = createHmac('sha256', salted).update('Server Key').digest();
        scram.serverSignature = createHmac('sha256', serverKey).update(authMessage).digest();
        return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`);
      }
      case 12: {
        const v = Buffer.from(body.toString('utf8', 4).replace(/^v=/, ''), 'base64');
        const expected = this.scram?.serverSignature;
        if (!expected || v.length !== expected.length || !timingSafeEqual(v, expected)) {
          throw new Error('SCRAM: bad server signature');
        }
        return undefined;
      }
      default:
        throw new Error(`unsupported authentication request ${kind}`);
    }
  }
}

function cstr(s: string): Buffer {
  return Buffer.from(`${s}\0`, 'utf8');
}
