/**
 * SCRAM channel binding type tls-server-end-point (RFC 5929 section 4.1): a hash
 * of the server certificate, with the hash function of the certificate's
 * signature algorithm, MD5 and SHA-1 upgraded to SHA-256. PostgreSQL computes
 * the same on both sides (be_tls_get_certificate_hash, pgtls_get_peer_certificate_hash)
 * and, like here, cannot bind to a certificate whose signature algorithm has no
 * hash of its own (Ed25519, Ed448) or is unknown.
 *
 * Only as much DER is read as it takes to reach the signature algorithm:
 * Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm
 * AlgorithmIdentifier, signatureValue BIT STRING }.
 */
import { createHash } from 'node:crypto';

/** Signature algorithm OID → node:crypto hash name, already upgraded. */
const SIGNATURE_HASH: Readonly<Record<string, string>> = {
  // PKCS #1 v1.5 RSA
  '1.2.840.113549.1.1.4': 'sha256', // md5WithRSAEncryption
  '1.2.840.113549.1.1.5': 'sha256', // sha1WithRSAEncryption
  '1.3.14.3.2.29': 'sha256', // sha1WithRSASignature (OIW)
  '1.2.840.113549.1.1.14': 'sha224',
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
  '2.16.840.1.101.3.4.3.13': 'sha3-224',
  '2.16.840.1.101.3.4.3.14': 'sha3-256',
  '2.16.840.1.101.3.4.3.15': 'sha3-384',
  '2.16.840.1.101.3.4.3.16': 'sha3-512',
  // ECDSA
  '1.2.840.10045.4.1': 'sha256', // ecdsa-with-SHA1
  '1.2.840.10045.4.3.1': 'sha224',
  '1.2.840.10045.4.3.2': 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
  '2.16.840.1.101.3.4.3.9': 'sha3-224',
  '2.16.840.1.101.3.4.3.10': 'sha3-256',
  '2.16.840.1.101.3.4.3.11': 'sha3-384',
  '2.16.840.1.101.3.4.3.12': 'sha3-512',
  // DSA
  '1.2.840.10040.4.3': 'sha256', // dsa-with-sha1
  '2.16.840.1.101.3.4.3.1': 'sha224',
  '2.16.840.1.101.3.4.3.2': 'sha256',
};

/** Hash algorithm OID (RSASSA-PSS parameters) → node:crypto hash name, already upgraded. */
const DIGEST: Readonly<Record<string, string>> = {
  '1.2.840.113549.2.5': 'sha256', // md5
  '1.3.14.3.2.26': 'sha256', // sha1
  '2.16.840.1.101.3.4.2.4': 'sha224',
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
  '2.16.840.1.101.3.4.2.7': 'sha3-224',
  '2.16.840.1.101.3.4.2.8': 'sha3-256',
  '2.16.840.1.101.3.4.2.9': 'sha3-384',
  '2.16.840.1.101.3.4.2.10': 'sha3-512',
};

const RSASSA_PSS = '1.2.840.113549.1.1.10';

const TAG_SEQUENCE = 0x30;
const TAG_OID = 0x06;
/** [0] EXPLICIT, constructed: hashAlgorithm in RSASSA-PSS-params. */
const TAG_CONTEXT_0 = 0xa0;

/** One DER element: its tag, and where its contents start and end in the buffer. */
interface Element {
  tag: number;
  start: number;
  end: number;
}

/** The DER element at `pos`, which must end by `limit`; undefined when malformed. */
function element(der: Buffer, pos: number, limit: number): Element | undefined {
  if (pos + 2 > limit) return undefined;
  const tag = der[pos]!;
  if ((tag & 0x1f) === 0x1f) return undefined; // multi-byte tags: none on our path
  let len = der[pos + 1]!;
  let start = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || start + n > limit) return undefined; // indefinite length is not DER
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[start + i]!;
    start += n;
  }
  const end = start + len;
  return end <= limit ? { tag, start, end } : undefined;
}

function decodeOid(der: Buffer, e: Element): string | undefined {
  if (e.tag !== TAG_OID || e.end === e.start) return undefined;
  const arcs: number[] = [];
  let value = 0;
  for (let i = e.start; i < e.end; i++) {
    const b = der[i]!;
    value = value * 128 + (b & 0x7f);
    if (value > Number.MAX_SAFE_INTEGER / 128) return undefined;
    if (!(b & 0x80)) {
      if (arcs.length === 0) {
        const first = Math.min(Math.floor(value / 40), 2);
        arcs.push(first, value - first * 40);
      } else {
        arcs.push(value);
      }
      value = 0;
    }
  }
  return der[e.end - 1]! & 0x80 ? undefined : arcs.join('.');
}

/** The contents of an AlgorithmIdentifier: its OID and the element after it (the parameters), if any. */
function algorithm(der: Buffer, e: Element): { oid: string; params: Element | undefined } | undefined {
  if (e.tag !== TAG_SEQUENCE) return undefined;
  const oidElement = element(der, e.start, e.end);
  const oid = oidElement && decodeOid(der, oidElement);
  if (!oidElement || !oid) return undefined;
  const params = oidElement.end < e.end ? element(der, oidElement.end, e.end) : undefined;
  return { oid, params };
}

/** The hash of RSASSA-PSS-params: [0] hashAlgorithm, SHA-1 (so SHA-256 here) when absent. */
function pssHash(der: Buffer, params: Element | undefined): string | undefined {
  if (!params || params.tag !== TAG_SEQUENCE) return undefined;
  if (params.start === params.end) return DIGEST['1.3.14.3.2.26'];
  const first = element(der, params.start, params.end);
  if (!first) return undefined;
  if (first.tag !== TAG_CONTEXT_0) return DIGEST['1.3.14.3.2.26'];
  const inner = element(der, first.start, first.end);
  const hash = inner && algorithm(der, inner);
  return hash ? DIGEST[hash.oid] : undefined;
}

/** The node:crypto hash name tls-server-end-point uses for this certificate, if any. */
export function endPointHashName(certDer: Buffer): string | undefined {
  const cert = element(certDer, 0, certDer.length);
  if (!cert || cert.tag !== TAG_SEQUENCE || cert.end !== certDer.length) return undefined;
  const tbs = element(certDer, cert.start, cert.end);
  if (!tbs || tbs.tag !== TAG_SEQUENCE) return undefined;
  const sigAlg = element(certDer, tbs.end, cert.end);
  const alg = sigAlg && algorithm(certDer, sigAlg);
  if (!alg) return undefined;
  return alg.oid === RSASSA_PSS ? pssHash(certDer, alg.params) : SIGNATURE_HASH[alg.oid];
}

/**
 * tls-server-end-point channel binding data (RFC 5929): the hash of the certificate
 * DER with the hash of its signature algorithm, MD5 and SHA-1 upgraded to SHA-256.
 * Undefined for algorithms with no defined hash (Ed25519/Ed448, unknown OIDs) and
 * for malformed DER: then, as with PostgreSQL, there is no channel binding.
 */
export function tlsServerEndPoint(certDer: Buffer): Buffer | undefined {
  const hash = endPointHashName(certDer);
  if (!hash) return undefined;
  try {
    return createHash(hash).update(certDer).digest();
  } catch {
    return undefined; // a hash this OpenSSL build lacks (SHA-3 on some builds)
  }
}
