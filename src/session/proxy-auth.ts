/**
 * Proxy-managed logins, both halves:
 * - ClientAuthenticator: the proxy as the server, checking a client against the
 *   user's stored verifier (SCRAM-SHA-256, with -PLUS when the client is on TLS;
 *   MD5 only where the operator allowed it).
 * - UpstreamLogin: the proxy as the client, answering the upstream server's
 *   authentication requests with the operator's credentials for that user.
 * Both only build and read messages; the session moves the bytes.
 */
import { randomBytes } from 'node:crypto';
import type { ErrorFields } from '../protocol/backend-messages.js';
import {
  decodeSaslMechanisms,
  encodeAuthentication,
  encodeSaslMechanisms,
} from '../protocol/backend-messages.js';
import {
  decodeAuthResponse,
  decodePasswordMessage,
  decodeSaslInitialResponse,
  encodeAuthResponse,
  encodePasswordMessage,
  encodeSaslInitialResponse,
} from '../protocol/frontend-messages.js';
import { AuthCode } from '../protocol/codes.js';
import { SqlState } from '../protocol/sqlstate.js';
import { md5Check, md5Response } from '../auth/md5.js';
import { ScramClient, ScramError, ScramServer } from '../auth/scram.js';
import type { ProxyUser, UserDirectory } from '../auth/users.js';

export type AuthStep =
  | { kind: 'reply'; message: Buffer }
  | { kind: 'done'; user: ProxyUser; message?: Buffer }
  | { kind: 'failed'; error: Omit<ErrorFields, 'severity'>; reason: string };

export class ClientAuthenticator {
  private readonly user: ProxyUser | undefined;
  private readonly scram: ScramServer | undefined;
  private readonly md5Salt: Buffer | undefined;
  private step = 0;
  /** The method the exchange used: 'md5' or the SASL mechanism the client chose. */
  method: string | undefined;

  constructor(
    private readonly name: string,
    directory: UserDirectory,
    /** tls-server-end-point of the proxy's certificate when the client is on TLS. */
    channelBinding: Buffer | undefined,
  ) {
    this.user = directory.get(name);
    const v = this.user?.verifier;
    if (v?.kind === 'md5') {
      this.md5Salt = randomBytes(4);
    } else {
      // Unknown users get a mock exchange that fails as a wrong password would.
      this.scram = new ScramServer({
        user: name,
        verifier: v?.scram,
        mockSecret: directory.mockSecret,
        mockIterations: directory.mockIterations,
        channelBinding,
      });
    }
  }

  /** The first authentication request to send the client. */
  start(): Buffer {
    if (this.md5Salt) return encodeAuthentication(AuthCode.MD5Password, this.md5Salt);
    return encodeAuthentication(AuthCode.SASL, encodeSaslMechanisms(this.scram!.mechanisms()));
  }

  /** One 'p' message from the client. */
  onResponse(msg: Buffer): AuthStep {
    try {
      return this.md5Salt ? this.onMd5(msg) : this.onScram(msg);
    } catch (err: unknown) {
      if (err instanceof ScramError) {
        const wrongPassword = err.sqlstate === SqlState.InvalidPassword;
        return {
          kind: 'failed',
          reason: wrongPassword ? 'wrong_password' : 'scram_error',
          error: wrongPassword
            ? this.wrongPassword()
            : { code: err.sqlstate, message: err.message, detail: err.detail },
        };
      }
      throw err;
    }
  }

  private onMd5(msg: Buffer): AuthStep {
    const user = this.user!;
    const v = user.verifier;
    this.method = 'md5';
    if (v.kind === 'md5' && md5Check(v.md5, this.md5Salt!, decodePasswordMessage(msg))) {
      return { kind: 'done', user };
    }
    return { kind: 'failed', reason: 'wrong_password', error: this.wrongPassword() };
  }

