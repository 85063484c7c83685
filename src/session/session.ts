/**
 * One client connection and its own upstream connection.
 *
 * Data path: client bytes → MessageFramer (whole messages) → policy decision →
 * upstream bytes (raw, or a substitute when refused); upstream bytes →
 * BackendScanner (headers only) → client, with only ReadyForQuery,
 * ParameterStatus, ErrorResponse, BackendKeyData and auth messages looked at.
 *
 * A refused statement is never sent. In its place the server is given a
 * statement that fails harmlessly, so the server's transaction ends up exactly as
 * after a server-side error; the server's error is then swapped for the proxy's.
 */
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { performance } from 'node:perf_hooks';
import type { Logger } from '../observability/logger.js';
import { connectionResultFor, type Metrics } from '../observability/metrics.js';
import { rowsOfTag, type Audit, type AuditSession } from '../observability/audit.js';
import type { ProxyConfig, UpstreamTarget } from '../config/config.js';
import type { Decision, Policy, Refusal } from '../policy/types.js';
import type { ClientTls } from '../tls/client-tls.js';
import type { ProxyUser, UserDirectory } from '../auth/users.js';
import { tlsServerEndPoint } from '../auth/channel-binding.js';
import { SCRAM_SHA_256_PLUS } from '../auth/scram.js';
import { AuthCode, BackendCode, FrontendCode, StartupCode, TxStatus } from '../protocol/codes.js';
import { SqlState } from '../protocol/sqlstate.js';
import { MessageFramer } from '../protocol/message-framer.js';
import { BackendScanner, codeSet, type Verdict } from '../protocol/backend-scanner.js';
import {
  decodeAuthentication,
  decodeBackendKeyData,
  decodeSaslMechanisms,
  encodeAuthentication,
  encodeSaslMechanisms,
  decodeErrorFields,
  decodeParameterStatus,
  decodeReadyForQuery,
  encodeBackendKeyData,
  encodeErrorResponse,
  encodeNegotiateProtocolVersion,
  type BackendKey,
  type ErrorFields,
} from '../protocol/backend-messages.js';
import {
  decodeBindNames,
  decodeExecute,
  decodeParse,
  decodeQuery,
  decodeSaslInitialResponse,
  decodeStartupPacket,
  encodeCancelRequest,
  encodeBind,
  encodeExecute,
  encodeFlush,
  encodeParse,
  encodeQuery,
  encodeStartupMessage,
  encodeTerminate,
} from '../protocol/frontend-messages.js';
import { MalformedMessage } from '../protocol/reader.js';
import {
  connectUpstream,
  fallbackAttempt,
  firstAttempt,
  peerCertificateDer,
  UpstreamConnectError,
  type Attempt,
} from '../upstream/connect.js';
import { sanitiseStartup } from './startup.js';
import { ClientAuthenticator, UpstreamLogin } from './proxy-auth.js';
import type { CancelRegistry } from './cancel-registry.js';
import {
  handoffGreeting,
  poolIdentity,
  PoolCloseReason,
  type PooledUpstream,
  type PoolIdentity,
  type UpstreamPool,
} from '../upstream/pool.js';

export interface SessionContext {
  config: ProxyConfig;
  upstream: UpstreamTarget;
  policy: Policy;
  logger: Logger;
  cancels: CancelRegistry;
  metrics: Metrics;
  /** Takes one of the user's connection slots (limits.max_connections_per_user); false when none is left. */
  admitUser(user: string): boolean;
  releaseUser(user: string): void;
  audit?: Audit | undefined;
  clientTls: ClientTls;
  /** Proxy-managed users (auth.mode proxy); undefined: passthrough. */
  users: UserDirectory | undefined;
  /** upstream.require_auth, for proxy-managed users' upstream logins. */
  upstreamRequireAuth?: ReadonlySet<string> | undefined;
  /** Warm upstream sessions for proxy-managed users (pool.*); undefined in passthrough. */
  pool?: UpstreamPool | undefined;
  onClose(session: Session): void;
}

/**
 * startup: reading the first packet; tls: a TLS handshake with the client;
 * client_auth: the proxy itself authenticating the client (proxy-managed users);
 * connecting: opening the upstream; authenticating: the upstream login.
 */
type Phase = 'startup' | 'tls' | 'client_auth' | 'connecting' | 'authenticating' | 'ready' | 'closed';

/**
 * Client encodings (as the server reports them) in which every byte below 0x80 is
 * the ASCII character it looks like: the proxy lexes them as the server does.
 * Anything else (SJIS, SHIFT_JIS_2004, BIG5, GBK, UHC, GB18030, JOHAB, or a name
 * the proxy does not know) ends the session.
 */
const SAFE_CLIENT_ENCODING =
  /^(SQL_ASCII|UTF8|MULE_INTERNAL|LATIN([1-9]|10)|WIN(866|874|125[0-8])|KOI8[RU]|ISO_8859_[5-8]|EUC_(JP|CN|KR|TW|JIS_2004))$/;

/** Bytes whose meaning in SQL text depends on standard_conforming_strings or client_encoding. */
const SETTING_SENSITIVE_BYTE = /[\\\x80-\xff]/;

/** Size caps before login, as PostgreSQL's own: startup packet and authentication responses. */
const MAX_STARTUP_PACKET = 10000;
const MAX_AUTH_MESSAGE = 65535;

/** Rows, counted from their headers when a result limit is configured. */
const RESULT_CODES = codeSet([BackendCode.DataRow, BackendCode.CopyData]);

/** Upstream messages the session must see while it is ready. */
const READY_CODE_LIST = [
  BackendCode.ReadyForQuery,
  BackendCode.ParameterStatus,
  BackendCode.ErrorResponse,
  BackendCode.BackendKeyData,
  BackendCode.Authentication,
  BackendCode.CopyInResponse,
  BackendCode.CopyBothResponse,
  BackendCode.NegotiateProtocolVersion,
  // Each Execute ends in one of these (or an ErrorResponse): counted to learn
  // when an executed COMMIT has started a new transaction inside a batch.
  BackendCode.CommandComplete,
  BackendCode.EmptyQueryResponse,
  BackendCode.PortalSuspended,
];
const READY_CODES = codeSet(READY_CODE_LIST);

/** Client bytes a barrier lets wait in the framer before the client socket is paused. */
const HELD_BYTES = 256 * 1024;

/** The upstream messages an error during inspection can safely carry. */
const MAX_INSPECTED_MESSAGE = 16 * 1024 * 1024;

let nextSessionId = 1;

export class Session {
  readonly id = nextSessionId++;
  readonly startedAt = Date.now();
  private phase: Phase = 'startup';
  private readonly log: Logger;
  private readonly framer: MessageFramer;
  private client: Socket;
  /** The client's TLS, when it negotiated it. */
  private clientTls: TLSSocket | undefined;
  private sawFirstBytes = false;
  private upstream: Socket | undefined;
  private upstreamTls: TLSSocket | undefined;
  private upstreamAttempt: Attempt | undefined;
  private upstreamParams: Array<[string, string]> = [];
  /** The upstream connection was retried once (libpq's sslmode allow / prefer fallback). */
  private upstreamRetried = false;
  private scanner: BackendScanner | undefined;
  private negotiations = 0;
  private clientAuth: ClientAuthenticator | undefined;
  private proxyUser: ProxyUser | undefined;
  /** How the proxy authenticated the client (proxy-managed users), for the log. */
  private clientAuthMethod: string | undefined;
  private upstreamLogin: UpstreamLogin | undefined;
  /** Passthrough: an upstream authentication request reached the client (no silent retry after that). */
  private clientSawAuth = false;
  /** Passthrough: the client's next 'p' message is a SASLInitialResponse. */
  private expectSaslInitial = false;

  private user = '';
  private database = '';
  private applicationName = '';
  private proxyKey: BackendKey | undefined;
  private upstreamKey: BackendKey | undefined;
  private textEncoding: 'utf8' | 'latin1' = 'utf8';
  private readOnlyConfirmed = false;
  private serverVersionNum = 0;
  private sessionAuthorization: string | undefined;
  private txStatus: TxStatus = TxStatus.Idle;

