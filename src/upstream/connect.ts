/**
 * Opening a connection to the upstream PostgreSQL: TCP, or a Unix socket when
 * the host is a directory (as libpq reads PGHOST), with TLS negotiated as
 * libpq's sslmode says. Bounded by a connect timeout.
 *
 * One call makes one attempt. The fallbacks of sslmode=allow (plaintext, then
 * TLS) and prefer (TLS, then plaintext) happen when the server refuses the
 * first attempt during startup; the session drives them (see `fallbackAttempt`).
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect, isIP, type Socket } from 'node:net';
import {
  connect as tlsConnect,
  createSecureContext,
  rootCertificates,
  type ConnectionOptions,
  type SecureContext,
  type TLSSocket,
} from 'node:tls';
import type { UpstreamTarget } from '../config/config.js';
import { encodeSslRequest } from '../protocol/frontend-messages.js';

export type SslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';

/** How the upstream connection is encrypted and checked: libpq's names and meanings. */
export interface UpstreamTls {
  sslmode: SslMode;
  /** A PEM file of trusted CAs, or 'system' for the system's trust store (then verify-full only). */
  sslrootcert?: string;
  /** Client certificate and key (PEM files) for servers that ask for one. */
  sslcert?: string;
  sslkey?: string;
  /** 'postgres': SSLRequest first; 'direct': TLS at once with ALPN (PostgreSQL 17+). */
  sslnegotiation: 'postgres' | 'direct';
}

/** What one attempt asks for: no TLS, TLS or fail, or TLS if the server offers it. */
export type Attempt = 'plain' | 'tls' | 'tls-if-offered';

export interface UpstreamConnection {
  socket: Socket;
  /** The TLS socket when the connection is encrypted. */
  tls: TLSSocket | undefined;
}

export class UpstreamConnectError extends Error {
  constructor(
    message: string,
    readonly code: string,
    /** The failure came during TLS negotiation (sslmode=prefer then retries without TLS). */
    readonly duringTls = false,
  ) {
    super(message);
    this.name = 'UpstreamConnectError';
  }
}

export function describeTarget(t: Pick<UpstreamTarget, 'host' | 'port'>): string {
  return isUnixSocket(t) ? `${t.host}/.s.PGSQL.${t.port}` : `${t.host}:${t.port}`;
}

function isUnixSocket(t: Pick<UpstreamTarget, 'host'>): boolean {
  return t.host.startsWith('/');
}

/** The first attempt for an sslmode. Unix sockets never use TLS, as with libpq. */
export function firstAttempt(target: UpstreamTarget): Attempt {
  if (isUnixSocket(target)) return 'plain';
  switch (target.tls.sslmode) {
    case 'disable':
    case 'allow':
      return 'plain';
    case 'prefer':
      return 'tls-if-offered';
    default:
      return 'tls';
  }
}

/**
 * The second attempt libpq makes when the server refuses the first during
 * startup: sslmode=allow retries with TLS, sslmode=prefer without it.
 */
export function fallbackAttempt(target: UpstreamTarget, firstWasTls: boolean): Attempt | undefined {
  if (isUnixSocket(target)) return undefined;
  if (target.tls.sslmode === 'allow' && !firstWasTls) return 'tls';
  if (target.tls.sslmode === 'prefer' && firstWasTls) return 'plain';
  return undefined;
}

/**
 * The TLS context (trusted CAs, client certificate and key) per set of files,
 * built at the first connection that needs it and kept: reading the files and
 * parsing a CA bundle at each connection would cost more than the handshake.
 * reloadUpstreamTls() (SIGHUP, /admin/reload) rereads them.
 */
const contexts = new Map<string, SecureContext>();

interface ContextFiles {
  ca: string | undefined;
  cert: string | undefined;
  key: string | undefined;
}

/** A CA bundle's certificates; throws when the file holds none, or one that does not parse. */
function readCaBundle(file: string): string[] {
  const pem = readFileSync(file, 'utf8');
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new Error(`${file} holds no PEM certificate`);
  for (const b of blocks) new X509Certificate(b); // throws on a damaged one
  return blocks;
}

function buildContext(files: ContextFiles): SecureContext {
  return createSecureContext({
    minVersion: 'TLSv1.2',
    ...(files.ca === undefined
      ? {}
      : { ca: files.ca === 'system' ? [...rootCertificates] : readCaBundle(files.ca) }),
    ...(files.cert === undefined ? {} : { cert: readFileSync(files.cert) }),
    ...(files.key === undefined ? {} : { key: readFileSync(files.key) }),
  });
}

function contextFor(files: ContextFiles): SecureContext {
  const id = JSON.stringify([files.ca, files.cert, files.key]);
  let ctx = contexts.get(id);
  if (ctx === undefined) {
    ctx = buildContext(files);
    contexts.set(id, ctx);
  }
  return ctx;
}

/**
 * Rereads every upstream TLS file in use. All are read before any is
 * swapped: on an error (thrown) the contexts in use stay as they were.
 */