  private onScram(msg: Buffer): AuthStep {
    const scram = this.scram!;
    if (this.step++ === 0) {
      const { mechanism, data } = decodeSaslInitialResponse(msg);
      this.method = mechanism;
      const serverFirst = scram.handleClientFirst(mechanism, data);
      return { kind: 'reply', message: encodeAuthentication(AuthCode.SASLContinue, serverFirst) };
    }
    const serverFinal = scram.handleClientFinal(decodeAuthResponse(msg));
    // A mock exchange never gets here: its proof never verifies.
    return {
      kind: 'done',
      user: this.user!,
      message: encodeAuthentication(AuthCode.SASLFinal, serverFinal),
    };
  }

  private wrongPassword(): Omit<ErrorFields, 'severity'> {
    return {
      code: SqlState.InvalidPassword,
      message: `password authentication failed for user "${this.name}"`,
    };
  }
}

export type LoginStep = { kind: 'reply'; message: Buffer } | { kind: 'wait' } | { kind: 'ok' };

export class UpstreamLoginError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UpstreamLoginError';
  }
}

export class UpstreamLogin {
  private scram: ScramClient | undefined;
  /** The method the server asked for, for the log: a SASL mechanism, 'md5', 'password' or 'trust'. */
  method = 'trust';

  constructor(
    private readonly user: string,
    private readonly password: string | undefined,
    /** tls-server-end-point of the upstream server's certificate, when the connection is TLS. */
    private readonly channelBinding: Buffer | undefined,
    /** Methods the operator allows (upstream.require_auth); undefined: any, as libpq. */
    private readonly allowed?: ReadonlySet<string>,
  ) {}

  /** Refuses a method the operator did not allow, before any secret is sent. */
  private use(method: 'password' | 'md5' | 'scram-sha-256' | 'none'): void {
    if (this.allowed && !this.allowed.has(method)) {
      throw new UpstreamLoginError(
        `the server asked for ${method === 'none' ? 'no' : method} authentication, which upstream.require_auth does not allow`,
      );
    }
  }

  /**
   * One Authentication request from the upstream server. Throws (or, for the
   * SCRAM proof, whose key derivation runs off the event loop, rejects).
   */
  onRequest(code: number, data: Buffer): LoginStep | Promise<LoginStep> {
    switch (code) {
      case AuthCode.Ok:
        if (this.method === 'trust') this.use('none');
        if (this.scram && !this.scramVerified) {
          throw new UpstreamLoginError('the server ended SCRAM without proving it knows the password');
        }
        return { kind: 'ok' };
      case AuthCode.CleartextPassword:
        this.use('password');
        this.method = 'password';
        return { kind: 'reply', message: encodePasswordMessage(this.needPassword()) };
      case AuthCode.MD5Password:
        this.use('md5');
        this.method = 'md5';
        return {
          kind: 'reply',
          message: encodeAuthResponse(md5Response(this.user, this.needPassword(), data)),
        };
      case AuthCode.SASL: {
        this.use('scram-sha-256');
        this.scram = new ScramClient({
          password: this.needPassword(),
          serverMechanisms: decodeSaslMechanisms(data),
          channelBinding: this.channelBinding,
        });
        this.method = this.scram.mechanism;
        return {
          kind: 'reply',
          message: encodeSaslInitialResponse(this.scram.mechanism, this.scram.clientFirst()),
        };
      }
      case AuthCode.SASLContinue:
        if (!this.scram) throw new UpstreamLoginError('SASL continue before SASL start');
        return this.scram
          .clientFinal(data)
          .then((final): LoginStep => ({ kind: 'reply', message: encodeAuthResponse(final) }));
      case AuthCode.SASLFinal:
        if (!this.scram) throw new UpstreamLoginError('SASL final before SASL start');
        this.scram.verifyServerFinal(data);
        this.scramVerified = true;
        return { kind: 'wait' };
      default:
        throw new UpstreamLoginError(
          `the server asked for an authentication method the proxy does not do (${code})`,
        );
    }
  }

  private scramVerified = false;

  private needPassword(): string {
    if (this.password === undefined) {
      throw new UpstreamLoginError('the server asked for a password and none is configured for this user');
    }
    return this.password;
  }
}