  /** Sync points sent upstream and ReadyForQuery messages received back. */
  private segmentsSent = 0;
  /** The client is held at the barrier until the next ReadyForQuery. */
  private awaitingReady = false;
  /** Messages since the last Sync belong to one extended-query batch. */
  private inBatch = false;
  /** A Bind (which plans, and so may fold functions) or Execute was sent in this batch: settings may have changed since. */
  private ranCodeInBatch = false;
  /**
   * Statements parsed in this batch, and portals bound from them, that run no
   * user code (INERT_KINDS): their Bind and Execute do not count as ranCodeInBatch.
   * Within a batch the last Parse of a name is what the server holds, unless it
   * failed, and then the server skips everything until Sync anyway.
   */
  private readonly inertStatements = new Set<string>();
  private readonly inertPortals = new Set<string>();
  /** The server answered an Execute in this batch with COMMIT: a new transaction began. */
  private batchCommitted = false;
  /** The server reported an error in this batch: it skips everything until Sync. */
  private batchFailed = false;
  /** Executes sent whose CommandComplete / EmptyQueryResponse / PortalSuspended is due. */
  private executesInFlight = 0;
  /** The session has parsed a COMMIT: each Execute is answered before the next message goes. */
  private commitParsed = false;
  /** The client is held until the Execute in flight is answered. */
  private awaitingExecute = false;
  private startupTimer: NodeJS.Timeout | undefined;
  private segmentsDone = 0;
  /**
   * The refusal whose substitute error is due back. The barrier keeps one sync
   * point in flight, and after the first error the server skips to Sync, so only
   * the first refusal before a ReadyForQuery can ever be answered.
   */
  private pending: { nonce: string; refusal: Refusal } | undefined;

  private statements = 0;
  /** Rows and bytes of the query in flight (limits.max_result_rows / max_result_bytes). */
  private resultRows = 0;
  private resultBytes = 0;
  /** Why the query in flight was cancelled for a result limit. */
  private limitHit: string | undefined;
  /** The proxy's error for the limit has been sent in place of what ended the result. */
  private limitReported = false;
  private cancelDone: Promise<void> | undefined;
  /** The client is held until a cancel for a result limit has reached the server. */
  private awaitingCancel = false;
  /** Holds one of the user's connection slots. */
  private admitted = false;
  private idleTimer: NodeJS.Timeout | undefined;
  /** The simple query in flight, for its audit record at ReadyForQuery. */
  private audited: { sql: string; decision: Decision; rows: number; bytes: number } | undefined;
  private auditDue:
    { sql: string; decision: Decision; rows: number; bytes: number; durationMs: number } | undefined;
  private readonly clientAddress: string;
  /** When the sync point in flight was sent (the barrier keeps one in flight), for the query-time histogram. */
  private syncSentAt = 0;
  /** This connection's outcome has been counted (once it became ready). */
  private resultCounted = false;
  private refused = 0;
  private closeReason = '';
  /** Messages for the upstream gathered during one pump(), and the socket they are for. */
  private readonly batch: Buffer[] = [];
  private batchTarget: Socket | undefined;
  /** Set by an inspector that ended the session: close once its last message is written. */
  private closeAfterWrite: string | undefined;
  /** Proxy-managed, pool on at login: who may share this upstream session (src/upstream/pool.ts). */
  private poolId: PoolIdentity | undefined;
  /** The pooled upstream session this client was handed, if it was. */
  private pooled: PooledUpstream | undefined;
  /** When the upstream connection was opened (pool.max_lifetime_ms counts from here). */
  private upstreamOpenedAt = 0;
  /** Every ParameterStatus of the upstream session, latest value, in the order first reported. */
  private reportedParams = new Map<string, string>();
  /** This session's listeners on its upstream socket, taken off when the socket goes to the pool. */
  private upstreamListeners:
    { data: (chunk: Buffer) => void; error: (err: Error) => void; close: () => void } | undefined;
  /** Cancels forwarded upstream, each resolving true once it reached the server in time. */
  private readonly cancelsInFlight = new Set<Promise<boolean>>();

  constructor(
    client: Socket,
    private readonly ctx: SessionContext,
  ) {
    this.client = client;
    this.clientAddress = `${client.remoteAddress ?? 'local'}:${client.remotePort ?? 0}`;
    this.log = ctx.logger.child({ session: this.id, client: this.clientAddress });
    this.framer = new MessageFramer(Math.min(MAX_STARTUP_PACKET, ctx.config.maxMessageBytes), {
      untypedFirst: true,
    });
    this.startupTimer = setTimeout(() => {
      this.fatal(
        { code: SqlState.QueryCanceled, message: 'canceling authentication due to timeout' },
        'startup_timeout',
      );
    }, ctx.config.startupTimeoutMs);
    this.startupTimer.unref();
    this.bindClient(client);
    ctx.metrics.connectionOpened();
    this.log.info({ event: 'connection_opened' }, 'connection opened');
  }

