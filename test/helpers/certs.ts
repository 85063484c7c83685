/**
 * Test certificates, made fresh by the suite with the openssl command: two
 * unrelated CAs, server certificates for "localhost" (DNS name only, so
 * connecting by 127.0.0.1 fails a name check) and for another name, and a
 * client certificate. EC P-256 keys: quick to make.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface CertPair {
  cert: string;
  key: string;
}

export interface TestCerts {
  dir: string;
  ca: CertPair;
  /** A CA that signed nothing here: verify-ca / verify-full with it must fail. */
  otherCa: CertPair;
  /** Signed by `ca`, for DNS:localhost only. */
  localhost: CertPair;
  /** Another certificate for localhost signed by `ca` (a renewal, for reload tests). */
  localhostRenewed: CertPair;
  /** Signed by `ca` for DNS:wrong.example: verify-ca passes, verify-full fails. */
  wrongName: CertPair;
  /** A client certificate signed by `ca` whose CN is `clientUser`. */
  client: CertPair;
  clientUser: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

function key(dir: string, name: string): string {
  const file = path.join(dir, `${name}.key`);
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', file], dir);
  chmodSync(file, 0o600);
  return file;
}

function makeCa(dir: string, name: string): CertPair {
  const k = key(dir, name);
  const cert = path.join(dir, `${name}.crt`);
  openssl(
    [
      'req',
      '-x509',
      '-new',
      '-key',
      k,
      '-sha256',
      '-days',
      '2',
      '-subj',
      `/CN=${name}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
      '-out',
      cert,
    ],
    dir,
  );
  return { cert, key: k };
}

function makeLeaf(dir: string, name: string, cn: string, ca: CertPair, ext: string): CertPair {
  const k = key(dir, name);
  const csr = path.join(dir, `${name}.csr`);
  const cert = path.join(dir, `${name}.crt`);
  const extFile = path.join(dir, `${name}.ext`);
  writeFileSync(extFile, ext);
  openssl(['req', '-new', '-key', k, '-subj', `/CN=${cn}`, '-out', csr], dir);
  openssl(
    [
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      ca.cert,
      '-CAkey',
      ca.key,
      '-CAcreateserial',
      '-sha256',
      '-days',
      '2',
      '-extfile',
      extFile,
      '-out',
      cert,
    ],
    dir,
  );
  return { cert, key: k };
}

export function makeTestCerts(clientUser = 'tls_cert_user'): TestCerts {
  const dir = mkdtempSync(path.join(tmpdir(), 'pgro-certs-'));
  const ca = makeCa(dir, 'test-ca');
  const otherCa = makeCa(dir, 'other-ca');
  const server = 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n';
  return {
    dir,
    ca,
    otherCa,
    localhost: makeLeaf(dir, 'localhost', 'localhost', ca, `${server}subjectAltName=DNS:localhost\n`),
    localhostRenewed: makeLeaf(
      dir,
      'localhost-renewed',
      'localhost',
      ca,
      `${server}subjectAltName=DNS:localhost\n`,
    ),
    wrongName: makeLeaf(
      dir,
      'wrong-name',
      'wrong.example',
      ca,
      `${server}subjectAltName=DNS:wrong.example\n`,
    ),
    client: makeLeaf(
      dir,
      'client',
      clientUser,
      ca,
      'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n',
    ),
    clientUser,
  };
}