export function reloadUpstreamTls(): void {
  const next = new Map<string, SecureContext>();
  for (const id of contexts.keys()) {
    const [ca, cert, key] = JSON.parse(id) as Array<string | null>;
    next.set(id, buildContext({ ca: ca ?? undefined, cert: cert ?? undefined, key: key ?? undefined }));
  }
  for (const [id, ctx] of next) contexts.set(id, ctx);
}

export function tlsOptions(target: UpstreamTarget): ConnectionOptions {
  const t = target.tls;
  const ip = isIP(target.host) !== 0;
  // libpq checks the chain whenever a root certificate is given: sslmode=require
  // then behaves as verify-ca, and allow / prefer fail the handshake (and so fall
  // back to plaintext) on a certificate it does not trust.
  const verifyChain = t.sslmode === 'verify-ca' || t.sslmode === 'verify-full' || !!t.sslrootcert;
  const opts: ConnectionOptions = {
    host: target.host,
    // SNI as libpq sends it (sslsni=1): the host name, never an address.
    servername: ip ? undefined : target.host,
    ALPNProtocols: ['postgresql'],
    rejectUnauthorized: verifyChain,
    secureContext: contextFor({
      ca: verifyChain && t.sslrootcert ? t.sslrootcert : undefined,
      cert: t.sslcert,
      key: t.sslkey,
    }),
  };
  // verify-ca checks the chain only; verify-full (Node's default check) the name too.
  if (t.sslmode !== 'verify-full') opts.checkServerIdentity = () => undefined;
  return opts;
}

/** Opens the socket and, as the attempt asks, negotiates TLS. */
export function connectUpstream(
  target: UpstreamTarget,
  timeoutMs: number,
  attempt: Attempt = firstAttempt(target),
): Promise<UpstreamConnection> {
  const where = describeTarget(target);
  return new Promise((resolve, reject) => {
    let done = false;
    let current: Socket;
    let negotiating = false;
    const fail = (message: string, code: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      current.destroy();
      reject(new UpstreamConnectError(message, code, negotiating));
    };
    const onClose = (): void =>
      fail(`${where} closed the connection while it was being set up`, 'ECONNRESET');
    const succeed = (conn: UpstreamConnection): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      conn.socket.removeAllListeners('error');
      raw.off('close', onClose);
      resolve(conn);
    };
    const raw = isUnixSocket(target)
      ? connect({ path: `${target.host}/.s.PGSQL.${target.port}` })
      : connect({ host: target.host, port: target.port });
    current = raw;
    raw.setNoDelay(true);
    const timer = setTimeout(
      () => fail(`timed out after ${timeoutMs} ms connecting to ${where}`, 'ETIMEDOUT'),
      timeoutMs,
    );
    raw.on('error', (err: NodeJS.ErrnoException) =>
      fail(`${err.code ?? 'error'} connecting to ${where}`, err.code ?? 'EUNKNOWN'),
    );
    // A server (or something in between) that hangs up mid-negotiation: fail now, not at the timeout.
    raw.on('close', onClose);

    const startTls = (): void => {
      let opts: ConnectionOptions;
      try {
        opts = tlsOptions(target);
      } catch (err) {
        fail(`cannot read TLS files for ${where}: ${(err as Error).message}`, 'ETLSCONFIG');
        return;
      }
      const tls = tlsConnect({ ...opts, socket: raw });
      current = tls;
      tls.on('error', (err: NodeJS.ErrnoException) =>
        fail(`TLS with ${where} failed: ${err.message}`, err.code ?? 'ETLS'),
      );
      tls.once('secureConnect', () => {
        if (target.tls.sslnegotiation === 'direct' && tls.alpnProtocol !== 'postgresql') {
          fail(`${where} did not accept the ALPN protocol "postgresql"`, 'EALPN');
          return;
        }
        tls.setNoDelay(true);
        succeed({ socket: tls, tls });
      });
    };

    raw.once('connect', () => {
      if (attempt === 'plain') return succeed({ socket: raw, tls: undefined });
      negotiating = true;
      if (target.tls.sslnegotiation === 'direct') return startTls();
      raw.write(encodeSslRequest());
      raw.once('data', (chunk: Buffer) => {
        raw.pause();
        const answer = chunk[0];
        if (chunk.length > 1) {
          // Bytes after the answer arrived unencrypted: a man in the middle may
          // be injecting them (CVE-2021-23222).
          return fail(`${where} sent unencrypted data after its answer to SSLRequest`, 'EPROTO');
        }
        if (answer === 0x53 /* S */) return startTls();
        // Left paused: the session resumes it once it listens.
        if (answer === 0x4e /* N */ && attempt === 'tls-if-offered')
          return succeed({ socket: raw, tls: undefined });
        if (answer === 0x4e) return fail(`${where} does not support TLS, but sslmode requires it`, 'ENOTLS');
        return fail(`${where} answered SSLRequest with an unexpected byte`, 'EPROTO');
      });
    });
  });
}

/** The certificate the upstream server presented, DER-encoded (for channel binding). */
export function peerCertificateDer(tls: TLSSocket): Buffer | undefined {
  const cert = tls.getPeerCertificate();
  return cert && 'raw' in cert && Buffer.isBuffer(cert.raw) ? cert.raw : undefined;
}