  private bindClient(socket: Socket): void {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onClientData(chunk));
    socket.on('error', (err) => {
      if (this.phase === 'tls') {
        this.log.warn({ event: 'tls_handshake_failed', err: err.message }, 'client TLS handshake failed');
        this.close('TLS handshake failed');
      } else {
        this.log.debug({ err: err.message }, 'client socket error');
      }
    });
    socket.on('close', () => this.onClientClosed());
  }

  private onClientData(chunk: Buffer): void {
    this.ctx.metrics.bytesIn(chunk.length);
    this.clearIdleTimer();
    if (!this.sawFirstBytes) {
      this.sawFirstBytes = true;
      // A TLS handshake record as the very first byte: direct TLS (PostgreSQL 17's
      // sslnegotiation=direct). Without TLS configured it fails as a bad length.
      if (chunk[0] === 0x16 && this.ctx.clientTls.enabled) return this.startClientTls(chunk, true);
    }
    this.framer.push(chunk);
    this.pump();
  }

  /**
   * Wraps the client socket in TLS. `initial`: bytes already read that belong
   * to the handshake (direct TLS). Sessions keep the certificate they started
   * with; a reload affects new handshakes only.
   */
  private startClientTls(initial: Buffer | undefined, direct: boolean): void {
    const raw = this.client;
    raw.pause();
    raw.removeAllListeners('data');
    raw.removeAllListeners('close');
    raw.removeAllListeners('error');
    raw.on('error', () => undefined);
    if (initial) raw.unshift(initial);
    this.phase = 'tls';
    const tls = new TLSSocket(raw, {
      isServer: true,
      secureContext: this.ctx.clientTls.context!,
      ALPNProtocols: ['postgresql'],
    });
    this.client = tls;
    this.clientTls = tls;
    this.bindClient(tls);
    tls.once('secure', () => {
      if (this.phase !== 'tls') return;
      if (direct && tls.alpnProtocol !== 'postgresql') {
        this.fatal(
          {
            code: SqlState.ProtocolViolation,
            message: 'received direct TLS connection request without ALPN protocol negotiation extension',
          },
          'protocol_violation',
        );
        return;
      }
      this.phase = 'startup';
      this.log.debug(
        { event: 'tls_established', direct, protocol: tls.getProtocol(), cipher: tls.getCipher().name },
        'client TLS established',
      );
      this.pump();
    });
  }

  get isReady(): boolean {
    return this.phase === 'ready';
  }

  /* ------------------------------------------------------------------ client side */

  private pump(): void {
    // Messages for the upstream are gathered and written once at the end: one
    // write (one syscall) for what one read from the client brought.
    // A pump() inside another (a message handler that pumps) adds to its batch.
    const up = this.batchTarget === undefined ? this.upstream : undefined;
    if (up) this.batchTarget = up;
    try {
      while (
        this.phase === 'startup' ||
        this.phase === 'client_auth' ||
        this.phase === 'authenticating' ||
        this.phase === 'ready'
      ) {
        if (this.phase === 'ready' && (this.awaitingExecute || this.awaitingCancel)) {
          this.updateClientFlow();
          break;
        }
        if (this.phase === 'ready' && this.segmentsSent > this.segmentsDone) {
          // The barrier: nothing of the next transaction goes upstream before the
          // server's ReadyForQuery for the last sync point, and with it any report
          // that default_transaction_read_only changed, has been checked.
          this.awaitingReady = true;
          this.updateClientFlow();
          break;
        }
        const r = this.framer.next();
        if (r.kind === 'incomplete') break;
        if (r.kind === 'error') {
          const what =
            r.reason === 'length_too_large'
              ? `message length ${r.length} exceeds the limit`
              : `invalid message length ${r.length}`;
          this.fatal(
            { code: SqlState.ProtocolViolation, message: `pg-readonly-proxy: ${what}` },
            'protocol_violation',
          );
          break;
        }
        if (this.phase === 'startup') this.onStartupPacket(r.msg);
        else this.onClientMessage(r.code, r.msg);
      }
    } catch (err) {
      if (err instanceof MalformedMessage) {
        this.fatal({ code: SqlState.ProtocolViolation, message: err.message }, 'protocol_violation');
      } else {
        this.log.error({ err }, 'internal error handling client message');
        this.fatal(
          { code: SqlState.InternalError, message: 'pg-readonly-proxy: internal error' },
          'internal_error',
        );
      }
    } finally {
      if (up) this.flushBatch(up);
    }
  }

  private flushBatch(up: Socket): void {
    this.batchTarget = undefined;
    const batch = this.batch;
    if (batch.length === 0 || up.destroyed) {
      batch.length = 0;
      return;
    }
    let ok: boolean;
    if (batch.length === 1) ok = up.write(batch[0]!);
    else {
      up.cork();
      ok = true;
      for (const b of batch) ok = up.write(b) && ok;
      up.uncork();
    }
    batch.length = 0;
    if (!ok) this.holdUntilDrained(up);
  }

  /** The upstream's buffer is full: the client is not read until it drains. */
  private holdUntilDrained(up: Socket): void {
    this.updateClientFlow();
    up.once('drain', () => this.updateClientFlow());
  }

  private onStartupPacket(msg: Buffer): void {
    const packet = decodeStartupPacket(msg);
    switch (packet.type) {
      case 'ssl':
      case 'gssenc':
        if (this.clientTls) {
          this.fatal(
            {
              code: SqlState.ProtocolViolation,
              message: 'encryption negotiation on an encrypted connection',
            },
            'protocol_violation',
          );
          return;
        }
        if (packet.type === 'ssl' && this.ctx.clientTls.enabled) {
          if (this.framer.buffered > 0) {
            // Bytes sent before the handshake would be read as if they had come
            // over TLS (CVE-2021-23214).
            this.fatal(
              { code: SqlState.ProtocolViolation, message: 'received unencrypted data after SSL request' },
              'protocol_violation',
            );
            return;
          }
          this.client.write(Buffer.from('S'));
          this.startClientTls(undefined, false);
          return;
        }
        // GSS encryption is never offered, nor TLS without a certificate: 'N', and the client goes on in plaintext.
        if (++this.negotiations > 2) {
          this.fatal(
            { code: SqlState.ProtocolViolation, message: 'too many encryption negotiation requests' },
            'protocol_violation',
          );
          return;
        }
        this.client.write(Buffer.from('N'));
        return;
      case 'cancel': {
        const outcome = this.ctx.cancels.cancel(packet.processId, packet.secretKey);
        this.log.info({ event: 'cancel_request', outcome }, 'cancel request');
        // close(), not just end(): the server must forget this session too.
        this.close('cancel request');
        return;
      }
      case 'unknown':
        this.fatal(
          {
            code: SqlState.FeatureNotSupported,
            message: `unsupported frontend protocol ${packet.code >>> 16}.${packet.code & 0xffff}: server supports 3.0 to 3.0`,
          },
          'startup_unsupported_protocol',
        );
        return;
      case 'startup':
        break;
    }
    if (!this.clientTls && this.ctx.clientTls.mode === 'require') {
      this.ctx.metrics.securityEvent('plaintext_refused');
      this.log.warn(
        { event: 'security', kind: 'plaintext_refused', user: packet.params.get('user') },
        'plaintext connection refused: TLS is required',
      );
      this.fatal(
        {
          code: SqlState.InvalidAuthorizationSpecification,
          message: 'pg-readonly-proxy requires TLS: this connection is not encrypted',
          hint: 'Connect with sslmode=require (or verify-ca / verify-full).',
        },
        'plaintext_refused',
      );
      return;
    }
    const result = sanitiseStartup(packet.params, this.ctx.policy);
    if (!result.ok) {
      const r = result.refusal;
      this.ctx.metrics.securityEvent(r.event);
      this.log.warn(
        {
          event: 'security',
          kind: r.event,
          user: packet.params.get('user'),
          database: packet.params.get('database'),
        },
        `startup packet refused: ${r.message}`,
      );
      this.fatal({ code: r.sqlstate, message: r.message, detail: r.detail, hint: r.hint }, r.event);
      return;
    }
    const s = result.startup;
    this.user = s.user;
    this.database = s.database;
    this.applicationName = packet.params.get('application_name') ?? '';
    this.framer.expectUntyped(false);
    this.framer.setMaxLength(Math.min(MAX_AUTH_MESSAGE, this.ctx.config.maxMessageBytes));
    if (packet.minor > 0 || s.unsupportedProtocolOptions.length > 0) {
      // Sessions run protocol 3.0 end to end: tell the client, as a server would.
      this.client.write(encodeNegotiateProtocolVersion(StartupCode.Protocol3, s.unsupportedProtocolOptions));
    }
    this.upstreamParams = s.upstreamParams;
    if (this.ctx.users) {
      this.clientAuth = new ClientAuthenticator(s.user, this.ctx.users, this.clientChannelBinding());
      this.phase = 'client_auth';
      this.client.write(this.clientAuth.start());
      return;
    }
    this.connect();
  }

  private connect(): void {
    if (this.takePooled()) return;
    this.phase = 'connecting';
    this.client.pause();
    void this.openUpstream(firstAttempt(this.ctx.upstream));
  }

  /** tls-server-end-point of the certificate this client's handshake used. */
  private clientChannelBinding(): Buffer | undefined {
    const cert = this.clientTls?.getCertificate();
    return cert && 'raw' in cert && Buffer.isBuffer(cert.raw) ? tlsServerEndPoint(cert.raw) : undefined;
  }

  /** A 'p' message while the proxy itself authenticates the client. */
  private onClientAuthResponse(msg: Buffer): void {
    const step = this.clientAuth!.onResponse(msg);
    switch (step.kind) {
      case 'reply':
        this.client.write(step.message);
        return;
      case 'failed':
        this.ctx.metrics.securityEvent('auth_failed');
        this.log.warn(
          { event: 'security', kind: 'auth_failed', reason: step.reason, user: this.user },
          `authentication failed: ${step.error.message}`,
        );
        return this.fatal(step.error, 'auth_failed');
      case 'done': {
        this.clientAuthMethod = this.clientAuth!.method;
        this.clientAuth = undefined;
        const user = step.user;
        if (user.databases && !user.databases.has(this.database)) {
          this.ctx.metrics.securityEvent('database_not_granted');
          this.log.warn(
            { event: 'security', kind: 'database_not_granted', user: this.user, database: this.database },
            'database not granted to this proxy user',
          );
          return this.fatal(
            {
              code: SqlState.InsufficientPrivilege,
              message: `permission denied for database "${this.database}"`,
              detail: `The proxy user "${user.name}" is not granted this database.`,
            },
            'database_not_granted',
          );
        }
        if (step.message) this.client.write(step.message);
        this.proxyUser = user;
        this.upstreamParams = this.upstreamParams.map(([k, v]): [string, string] =>
          k === 'user' ? [k, user.upstreamUser] : [k, v],
        );
        this.log.info(
          { event: 'client_authenticated', user: this.user, upstream_user: user.upstreamUser },
          'client authenticated by the proxy',
        );
        return this.connect();
      }
    }
  }

  /**
   * Passthrough SCRAM: channel binding ties the client's proof to the TLS
   * session it sees, which ends at the proxy; the server's TLS session is a
   * different one. A client that binds (SCRAM-SHA-256-PLUS), or that says it
   * could have bound ('y') while the server's connection is TLS (the server then
   * suspects a downgrade), is stopped here with the reason, not with the
   * server's puzzling error.
   */
  private checkPassthroughSasl(msg: Buffer): boolean {
    const { mechanism, data } = decodeSaslInitialResponse(msg);
    const binds = mechanism === SCRAM_SHA_256_PLUS;
    if (!binds && !(data[0] === 0x79 /* y */ && this.upstreamTls)) return true;
    this.log.warn(
      { event: 'channel_binding_refused', mechanism, user: this.user },
      'SCRAM channel binding cannot be relayed',
    );
    this.fatal(
      {
        code: SqlState.InvalidAuthorizationSpecification,
        message: 'pg-readonly-proxy cannot relay SCRAM channel binding',
        detail:
          "The client's TLS connection ends at the proxy, and the proxy's connection to the server is a different TLS session, so the server cannot check a binding to the client's.",
        hint: 'Connect with channel_binding=disable, or log in as a proxy-managed user (auth.mode: proxy), whose SCRAM binds to the proxy itself.',
      },
      'channel_binding_refused',
    );
    return false;
  }

  private onClientMessage(code: number, msg: Buffer): void {
    if (this.phase === 'client_auth') {
      if (code === FrontendCode.AuthResponse) return this.onClientAuthResponse(msg);
      if (code === FrontendCode.Terminate) return this.close('client terminated');
      return this.fatal(
        {
          code: SqlState.ProtocolViolation,
          message: `expected an authentication response, got message type "${String.fromCharCode(code)}"`,
        },
        'protocol_violation',
      );
    }
    if (this.phase === 'authenticating') {
      if (code === FrontendCode.AuthResponse) {
        if (this.upstreamLogin) {
          // The proxy logs in upstream itself: nothing of the client's may join
          // that exchange (it would let a client try passwords on the server).
          return this.fatal(
            {
              code: SqlState.ProtocolViolation,
              message: 'unexpected authentication response: the client is already authenticated',
            },
            'protocol_violation',
          );
        }
        if (this.expectSaslInitial) {
          this.expectSaslInitial = false;
          if (!this.checkPassthroughSasl(msg)) return;
        }
        return this.toUpstream(msg);
      }
      if (code === FrontendCode.Terminate) return this.close('client terminated');
      return this.fatal(
        {
          code: SqlState.ProtocolViolation,
          message: `expected an authentication response, got message type "${String.fromCharCode(code)}"`,
        },
        'protocol_violation',
      );
    }
    switch (code) {
      case FrontendCode.Query:
      case FrontendCode.FunctionCall:
        if (this.inBatch) {
          // Whether the server answers it depends on an error state inside the
          // batch that the proxy cannot see; real drivers send Sync first.
          return this.fatal(
            {
              code: SqlState.ProtocolViolation,
              message:
                'pg-readonly-proxy: a simple query or function call inside an extended-query batch; send Sync first',
            },
            'protocol_violation',
          );
        }
        return code === FrontendCode.Query ? this.onQuery(msg) : this.onFunctionCall();
      case FrontendCode.Parse:
        this.inBatch = true;
        return this.onParse(msg);
      case FrontendCode.Sync:
        this.clearIdleTimer();
        this.segmentsSent++;
        this.syncSentAt = performance.now();
        this.inBatch = false;
        this.ranCodeInBatch = false;
        this.batchCommitted = false;
        this.inertStatements.clear();
        this.inertPortals.clear();
        return this.toUpstream(msg);
      case FrontendCode.Bind: {
        this.inBatch = true;
        if (this.batchCommitted) return this.refuseAfterCommit('Bind', (m) => encodeBind(m));
        const { portal, statement } = decodeBindNames(msg);
        if (this.inertStatements.has(statement)) this.inertPortals.add(portal);
        else {
          this.inertPortals.delete(portal);
          this.ranCodeInBatch = true;
        }
        return this.toUpstream(msg);
      }
      case FrontendCode.Execute:
        this.inBatch = true;
        return this.onExecute(msg);
      case FrontendCode.Describe:
        this.inBatch = true;
        return this.toUpstream(msg);
      case FrontendCode.Close:
        this.inBatch = true;
        // Whatever is closed is no longer known to be inert.
        this.inertStatements.clear();
        this.inertPortals.clear();
        return this.toUpstream(msg);
      case FrontendCode.Flush:
        return this.toUpstream(msg);
      case FrontendCode.Terminate:
        return this.close('client terminated');
      case FrontendCode.CopyData:
      case FrontendCode.CopyDone:
      case FrontendCode.CopyFail:
        return this.fatal(
          {
            code: SqlState.ProtocolViolation,
            message: 'pg-readonly-proxy: COPY data received while not in COPY FROM STDIN',
          },
          'protocol_violation',
        );
      default:
        return this.fatal(
          { code: SqlState.ProtocolViolation, message: `invalid frontend message type ${code}` },
          'protocol_violation',
        );
    }
  }

  private decodeText(bytes: Buffer): string {
    return bytes.toString(this.textEncoding);
  }

  private onQuery(msg: Buffer): void {
    const sql = this.decodeText(decodeQuery(msg));
    this.statements++;
    const decision = this.classify(sql);
    this.clearIdleTimer();
    this.segmentsSent++;
    this.syncSentAt = performance.now();
    if (this.ctx.audit) this.audited = { sql, decision, rows: 0, bytes: 0 };
    if (decision.allowed) return this.toUpstream(msg);
    const marker = this.recordRefusal(decision.refusal!, 'Query');
    this.toUpstream(encodeQuery(substituteSql(marker)));
  }

  private onParse(msg: Buffer): void {
    const parse = decodeParse(msg);
    this.inertStatements.delete(parse.name);
    if (this.batchCommitted)
      return this.refuseAfterCommit('Parse', (m) => encodeParse(parse.name, substituteSql(m)));
    this.statements++;
    if (this.ranCodeInBatch && SETTING_SENSITIVE_BYTE.test(parse.query.toString('latin1'))) {
      // An Execute earlier in this batch may have changed standard_conforming_strings
      // or client_encoding, which the server reports only at Sync: the proxy could
      // read this text differently from the server.
      const marker = this.recordRefusal(
        {
          code: 'batch_boundary',
          sqlstate: SqlState.FeatureNotSupported,
          kind: 'PARSE',
          message:
            'pg-readonly-proxy: a statement with backslashes or non-ASCII characters after a Bind or Execute in the same batch is not allowed: a setting that changes how it is read may have changed',
          hint: 'Send Sync before parsing this statement.',
        },
        'Parse',
      );
      return this.toUpstream(encodeParse(parse.name, substituteSql(marker)));
    }
    const text = this.decodeText(parse.query);
    const decision = this.classify(text);
    this.ctx.audit?.record(this.auditSession(), 'Parse', text, decision);
    // A statement that runs no user code and changes no setting (BEGIN, SAVEPOINT,
    // RELEASE): binding and executing it later in this batch leaves how the
    // server reads SQL text as it was. Drivers send their BEGIN this way.
    if (decision.allowed && decision.statements.length === 1 && INERT_KINDS.has(decision.statements[0]!.kind))
      this.inertStatements.add(parse.name);
    if (decision.allowed) {
      // COMMIT (with or without AND CHAIN) and DISCARD ALL end a transaction inside a batch.
      if (
        !this.commitParsed &&
        decision.statements.some((st) => st.kind === 'COMMIT' || st.kind === 'DISCARD ALL')
      ) {
        this.commitParsed = true;
      }
      return this.toUpstream(msg);
    }
    const marker = this.recordRefusal(decision.refusal!, 'Parse');
    this.toUpstream(encodeParse(parse.name, substituteSql(marker)));
  }

  /**
   * Once the server has committed inside a batch, what follows would run in a new
   * transaction before the server reports (at Sync) a read-only setting that a
   * function turned off: Parse, Bind and Execute are refused until Sync.
   */
  private refuseAfterCommit(via: string, substitute: (marker: string) => Buffer): void {
    this.statements++;
    const marker = this.recordRefusal(
      {
        code: 'transaction_boundary',
        sqlstate: SqlState.ReadOnlySqlTransaction,
        kind: via.toUpperCase(),
        message: `pg-readonly-proxy: ${via} after COMMIT in the same batch is not allowed: it would run in a new transaction before the proxy can check the one that ended`,
        hint: 'Send Sync after COMMIT before sending more statements.',
      },
      via,
    );
    this.toUpstream(substitute(marker));
  }

  private onExecute(msg: Buffer): void {
    if (this.batchCommitted) {
      const { maxRows } = decodeExecute(msg);
      // A portal that cannot exist: the server fails it, naming the marker.
      return this.refuseAfterCommit('Execute', (m) => encodeExecute(m, maxRows));
    }
    if (!this.inertPortals.has(decodeExecute(msg).portal)) this.ranCodeInBatch = true;
    if (this.batchFailed) return this.toUpstream(msg); // skipped by the server: no answer comes
    this.executesInFlight++;
    this.toUpstream(msg);
    if (this.commitParsed) {
      // This Execute may be a COMMIT: have the server answer it now (Flush), and
      // send nothing more until it has.
      this.toUpstream(FLUSH);
      this.awaitingExecute = true;
    }
  }

  /** CommandComplete, EmptyQueryResponse, PortalSuspended or an error: an Execute was answered. */
  private onExecuteAnswered(code: number, msg: Buffer): void {
    if (code === BackendCode.ErrorResponse) {
      this.batchFailed = true;
      this.executesInFlight = 0;
    } else if (this.executesInFlight > 0) {
      this.executesInFlight--;
      if (code === BackendCode.CommandComplete && isCommitTag(msg)) this.batchCommitted = true;
    } else {
      return;
    }
    if (this.awaitingExecute && this.executesInFlight === 0) {
      this.awaitingExecute = false;
      process.nextTick(() => {
        this.updateClientFlow();
        this.pump();
      });
    }
  }

  private onFunctionCall(): void {
    this.clearIdleTimer();
    this.segmentsSent++;
    this.syncSentAt = performance.now();
    this.statements++;
    const marker = this.recordRefusal(
      {
        code: 'forbidden_function',
        sqlstate: SqlState.InsufficientPrivilege,
        kind: 'FUNCTION CALL',
        message: 'pg-readonly-proxy: the fast-path FunctionCall message is not allowed',
        hint: 'Call the function from a SELECT statement instead.',
      },
      'FunctionCall',
    );
    this.toUpstream(encodeQuery(substituteSql(marker)));
  }

  private auditSession(): AuditSession {
    return {
      session: this.id,
      client: this.clientAddress,
      user: this.user,
      database: this.database,
      applicationName: this.applicationName,
    };
  }

  /** The policy's decision, timed and counted (a refusal is counted where it is recorded). */
  private classify(sql: string): Decision {
    const started = performance.now();
    const decision = this.ctx.policy.classify(sql);
    const m = this.ctx.metrics;
    m.observeClassification((performance.now() - started) / 1e3);
    if (decision.allowed) for (const st of decision.statements) m.statement(true, st.kind);
    return decision;
  }

  private recordRefusal(refusal: Refusal, via: string): string {
    this.refused++;
    this.ctx.metrics.statement(false, refusal.kind, refusal.code);
    const nonce = randomBytes(8).toString('hex');
    this.pending ??= { nonce, refusal };
    this.log.warn(
      {
        event: 'statement_refused',
        via,
        reason: refusal.code,
        kind: refusal.kind,
        sqlstate: refusal.sqlstate,
        user: this.user,
        database: this.database,
        application_name: this.applicationName,
      },
      refusal.message,
    );
    return `${MARKER_PREFIX}${nonce}`;
  }

  /* ---------------------------------------------------------------- upstream side */

  private async openUpstream(attempt: Attempt): Promise<void> {
    let socket: Socket;
    this.upstreamAttempt = attempt;
    try {
      const started = performance.now();
      const conn = await connectUpstream(
        this.ctx.upstream,
        this.ctx.config.upstreamConnectTimeoutMs,
        attempt,
      );
      this.ctx.metrics.observeUpstreamConnect((performance.now() - started) / 1e3);
      socket = conn.socket;
      this.upstreamTls = conn.tls;
    } catch (err) {
      const fallback =
        err instanceof UpstreamConnectError && err.duringTls
          ? fallbackAttempt(this.ctx.upstream, true)
          : undefined;
      if (fallback && !this.upstreamRetried && this.phase === 'connecting') {
        // sslmode=prefer: the TLS handshake failed, so try without TLS, as libpq does.
        this.upstreamRetried = true;
        this.log.info(
          { event: 'upstream_retry', attempt: fallback, err: (err as Error).message },
          'retrying upstream',
        );
        return this.openUpstream(fallback);
      }
      const detail = err instanceof UpstreamConnectError ? err.message : String(err);
      this.log.error({ event: 'upstream_connect_failed', err: detail }, 'could not connect to upstream');
      this.fatal(
        {
          code: SqlState.ConnectionFailure,
          message: 'pg-readonly-proxy: could not connect to the upstream server',
          detail,
        },
        'upstream_connect_failed',
      );
      return;
    }
    if (this.phase === 'closed') {
      socket.destroy();
      return;
    }
    this.upstream = socket;
    this.upstreamOpenedAt = Date.now();
    this.scanner = this.newScanner();
    if (this.proxyUser) {
      const cert = this.upstreamTls && peerCertificateDer(this.upstreamTls);
      this.upstreamLogin = new UpstreamLogin(
        this.proxyUser.upstreamUser,
        this.proxyUser.upstreamPassword,
        cert ? tlsServerEndPoint(cert) : undefined,
        this.ctx.upstreamRequireAuth,
      );
    }
    this.attachUpstream(socket);
    socket.resume();
    this.phase = 'authenticating';
    socket.write(encodeStartupMessage(this.upstreamParams));
    this.updateClientFlow();
    this.pump();
  }

  /**
   * sslmode allow / prefer: the server refused the first attempt during startup
   * (pg_hba.conf wants the other kind of connection), so try the other kind
   * once, as libpq does. Only while the client has seen nothing of the first.
   */
  private retryUpstream(): boolean {
    if (this.upstreamRetried || this.clientSawAuth || this.phase !== 'authenticating') return false;
    const fallback = fallbackAttempt(
      this.ctx.upstream,
      this.upstreamAttempt !== 'plain' && !!this.upstreamTls,
    );
    if (!fallback) return false;
    this.upstreamRetried = true;
    this.log.info(
      { event: 'upstream_retry', attempt: fallback },
      'server refused the connection: retrying upstream',
    );
    const old = this.upstream!;
    old.removeAllListeners();
    old.on('error', () => undefined);
    old.destroy();
    this.scanner?.halt();
    this.upstream = undefined;
    this.upstreamTls = undefined;
    // Nothing learnt from the first attempt counts for the second.
    this.readOnlyConfirmed = false;
    this.serverVersionNum = 0;
    this.sessionAuthorization = undefined;
    this.upstreamKey = undefined;
    this.reportedParams.clear();
    this.phase = 'connecting';
    this.updateClientFlow();
    void this.openUpstream(fallback);
    return true;
  }

  private onUpstreamData(chunk: Buffer): void {
    if (this.phase === 'closed') return;
    let pieces: Buffer[] = [];
    try {
      pieces = this.scanner!.scan(chunk);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'malformed upstream stream');
      this.fatal(
        {
          code: SqlState.ProtocolViolation,
          message: 'pg-readonly-proxy: invalid message from the upstream server',
        },
        'upstream_protocol',
      );
      return;
    }
    const c = this.client;
    let ok = true;
    let n = 0;
    for (const p of pieces) n += p.length;
    this.ctx.metrics.bytesOut(n);
    if (this.audited) this.audited.bytes += n;
    const due = this.auditDue;
    if (due) {
      this.auditDue = undefined;
      this.ctx.audit?.record(this.auditSession(), 'Query', due.sql, due.decision, {
        durationMs: due.durationMs,
        rows: due.rows,
        bytes: due.bytes + n,
      });
    }
    if (pieces.length === 1) ok = c.write(pieces[0]!);
    else if (pieces.length > 1) {
      c.cork();
      for (const p of pieces) ok = c.write(p) && ok;
      c.uncork();
    }
    if (this.closeAfterWrite) return this.close(this.closeAfterWrite);
    if (!ok && this.upstream && !this.upstream.isPaused()) {
      this.upstream.pause();
      c.once('drain', () => this.upstream?.resume());
    }
  }

  /** Called by the scanner for each message type in `interesting`. */
  private readonly onUpstreamMessage = (code: number, msg: Buffer): Verdict => {
    const hitBefore = this.limitHit;
    const verdict = this.inspectUpstream(code, msg);
    const hit = hitBefore ?? this.limitHit;
    if (hit === undefined || code === BackendCode.ParameterStatus || this.closeAfterWrite) return verdict;
    if (code === BackendCode.ReadyForQuery) return verdict; // the error was put in front of it if still due
    // After a result limit was hit, the rest of that query is dropped; what ended
    // the result (or failed it) is replaced by the proxy's error, once.
    const ends =
      code === BackendCode.CommandComplete ||
      code === BackendCode.PortalSuspended ||
      code === BackendCode.ErrorResponse ||
      code === BackendCode.EmptyQueryResponse;
    if (ends && !this.limitReported) {
      this.limitReported = true;
      return this.limitError(hit);
    }
    return null;
  };

  /**
   * limits.max_result_rows / max_result_bytes: rows (DataRow, CopyData) and
   * their bytes per query are counted; past a limit the query is cancelled,
   * the rest of it dropped, and the client told which limit it hit.
   */
  private readonly onResultData = (code: number, length: number): boolean => {
    if (this.limitHit || this.phase === 'closed') return true;
    this.resultRows++;
    this.resultBytes += length;
    const { maxResultRows, maxResultBytes } = this.ctx.config;
    let hit: string | undefined;
    if (maxResultRows !== undefined && this.resultRows > maxResultRows) {
      hit = `the result has more than limits.max_result_rows (${maxResultRows}) rows`;
    } else if (maxResultBytes !== undefined && this.resultBytes > maxResultBytes) {
      hit = `the result is larger than limits.max_result_bytes (${maxResultBytes} bytes)`;
    }
    if (hit === undefined) return false;
    this.limitHit = hit;
    this.log.warn({ event: 'result_limit', why: hit, code: String.fromCharCode(code) }, 'result limit hit');
    this.ctx.metrics.error('result_limit');
    this.cancelDone = this.cancelUpstream();
    return true;
  };

  private limitError(why: string): Buffer {
    return encodeErrorResponse({
      severity: 'ERROR',
      code: SqlState.ProgramLimitExceeded,
      message: `pg-readonly-proxy: query cancelled: ${why}`,
      hint: 'Narrow the query (WHERE, LIMIT) or ask the operator to raise the limit.',
      routine: 'pg_readonly_proxy',
    });
  }

  private inspectUpstream(code: number, msg: Buffer): Verdict {
    if (this.phase === 'closed') return null;
    switch (code) {
      case BackendCode.ReadyForQuery:
        return this.onReadyForQuery(msg);
      case BackendCode.ParameterStatus:
        return this.onParameterStatus(msg);
      case BackendCode.ErrorResponse:
        if (this.phase === 'ready') this.onExecuteAnswered(code, msg);
        if (this.phase === 'authenticating') return this.onLoginError(msg);
        return this.onUpstreamError(msg);
      case BackendCode.CommandComplete:
        if (this.audited) this.audited.rows += rowsOfTag(msg.toString('latin1', 5, msg.length - 1));
        this.onExecuteAnswered(code, msg);
        return undefined;
      case BackendCode.EmptyQueryResponse:
      case BackendCode.PortalSuspended:
        this.onExecuteAnswered(code, msg);
        return undefined;
      case BackendCode.BackendKeyData:
        this.upstreamKey = decodeBackendKeyData(msg);
        if (this.proxyKey) this.ctx.cancels.release(this.proxyKey.processId);
        this.proxyKey = this.ctx.cancels.issue(this);
        return encodeBackendKeyData(this.proxyKey);
      case BackendCode.Authentication:
        if (this.phase !== 'authenticating')
          return this.upstreamViolation('authentication request after login');
        return this.onAuthentication(msg);
      case BackendCode.NegotiateProtocolVersion:
        return null;
      default:
        // CopyInResponse / CopyBothResponse: COPY FROM and replication are always refused.
        return this.upstreamViolation(`unexpected message type "${String.fromCharCode(code)}"`);
    }
  }

  private onAuthentication(msg: Buffer): Verdict {
    const { code, data } = decodeAuthentication(msg);
    if (this.upstreamLogin) {
      // Proxy-managed: the proxy logs in with the operator's credentials; the
      // client sees none of it, only the AuthenticationOk at the end.
      let step;
      try {
        step = this.upstreamLogin.onRequest(code, data);
      } catch (err) {
        return this.upstreamLoginFailed((err as Error).message);
      }
      if (step instanceof Promise) {
        const upstream = this.upstream;
        step.then(
          (s) => {
            if (this.phase === 'authenticating' && this.upstream === upstream && s.kind === 'reply')
              this.toUpstream(s.message);
          },
          (err: Error) => {
            if (this.phase !== 'authenticating' || this.upstream !== upstream) return;
            const error = this.upstreamLoginFailed(err.message);
            if (error) this.endWith(error, 'upstream login failed');
          },
        );
        return null;
      }
      if (step.kind === 'reply') {
        this.toUpstream(step.message);
        return null;
      }
      if (step.kind === 'wait') return null;
    } else {
      this.clientSawAuth = true;
      if (code === AuthCode.SASL) {
        this.expectSaslInitial = true;
        // Over plaintext a client must not be offered channel binding: libpq
        // takes the offer as a sign that TLS was stripped, and refuses.
        const mechanisms = decodeSaslMechanisms(data);
        if (!this.clientTls && mechanisms.includes(SCRAM_SHA_256_PLUS)) {
          const plain = mechanisms.filter((m) => m !== SCRAM_SHA_256_PLUS);
          return encodeAuthentication(AuthCode.SASL, encodeSaslMechanisms(plain));
        }
      }
    }
    if (code === AuthCode.Ok) {
      // From here on the client has seen this attempt: no fallback to another.
      this.clientSawAuth = true;
      if (!this.ctx.admitUser(this.user)) {
        this.scanner?.halt();
        this.closeAfterWrite = 'per-user connection limit';
        return this.userLimitError();
      }
      this.admitted = true;
      this.logAuthenticated(this.upstreamLogin?.method);
    }
    return undefined;
  }

  /** limits.max_connections_per_user reached at login: logged, counted, and the client's FATAL. */
  private userLimitError(): Buffer {
    this.log.warn(
      { event: 'connection_limit', user: this.user, limit: this.ctx.config.maxConnectionsPerUser },
      'too many connections for this user',
    );
    this.ctx.metrics.connectionResult('refused_limit');
    this.resultCounted = true;
    return encodeErrorResponse({
      severity: 'FATAL',
      code: SqlState.TooManyConnections,
      message: `too many connections for role "${this.user}"`,
      hint: 'pg-readonly-proxy limits the sessions one user may hold (limits.max_connections_per_user).',
    });
  }

  /** The `authenticated` log line; `pooled`: the upstream session came from the pool. */
  private logAuthenticated(upstreamAuth: string | undefined, pooled?: { uses: number }): void {
    this.log.info(
      {
        event: 'authenticated',
        user: this.user,
        upstream_user: this.proxyUser?.upstreamUser,
        database: this.database,
        application_name: this.applicationName,
        client_tls: this.clientTls?.getProtocol() ?? false,
        upstream_tls: this.upstreamTls?.getProtocol() ?? false,
        client_auth: this.clientAuthMethod ?? 'passthrough',
        upstream_auth: upstreamAuth,
        ...(pooled ? { pooled: true, upstream_uses: pooled.uses } : {}),
      },
      'authenticated',
    );
  }

  /** An error from the server before the session is ready. */
  private onLoginError(msg: Buffer): Verdict {
    if (this.retryUpstream()) return null;
    if (!this.upstreamLogin) return undefined; // passthrough: the server's own words
    const fields = decodeErrorFields(msg);
    const code = fields.get('C') ?? SqlState.ConnectionFailure;
    // The server's words may name the upstream role (a failed password, a
    // role's connection limit): the client gets the proxy's, with the server's
    // SQLSTATE, and the log gets the server's. Only "no such database", which
    // names what the client asked for, is passed on as it is.
    if (code === INVALID_CATALOG_NAME) return undefined;
    return this.upstreamLoginFailed(fields.get('M') ?? 'login refused', code);
  }

  private upstreamLoginFailed(why: string, code: string = SqlState.ConnectionFailure): Verdict {
    this.log.error(
      { event: 'upstream_login_failed', user: this.user, upstream_user: this.proxyUser?.upstreamUser, why },
      'the upstream server refused the configured login',
    );
    this.scanner?.halt();
    this.closeAfterWrite = 'upstream login failed';
    return encodeErrorResponse({
      severity: 'FATAL',
      code,
      message: `pg-readonly-proxy: could not log in upstream for user "${this.user}"`,
      hint: 'The operator should check the upstream credentials configured for this user.',
    });
  }

  private onReadyForQuery(msg: Buffer): Verdict {
    this.txStatus = decodeReadyForQuery(msg);
    if (this.phase === 'authenticating') {
      if (this.serverVersionNum < 140000) {
        // Older servers do not report default_transaction_read_only, so the proxy
        // could not watch it (and PostgreSQL 13 is past its end of life).
        this.closeAfterWrite = 'server too old';
        this.scanner?.halt();
        return encodeErrorResponse({
          severity: 'FATAL',
          code: SqlState.FeatureNotSupported,
          message: `pg-readonly-proxy needs PostgreSQL 14 or newer upstream (the server is ${this.serverVersionNum || 'unknown'})`,
        });
      }
      if (!this.readOnlyConfirmed)
        return this.pinViolation('the server did not confirm default_transaction_read_only = on');
      return this.becomeReady(msg);
    }
    this.segmentsDone++;
    this.resultRows = 0;
    this.resultBytes = 0;
    const limitHit = this.limitHit;
    this.limitHit = undefined;
    this.armIdleTimer(decodeReadyForQuery(msg));
    const seconds = (performance.now() - this.syncSentAt) / 1e3;
    this.ctx.metrics.observeQuery(seconds);
    if (this.audited) {
      // Recorded once this chunk's bytes are counted (onUpstreamData).
      this.auditDue = { ...this.audited, durationMs: Math.round(seconds * 1e6) / 1e3 };
      this.audited = undefined;
    }
    this.batchFailed = false;
    this.executesInFlight = 0;
    if (limitHit) {
      // Nothing more of this client goes upstream until the server has taken the
      // cancel: it must not land on the next query.
      this.awaitingCancel = true;
      this.updateClientFlow();
      void (this.cancelDone ?? Promise.resolve()).then(() => {
        this.awaitingCancel = false;
        this.updateClientFlow();
        this.pump();
      });
    }
    if (this.awaitingReady && this.segmentsDone >= this.segmentsSent) {
      this.awaitingReady = false;
      // After this ReadyForQuery (and any ParameterStatus before it) is handled.
      process.nextTick(() => {
        this.updateClientFlow();
        this.pump();
      });
    }
    this.pending = undefined;
    const reported = this.limitReported;
    this.limitReported = false;
    if (limitHit && !reported) return Buffer.concat([this.limitError(limitHit), msg]);
    return undefined;
  }

  /**
   * limits.idle_client_timeout_ms, as PostgreSQL's idle_session_timeout: a client
   * idle outside a transaction (nothing in flight) that long is disconnected.
   * Inside a transaction the pinned idle_in_transaction_session_timeout rules.
   */
  private clearIdleTimer(): void {
    if (this.idleTimer) {
      clearTimeout(this.idleTimer);
      this.idleTimer = undefined;
    }
  }

  private armIdleTimer(status: TxStatus): void {
    const ms = this.ctx.config.idleClientTimeoutMs;
    if (ms <= 0 || status !== TxStatus.Idle || this.segmentsDone < this.segmentsSent) return;
    // Not idle: the client's next messages are already here, waiting.
    if (this.framer.buffered > 0 || this.awaitingCancel) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.framer.buffered > 0 || this.segmentsDone < this.segmentsSent) return;
      this.fatal(
        { code: SqlState.IdleSessionTimeout, message: 'terminating connection due to idle-session timeout' },
        'idle_timeout',
      );
    }, ms);
    this.idleTimer.unref();
  }

  private becomeReady(msg: Buffer): Buffer {
    this.phase = 'ready';
    setImmediate(() => this.armIdleTimer(TxStatus.Idle));
    this.ctx.metrics.connectionResult('ok');
    this.resultCounted = true;
    clearTimeout(this.startupTimer);
    this.framer.setMaxLength(this.ctx.config.maxMessageBytes);
    this.log.info(
      { event: 'session_ready', server_version: this.serverVersionNum },
      'session ready, read-only pinned',
    );
    setImmediate(() => this.pump());
    return msg;
  }

  /* ------------------------------------------------- pooled upstream sessions */

  /** The upstream scanner: every row is looked at too when a result limit is configured. */
  private newScanner(): BackendScanner {
    const limited =
      this.ctx.config.maxResultRows !== undefined || this.ctx.config.maxResultBytes !== undefined;
    // With result limits, rows are counted from their headers, never assembled.
    return limited
      ? new BackendScanner(
          READY_CODES,
          this.onUpstreamMessage,
          MAX_INSPECTED_MESSAGE,
          RESULT_CODES,
          this.onResultData,
        )
      : new BackendScanner(READY_CODES, this.onUpstreamMessage, MAX_INSPECTED_MESSAGE);
  }

  private attachUpstream(socket: Socket): void {
    const listeners = {
      data: (chunk: Buffer) => this.onUpstreamData(chunk),
      error: (err: Error) => this.log.debug({ err: err.message }, 'upstream socket error'),
      close: () => this.close('upstream closed'),
    };
    socket.on('data', listeners.data);
    socket.on('error', listeners.error);
    socket.on('close', listeners.close);
    this.upstreamListeners = listeners;
  }

  private detachUpstream(socket: Socket): void {
    const l = this.upstreamListeners;
    if (!l) return;
    socket.off('data', l.data);
    socket.off('error', l.error);
    socket.off('close', l.close);
    this.upstreamListeners = undefined;
  }

  /**
   * Proxy-managed users with the pool on, right after the proxy authenticated
   * the client: an idle upstream session of the same key (user, database,
   * credentials, startup parameters), if the pool has one, and the client
   * greeted as after a fresh login (AuthenticationOk, the server's
   * ParameterStatus set, a new BackendKeyData of the proxy's, ReadyForQuery).
   * False: log in upstream as usual.
   */
  private takePooled(): boolean {
    const pool = this.ctx.pool;
    const user = this.proxyUser;
    if (!pool || !user || !pool.enabled) return false;
    const id = poolIdentity(user, this.database, this.upstreamParams);
    this.poolId = id;
    const conn = pool.acquire(id);
    if (!conn) return false;
    // The session's own checks, as on the ParameterStatus of a fresh login.
    let refused: string | undefined;
    for (const [name, value] of conn.parameters) refused ??= this.watchParameter(name, value);
    if (!refused && this.serverVersionNum < 140000) refused = 'server older than PostgreSQL 14';
    if (!refused && !this.readOnlyConfirmed) refused = 'default_transaction_read_only not confirmed';
    if (refused) {
      this.readOnlyConfirmed = false;
      this.serverVersionNum = 0;
      this.sessionAuthorization = undefined;
      this.textEncoding = 'utf8';
      pool.discard(conn, PoolCloseReason.HandoutCheck, refused);
      return false;
    }
    if (!this.ctx.admitUser(this.user)) {
      // Untouched: back to the pool (after another reset), and the client refused as after a fresh login.
      pool.release(id, conn);
      this.endWith(this.userLimitError(), 'per-user connection limit');
      return true;
    }
    this.admitted = true;
    this.pooled = conn;
    this.upstream = conn.socket;
    this.upstreamTls = conn.tls;
    this.upstreamOpenedAt = conn.openedAt;
    this.upstreamKey = conn.backendKey;
    // Kept current from here on, and handed back with the session.
    this.reportedParams = conn.parameters;
    this.scanner = this.newScanner();
    this.attachUpstream(conn.socket);
    conn.socket.resume();
    this.proxyKey = this.ctx.cancels.issue(this);
    this.logAuthenticated(conn.loginMethod, conn);
    // AuthenticationOk ... ReadyForQuery 'I', in one write.
    const greeting = this.becomeReady(handoffGreeting(conn.parameters, this.proxyKey));
    this.ctx.metrics.bytesOut(greeting.length);
    this.client.write(greeting);
    this.updateClientFlow();
    return true;
  }

  /**
   * From close(): a proxy-managed session whose client ended cleanly with
   * nothing in flight hands its upstream session to the pool, which resets it
   * (or closes it); any other ending leaves it to close(), counted by reason.
   */
  private returnUpstream(reason: string): void {
    const pool = this.ctx.pool;
    const id = this.poolId;
    const up = this.upstream;
    if (!pool || !id || !up || this.phase !== 'ready') return;
    const refused = this.poolRefusal(reason, up);
    if (refused) {
      pool.notReused(refused, { session: this.id, user: this.user, database: this.database, why: reason });
      return;
    }
    this.detachUpstream(up);
    this.upstream = undefined;
    const cancels = [...this.cancelsInFlight];
    const settled = cancels.length > 0 ? Promise.all(cancels).then((ok) => ok.every(Boolean)) : undefined;
    pool.release(
      id,
      {
        socket: up,
        tls: this.upstreamTls,
        backendKey: this.upstreamKey!,
        parameters: this.reportedParams,
        loginMethod: this.pooled?.loginMethod ?? this.upstreamLogin?.method,
        openedAt: this.upstreamOpenedAt,
        uses: (this.pooled?.uses ?? 0) + 1,
      },
      settled,
    );
  }

  /**
   * Why this session's upstream session may not serve another client; undefined
   * when the client ended cleanly (Terminate or disconnect) with every Sync
   * answered, outside a transaction, and nothing else the proxy would have to
   * be sure about.
   */
  private poolRefusal(reason: string, up: Socket): PoolCloseReason | undefined {
    if (reason === 'pin violation') return PoolCloseReason.PinViolation;
    if ((reason !== 'client terminated' && reason !== 'client disconnected') || this.closeAfterWrite)
      return PoolCloseReason.SessionError;
    // A result limit cancelled a query upstream (cancelDone stays set once one has).
    if (this.limitHit !== undefined || this.cancelDone !== undefined) return PoolCloseReason.ResultLimit;
    if (
      this.segmentsSent !== this.segmentsDone ||
      this.inBatch ||
      this.executesInFlight > 0 ||
      this.pending !== undefined ||
      this.awaitingReady ||
      this.awaitingExecute ||
      this.awaitingCancel
    )
      return PoolCloseReason.InFlight;
    if (this.txStatus !== TxStatus.Idle) return PoolCloseReason.InTransaction;
    if (
      !this.readOnlyConfirmed ||
      !this.upstreamKey ||
      up.destroyed ||
      !up.writable ||
      up.readableEnded ||
      up.writableLength > 0
    )
      return PoolCloseReason.SessionError;
    return undefined;
  }

  /**
   * Remembers a cancel forwarded upstream until it has settled: a cancel that
   * lands after the session went back to the pool would hit the next client, so
   * the pool waits for these before the reset. One that took longer than
   * CANCEL_SETTLE_MS (the cancel connection timed out) counts as unsettled.
   */
  private trackCancel(sent: Promise<void>): Promise<void> {
    const started = Date.now();
    const settled = sent.then(
      () => Date.now() - started < CANCEL_SETTLE_MS,
      () => false,
    );
    this.cancelsInFlight.add(settled);
    void settled.then(() => this.cancelsInFlight.delete(settled));
    return sent;
  }

  /** Tracks a reported setting; returns why the session must end, if it must. */
  private watchParameter(name: string, value: string): string | undefined {
    switch (name) {
      case 'default_transaction_read_only':
        if (value !== 'on') return 'default_transaction_read_only was turned off';
        this.readOnlyConfirmed = true;
        return undefined;
      case 'standard_conforming_strings':
        return value === 'on' ? undefined : 'standard_conforming_strings was turned off';
      case 'client_encoding':
        if (!SAFE_CLIENT_ENCODING.test(value.toUpperCase())) return `client_encoding was set to ${value}`;
        this.textEncoding = value.toUpperCase() === 'UTF8' ? 'utf8' : 'latin1';
        return undefined;
      case 'session_authorization':
        if (this.sessionAuthorization !== undefined && this.sessionAuthorization !== value) {
          return 'session_authorization changed';
        }
        this.sessionAuthorization = value;
        return undefined;
      case 'server_version':
        this.serverVersionNum = parseServerVersion(value);
        return undefined;
      default:
        return undefined;
    }
  }

  private onParameterStatus(msg: Buffer): Verdict {
    const { name, value } = decodeParameterStatus(msg);
    this.reportedParams.set(name, value);
    const violation = this.watchParameter(name, value);
    return violation ? this.pinViolation(violation) : undefined;
  }

  private onUpstreamError(msg: Buffer): Verdict {
    if (!this.pending) return undefined;
    const message = decodeErrorFields(msg).get('M') ?? '';
    const at = message.indexOf(MARKER_PREFIX);
    if (at < 0) return undefined;
    const nonce = message.slice(at + MARKER_PREFIX.length, at + MARKER_PREFIX.length + 16);
    if (nonce !== this.pending.nonce) return undefined;
    const { refusal } = this.pending;
    this.pending = undefined;
    return encodeErrorResponse({
      severity: 'ERROR',
      code: refusal.sqlstate,
      message: refusal.message,
      detail: refusal.detail,
      hint: refusal.hint,
      position: refusal.position,
      routine: 'pg_readonly_proxy',
    });
  }

  /** The upstream session stopped being read-only: end it at once. */
  private pinViolation(why: string): Verdict {
    this.ctx.metrics.securityEvent('pin_violation');
    this.log.error(
      { event: 'security', kind: 'pin_violation', why, user: this.user, database: this.database },
      `read-only pin violated: ${why}`,
    );
    this.scanner?.halt();
    const error = encodeErrorResponse({
      severity: 'FATAL',
      code: SqlState.ReadOnlySqlTransaction,
      message: `pg-readonly-proxy: terminating connection: ${why}`,
      hint: 'The session left read-only mode, so the proxy ended it.',
    });
    this.closeAfterWrite = 'pin violation';
    return error;
  }

  private upstreamViolation(why: string): Verdict {
    this.log.error({ event: 'upstream_protocol', why }, 'unexpected upstream message');
    this.scanner?.halt();
    this.closeAfterWrite = 'upstream protocol violation';
    return encodeErrorResponse({
      severity: 'FATAL',
      code: SqlState.ProtocolViolation,
      message: `pg-readonly-proxy: ${why}`,
    });
  }

  /* ------------------------------------------------------------------- lifecycle */

  /**
   * Sends the upstream server a CancelRequest for this session, encrypted as the
   * session is. Resolves once the server has closed that connection (it has
   * taken the request) or after 5 seconds, never rejects.
   */
  cancelUpstream(): Promise<void> {
    const key = this.upstreamKey;
    if (!key) return Promise.resolve();
    const attempt = this.upstreamTls ? 'tls' : 'plain';
    this.log.info({ event: 'cancel_forwarded' }, 'cancel forwarded upstream');
    const sent = connectUpstream(this.ctx.upstream, 5000, attempt).then(
      ({ socket }) =>
        new Promise<void>((resolve) => {
          const timer = setTimeout(() => socket.destroy(), 5000);
          timer.unref();
          socket.on('error', () => undefined);
          socket.on('close', () => {
            clearTimeout(timer);
            resolve();
          });
          socket.resume();
          socket.end(encodeCancelRequest(key.processId, key.secretKey));
        }),
      (err: Error) => this.log.debug({ err: err.message }, 'cancel connection error'),
    );
    return this.trackCancel(sent);
  }

  private toUpstream(msg: Buffer): void {
    const up = this.upstream;
    if (!up || up.destroyed) return;
    if (up === this.batchTarget) {
      this.batch.push(msg);
      return;
    }
    if (!up.write(msg)) this.holdUntilDrained(up);
  }

  /** The client is read only while the upstream can take more and no barrier holds it. */
  private updateClientFlow(): void {
    // While a barrier holds, what the client sends waits in the framer; the
    // socket is paused only once that passes HELD_BYTES (a client that waits
    // for each answer, as most do, never toggles it).
    const held =
      (this.awaitingReady || this.awaitingExecute || this.awaitingCancel) &&
      this.framer.buffered > HELD_BYTES;
    const hold = held || (this.upstream?.writableNeedDrain ?? false) || this.phase === 'connecting';
    if (hold && !this.client.isPaused()) this.client.pause();
    else if (!hold && this.client.isPaused() && this.phase !== 'closed') this.client.resume();
  }

  /** Sends a FATAL error to the client, then closes both sides. */
  fatal(e: Omit<ErrorFields, 'severity'>, kind: string): void {
    if (this.phase !== 'closed') this.ctx.metrics.error(kind);
    this.log.warn({ event: 'fatal', kind, sqlstate: e.code }, e.message);
    this.endWith(encodeErrorResponse({ severity: 'FATAL', ...e }), kind);
  }

  private endWith(lastMessage: Buffer, reason: string): void {
    if (this.phase === 'closed') return;
    if (!this.client.destroyed) this.client.end(lastMessage);
    this.close(reason);
  }

  /** Ends the session from outside (shutdown). */
  terminate(message: string): void {
    this.fatal({ code: SqlState.AdminShutdown, message }, 'admin_shutdown');
  }

  private onClientClosed(): void {
    if (this.phase === 'closed') return;
    if (this.phase === 'ready' && this.segmentsSent > this.segmentsDone) {
      // The client left mid-query: stop the server working for nobody.
      this.cancelUpstream();
    }
    this.close('client disconnected');
  }

  close(reason: string): void {
    if (this.phase === 'closed') return;
    // What this pump() gathered goes first (before any Terminate, or a reset).
    if (this.batchTarget !== undefined) this.flushBatch(this.batchTarget);
    this.returnUpstream(reason);
    // A query the session ended before it finished (a pin violation, a client
    // that left) still gets its audit record.
    const unfinished = this.audited ?? this.auditDue;
    if (unfinished) {
      this.ctx.audit?.record(this.auditSession(), 'Query', unfinished.sql, unfinished.decision, {
        rows: unfinished.rows,
        bytes: unfinished.bytes,
        ended: this.closeReason || reason,
      });
      this.audited = this.auditDue = undefined;
    }
    this.phase = 'closed';
    clearTimeout(this.idleTimer);
    if (this.admitted) this.ctx.releaseUser(this.user);
    this.ctx.metrics.connectionClosed();
    if (!this.resultCounted)
      this.ctx.metrics.connectionResult(connectionResultFor(this.closeReason || reason));
    clearTimeout(this.startupTimer);
    this.closeReason ||= reason;
    const up = this.upstream;
    if (up && !up.destroyed) {
      up.end(encodeTerminate());
      up.destroySoon();
    }
    if (!this.client.destroyed) this.client.end();
    setTimeout(() => {
      up?.destroy();
      this.client.destroy();
    }, 1000).unref();
    if (this.proxyKey) this.ctx.cancels.release(this.proxyKey.processId);
    this.log.info(
      {
        event: 'connection_closed',
        reason: this.closeReason,
        duration_ms: Date.now() - this.startedAt,
        statements: this.statements,
        refused: this.refused,
        user: this.user || undefined,
        database: this.database || undefined,
      },
      'connection closed',
    );
    this.ctx.onClose(this);
  }
}

