/**
 * The proxy's own TLS, towards clients: the certificate and key as a secure
 * context that can be swapped (SIGHUP) while sessions that began with the old
 * one go on undisturbed.
 */
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { createSecureContext, type SecureContext } from 'node:tls';
import { ConfigError, type ClientTlsConfig, type ClientTlsMode } from '../config/config.js';

interface Loaded {
  context: SecureContext;
  subject: string;
  validTo: string;
  fingerprint256: string;
}

export class ClientTls {
  private loaded: Loaded | undefined;

  constructor(private readonly config: ClientTlsConfig) {
    if (config.mode !== 'disable') this.loaded = load(config);
  }

  get mode(): ClientTlsMode {
    return this.config.mode;
  }

  get enabled(): boolean {
    return this.loaded !== undefined;
  }

  get context(): SecureContext | undefined {
    return this.loaded?.context;
  }

  /** What is loaded, for log lines. */
  describe(): Record<string, string> | undefined {
    const l = this.loaded;
    return l && { subject: l.subject, valid_to: l.validTo, fingerprint256: l.fingerprint256 };
  }

  /**
   * Reads the certificate and key again. New handshakes use them; on any error
   * the old ones stay and the error is thrown for the caller to report.
   */
  reload(): void {
    if (this.config.mode === 'disable') return;
    this.loaded = load(this.config);
  }
}

function load(c: ClientTlsConfig): Loaded {
  let cert: Buffer;
  let key: Buffer;
  try {
    cert = readFileSync(c.certFile!);
    key = readFileSync(c.keyFile!);
  } catch (err) {
    throw new ConfigError(`client_tls: ${(err as Error).message}`);
  }
  let context: SecureContext;
  let leaf: X509Certificate;
  try {
    // Also checks that the key belongs to the certificate.
    context = createSecureContext({ cert, key, minVersion: c.minVersion });
    leaf = new X509Certificate(cert);
  } catch (err) {
    throw new ConfigError(`client_tls: ${c.certFile} / ${c.keyFile}: ${(err as Error).message}`);
  }
  return {
    context,
    subject: leaf.subject.replace(/\n/g, ', '),
    validTo: leaf.validTo,
    fingerprint256: leaf.fingerprint256,
  };
}