const MARKER_PREFIX = 'pg-readonly-proxy refused statement ';

/** A cancel connection that took this long may not have reached the server before the session was reused. */
const CANCEL_SETTLE_MS = 4000;

/** SQLSTATE 3D000: the database the client named does not exist. */
const INVALID_CATALOG_NAME = '3D000';

const FLUSH = encodeFlush();

/** Statement kinds whose Bind and Execute run no user code and change no setting. */
const INERT_KINDS = new Set(['BEGIN', 'START TRANSACTION', 'SAVEPOINT', 'RELEASE']);

/** CommandComplete tags after which the server starts a new transaction inside a batch. */
const NEW_TRANSACTION_TAGS = new Set(['COMMIT', 'DISCARD ALL']);

function isCommitTag(msg: Buffer): boolean {
  const end = msg.indexOf(0, 5);
  return end > 5 && NEW_TRANSACTION_TAGS.has(msg.toString('latin1', 5, end));
}

/**
 * A statement that fails in PostgreSQL's parse analysis, before anything runs,
 * carrying the marker in its error message.
 */
function substituteSql(marker: string): string {
  return `SELECT '${marker}'::pg_catalog.int4`;
}

/** server_version as a number like server_version_num: '18.1' → 180001, '9.6.2' → 90602. */
export function parseServerVersion(v: string): number {
  const m = /^(\d+)(?:\.(\d+))?(?:\.(\d+))?/.exec(v);
  if (!m) return 0;
  const major = Number(m[1]);
  return major >= 10
    ? major * 10000 + Number(m[2] ?? 0)
    : major * 10000 + Number(m[2] ?? 0) * 100 + Number(m[3] ?? 0);
}
