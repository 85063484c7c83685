/**
 * Warm upstream sessions for proxy-managed users (auth.mode: proxy).
 *
 * The proxy holds these users' upstream credentials, so the upstream session a
 * client has finished with can serve the next client that would have opened
 * exactly the same one. The key is the proxy user, the database, the upstream
 * credentials and the sanitised startup parameters sent upstream
 * (application_name, client_encoding, DateStyle, options, the pinned settings,
 * ...): PostgreSQL's RESET ALL returns every setting to its startup value, so a
 * reset session of a key reports the same ParameterStatus values a fresh login
 * with that key would.
 *
 * A session comes back only when its client ended cleanly with nothing in
 * flight (the session decides that, see Session.returnUpstream), and is kept
 * only after a reset answered as expected: `DISCARD ALL`, then a check that the
 * session is still pinned read-only, still the same role and the same backend.
 * Anything else closes it. Idle sessions are closed after idle_timeout_ms,
 * every session once max_lifetime_ms old, and a reload that changes a user's
 * upstream credentials or databases closes that user's idle sessions.
 *
 * The pool owns a socket only while resetting it or holding it idle; a session
 * owns it the rest of the time. Nothing the pool reads reaches a client: the
 * session greets the next client itself from the ParameterStatus values the
 * pool kept.
 */
import { createHmac, randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { PoolConfig } from '../config/config.js';
import type { ProxyUser, UserDirectory } from '../auth/users.js';
import type { Logger } from '../observability/logger.js';
import { PoolCloseReason, type Metrics } from '../observability/metrics.js';
import { BackendCode, TxStatus } from '../protocol/codes.js';
import {
  decodeErrorFields,
  decodeParameterStatus,
  decodeReadyForQuery,
  encodeAuthenticationOk,
  encodeBackendKeyData,
  encodeParameterStatus,
  encodeReadyForQuery,
  type BackendKey,
} from '../protocol/backend-messages.js';
import { encodeQuery, encodeTerminate } from '../protocol/frontend-messages.js';
import { MessageFramer } from '../protocol/message-framer.js';
import { MessageReader } from '../protocol/reader.js';

export { PoolCloseReason };

/** Who may share an upstream session: all of it must match. */
export interface PoolIdentity {
  /** Everything below and the upstream startup parameters, as one string. */
  key: string;
  /** The proxy user's name. */
  user: string;
  database: string;
  /** Keyed hash of the upstream role and password the session logged in with. */
  credential: string;
}

/** An upstream session as a session hands it back. */
export interface UpstreamHandle {
  socket: Socket;
  tls: TLSSocket | undefined;
  /** The upstream backend's own key, for cancels. */
  backendKey: BackendKey;
  /** Every ParameterStatus the server reported, latest value, in the order first reported. */
  parameters: Map<string, string>;
  /** How the proxy logged in upstream (for the log). */
  loginMethod: string | undefined;
  /** When the upstream connection was opened: max_lifetime_ms counts from here. */
  openedAt: number;
  /** Clients it has served, the last one included. */
  uses: number;
}

export interface PooledUpstream extends PoolIdentity, UpstreamHandle {}

/** Per-process secret for credential fingerprints: nothing derived from a password outlives the process. */
const FINGERPRINT_KEY = randomBytes(32);

/** Users are rebuilt as a whole on reload, so a fingerprint can be kept with the object it was made from. */
const fingerprints = new WeakMap<object, string>();

/** Fingerprint of the upstream credentials a user logs in with. */
export function credentialOf(user: Pick<ProxyUser, 'upstreamUser' | 'upstreamPassword'>): string {
  let f = fingerprints.get(user);
  if (f === undefined) {
    f = createHmac('sha256', FINGERPRINT_KEY)
      .update(JSON.stringify([user.upstreamUser, user.upstreamPassword ?? null]))
      .digest('base64url');
    fingerprints.set(user, f);
  }
  return f;
}

/**
 * The pool key. `params` are the sanitised parameters of the upstream
 * StartupMessage, in the order sent (user and database included); the
 * credential is a fingerprint, so the key holds no secret.
 */
export function poolIdentity(
  user: ProxyUser,
  database: string,
  params: ReadonlyArray<readonly [string, string]>,
): PoolIdentity {
  const credential = credentialOf(user);
  return {
    key: JSON.stringify([user.name, database, credential, params]),
    user: user.name,
    database,
    credential,
  };
}

const AUTHENTICATION_OK = encodeAuthenticationOk();
const READY_IDLE = encodeReadyForQuery(TxStatus.Idle);

/**
 * What a client sees after its login when it is handed a pooled session, as
 * after a fresh one, in one buffer: AuthenticationOk, the server's
 * ParameterStatus set, BackendKeyData (the proxy's key for this client),
 * ReadyForQuery 'I'.
 */
export function handoffGreeting(parameters: Map<string, string>, proxyKey: BackendKey): Buffer {
  return Buffer.concat([
    AUTHENTICATION_OK,
    ...[...parameters].map(([name, value]) => encodeParameterStatus(name, value)),
    encodeBackendKeyData(proxyKey),
    READY_IDLE,
  ]);
}

/**
 * The reset: two simple queries, pipelined (DISCARD ALL cannot share a query
 * string with anything). The check runs after the reset and reads what the next
 * client depends on; every name is schema-qualified or a keyword.
 */
const DISCARD = encodeQuery('DISCARD ALL');
const CHECK = encodeQuery(
  "SELECT pg_catalog.current_setting('default_transaction_read_only'), " +
    "pg_catalog.current_setting('transaction_read_only'), " +
    "pg_catalog.current_setting('standard_conforming_strings'), " +
    "pg_catalog.current_setting('session_authorization'), " +
    'current_user, pg_catalog.pg_backend_pid()::pg_catalog.text',
);
const RESET = Buffer.concat([DISCARD, CHECK]);

/** No message of the reset's answer comes near this. */
const MAX_RESET_MESSAGE = 1024 * 1024;

/** Reasons logged at info; the rest (routine) at debug. */
const NOTABLE = new Set<string>([
  PoolCloseReason.SessionError,
  PoolCloseReason.PinViolation,
  PoolCloseReason.ResultLimit,
  PoolCloseReason.CancelUnsettled,
  PoolCloseReason.CredentialsChanged,
  PoolCloseReason.ResetFailed,
  PoolCloseReason.UnexpectedMessage,
  PoolCloseReason.HandoutCheck,
]);

/** The pool's bookkeeping for one upstream session it owns. */
interface Entry {
  conn: PooledUpstream;
  state: 'resetting' | 'idle';
  /** The drain generation it was returned in: a full drain makes older ones stale. */
  generation: number;
  /** Set while resetting when a drain reached it: closed once the reset ends. */
  doomed?: PoolCloseReason | undefined;
  timer?: NodeJS.Timeout | undefined;
  /** What the socket's events go to in the current state. */
  onData: (chunk: Buffer) => void;
  onClose: () => void;
  /** The listeners on the socket, from release until acquire or destroy. */
  listeners?: { data: (b: Buffer) => void; close: () => void; error: (e: Error) => void } | undefined;
}

export interface UpstreamPoolOptions {
  /** Read at each use, so a reload applies. */
  config: () => PoolConfig;
  /** The current users: a session whose user changed is not kept. */
  users: () => UserDirectory | undefined;
  logger: Logger;
  metrics: Metrics;
}

const ignore = (): void => undefined;

export class UpstreamPool {
  /** Idle entries per key, most recently returned last (handed out first: its caches are warm). */
  private readonly idle = new Map<string, Entry[]>();
  private idleTotal = 0;
  private readonly resetting = new Set<Entry>();
  private closed = false;
  private generation = 0;
  private readonly log: Logger;

  constructor(private readonly opts: UpstreamPoolOptions) {
    this.log = opts.logger.child({ component: 'pool' });
  }

  get enabled(): boolean {
    return !this.closed && this.opts.config().enabled;
  }

  /** Idle sessions now (for tests and the gauge). */
  get idleCount(): number {
    return this.idleTotal;
  }

  /**
   * An idle session for this identity, taken out of the pool (the caller owns
   * its socket from now on), or undefined: the caller logs in upstream. Counts
   * a hit or a miss.
   */
  acquire(id: PoolIdentity): PooledUpstream | undefined {
    const list = this.idle.get(id.key);
    while (list && list.length > 0) {
      const entry = list.pop()!;
      this.unlistIdle(entry, list);
      const conn = entry.conn;
      const stale =
        conn.user !== id.user || conn.database !== id.database || conn.credential !== id.credential
          ? PoolCloseReason.CredentialsChanged
          : this.staleReason(conn);
      if (stale) {
        this.destroy(entry, stale);
        continue;
      }
      this.detach(entry);
      this.opts.metrics.poolRequest(true);
      return conn;
    }
    this.opts.metrics.poolRequest(false);
    return undefined;
  }

  /**
   * A session handed back by a client that ended cleanly. It is reset and kept,
   * or closed. `settled`: cancels forwarded for it, resolving true once each has
   * reached the server (the reset waits; false closes the session instead).
   */
  release(id: PoolIdentity, handle: UpstreamHandle, settled?: Promise<boolean>): void {
    const entry: Entry = {
      conn: { ...id, ...handle },
      state: 'resetting',
      generation: this.generation,
      onData: ignore,
      onClose: ignore,
    };
    const refused = this.admissionRefusal(entry.conn);
    if (refused) return this.destroy(entry, refused);
    this.resetting.add(entry);
    this.attach(entry);
    this.startReset(entry, settled);
  }

  /** A session that ended in a way that rules its upstream session out: counted and logged; the session closes it. */
  notReused(reason: PoolCloseReason, fields: Record<string, unknown>): void {
    this.opts.metrics.poolClosed(reason);
    this.logClosed(reason, fields);
  }

  /** A session handed out that the session refused after all: closed. */
  discard(conn: PooledUpstream, reason: PoolCloseReason, detail?: string): void {
    this.destroy(
      { conn, state: 'idle', generation: this.generation, onData: ignore, onClose: ignore },
      reason,
      detail,
    );
  }

  /**
   * Closes idle sessions (and marks resetting ones) that `which` selects, all by
   * default. Returns how many.
   */
  drain(reason: PoolCloseReason, which: (conn: PooledUpstream) => boolean = () => true): number {
    let n = 0;
    for (const list of [...this.idle.values()]) {
      for (const entry of [...list]) {
        if (!which(entry.conn)) continue;
        this.unlistIdle(entry, list);
        this.destroy(entry, reason);
        n++;
      }
    }
    for (const entry of this.resetting) {
      if (which(entry.conn) && !entry.doomed) {
        entry.doomed = reason;
        n++;
      }
    }
    if (n > 0)
      this.log.info({ event: 'pool_drained', reason, sessions: n }, 'pooled upstream sessions closed');
    return n;
  }

  /**
   * After a reload: with the pool disabled, every session goes; otherwise those
   * whose user is gone or whose upstream credentials or databases changed.
   */
  reconcile(): void {
    if (!this.opts.config().enabled) {
      this.generation++;
      this.drain(PoolCloseReason.Drained);
      return;
    }
    this.drain(PoolCloseReason.CredentialsChanged, (conn) => !this.isCurrent(conn));
  }

  /** Everything, for good (shutdown). */
  close(): void {
    this.closed = true;
    this.generation++;
    this.drain(PoolCloseReason.Shutdown);
  }

  /* ----------------------------------------------------------------- checks */

  private isCurrent(conn: PooledUpstream): boolean {
    const user = this.opts.users()?.get(conn.user);
    return (
      user !== undefined &&
      credentialOf(user) === conn.credential &&
      (user.databases === undefined || user.databases.has(conn.database))
    );
  }

  /** Why a session may not be handed out or kept now. */
  private staleReason(conn: PooledUpstream): PoolCloseReason | undefined {
    if (!this.enabled) return this.closed ? PoolCloseReason.Shutdown : PoolCloseReason.Drained;
    if (!this.isCurrent(conn)) return PoolCloseReason.CredentialsChanged;
    const lifetime = this.opts.config().maxLifetimeMs;
    if (lifetime > 0 && Date.now() - conn.openedAt >= lifetime) return PoolCloseReason.MaxLifetime;
    if (conn.socket.destroyed || !conn.socket.writable) return PoolCloseReason.UpstreamClosed;
    return undefined;
  }

  /** Why a returned session is not even reset. */
  private admissionRefusal(conn: PooledUpstream): PoolCloseReason | undefined {
    const stale = this.staleReason(conn);
    if (stale) return stale;
    const cfg = this.opts.config();
    let forKey = this.idle.get(conn.key)?.length ?? 0;
    for (const e of this.resetting) if (e.conn.key === conn.key) forKey++;
    if (forKey >= cfg.maxIdle || this.idleTotal + this.resetting.size >= cfg.maxIdleTotal)
      return PoolCloseReason.PoolFull;
    return undefined;
  }

  /* ------------------------------------------------------------------ reset */

  private startReset(entry: Entry, settled: Promise<boolean> | undefined): void {
    const conn = entry.conn;
    const socket = conn.socket;
    const framer = new MessageFramer(MAX_RESET_MESSAGE);
    const reset = new ResetReader(conn);
    let sent = false;
    let finished = false;
    const end = (): boolean => {
      if (finished) return false;
      finished = true;
      clearTimeout(entry.timer);
      entry.timer = undefined;
      this.resetting.delete(entry);
      return true;
    };
    const fail = (why: string): void => {
      if (!end()) return;
      this.opts.metrics.poolReset(false);
      this.destroy(entry, PoolCloseReason.ResetFailed, why);
    };
    entry.timer = setTimeout(() => fail('not answered in time'), this.opts.config().resetTimeoutMs);
    entry.timer.unref();
    entry.onClose = () => fail('the server closed the connection');
    entry.onData = (chunk) => {
      if (finished) return;
      framer.push(chunk);
      try {
        for (;;) {
          const f = framer.next();
          if (f.kind === 'incomplete') return;
          if (f.kind === 'error') return fail(`invalid message length ${f.length}`);
          // Until the reset is sent, only what may arrive unasked is acceptable.
          const outcome = sent ? reset.onMessage(f.code, f.msg) : reset.onUnasked(f.code, f.msg);
          if (outcome === 'done') {
            end();
            this.opts.metrics.poolReset(true);
            return this.keep(entry);
          }
          if (outcome !== undefined) return fail(outcome);
        }
      } catch (err) {
        fail(`malformed message: ${(err as Error).message}`);
      }
    };
    socket.resume();
    const send = (): void => {
      if (finished) return;
      if (entry.doomed) {
        if (end()) this.destroy(entry, entry.doomed);
        return;
      }
      sent = true;
      socket.write(RESET);
    };
    if (!settled) return send();
    settled.then(
      (ok) => {
        if (ok) return send();
        if (end()) this.destroy(entry, PoolCloseReason.CancelUnsettled);
      },
      () => fail('cancel tracking failed'),
    );
  }

  /** A reset session: idle, or closed if something changed while it was being reset. */
  private keep(entry: Entry): void {
    const stale =
      entry.doomed ??
      (entry.generation !== this.generation ? PoolCloseReason.Drained : this.staleReason(entry.conn));
    if (stale) return this.destroy(entry, stale);
    const conn = entry.conn;
    entry.state = 'idle';
    let list = this.idle.get(conn.key);
    if (!list) this.idle.set(conn.key, (list = []));
    list.push(entry);
    this.idleTotal++;
    this.opts.metrics.poolIdle(this.idleTotal);
    // The server has nothing to say to an idle session that is not about to end it.
    entry.onData = () => this.expire(entry, PoolCloseReason.UnexpectedMessage);
    entry.onClose = () => this.expire(entry, PoolCloseReason.UpstreamClosed);
    const cfg = this.opts.config();
    const untilIdle = cfg.idleTimeoutMs > 0 ? cfg.idleTimeoutMs : Infinity;
    const untilOld = cfg.maxLifetimeMs > 0 ? conn.openedAt + cfg.maxLifetimeMs - Date.now() : Infinity;
    const wait = Math.min(untilIdle, untilOld);
    if (Number.isFinite(wait)) {
      const reason = untilOld <= untilIdle ? PoolCloseReason.MaxLifetime : PoolCloseReason.IdleTimeout;
      entry.timer = setTimeout(() => this.expire(entry, reason), Math.max(0, wait));
      entry.timer.unref();
    }
    this.log.debug(
      {
        event: 'pool_returned',
        user: conn.user,
        database: conn.database,
        uses: conn.uses,
        idle: this.idleTotal,
      },
      'upstream session reset and pooled',
    );
  }

  /** An idle session leaves the pool and is closed. */
  private expire(entry: Entry, reason: PoolCloseReason): void {
    const list = this.idle.get(entry.conn.key);
    if (entry.state !== 'idle' || !list || !list.includes(entry)) return;
    this.unlistIdle(entry, list);
    this.destroy(entry, reason);
  }

  /* ------------------------------------------------------------ plumbing */

  private unlistIdle(entry: Entry, list: Entry[]): void {
    const at = list.indexOf(entry);
    if (at >= 0) list.splice(at, 1);
    if (list.length === 0) this.idle.delete(entry.conn.key);
    clearTimeout(entry.timer);
    entry.timer = undefined;
    this.idleTotal--;
    this.opts.metrics.poolIdle(this.idleTotal);
  }

  /** One set of listeners from release to acquire; what they do follows entry.onData / onClose. */
  private attach(entry: Entry): void {
    const s = entry.conn.socket;
    const listeners = {
      data: (chunk: Buffer) => entry.onData(chunk),
      close: () => entry.onClose(),
      error: (err: Error) => this.log.debug({ err: err.message }, 'pooled upstream socket error'),
    };
    s.on('data', listeners.data);
    s.on('close', listeners.close);
    s.on('error', listeners.error);
    entry.listeners = listeners;
  }

  private detach(entry: Entry): void {
    const l = entry.listeners;
    if (!l) return;
    const s = entry.conn.socket;
    s.off('data', l.data);
    s.off('close', l.close);
    s.off('error', l.error);
    entry.listeners = undefined;
  }

  private destroy(entry: Entry, reason: PoolCloseReason, detail?: string): void {
    this.detach(entry);
    clearTimeout(entry.timer);
    entry.timer = undefined;
    entry.onData = entry.onClose = ignore;
    this.resetting.delete(entry);
    const s = entry.conn.socket;
    s.on('error', ignore);
    if (!s.destroyed) {
      s.end(encodeTerminate());
      s.destroySoon();
      setTimeout(() => s.destroy(), 1000).unref();
    }
    this.opts.metrics.poolClosed(reason);
    this.logClosed(reason, {
      user: entry.conn.user,
      database: entry.conn.database,
      uses: entry.conn.uses,
      detail,
    });
  }

  private logClosed(reason: PoolCloseReason, fields: Record<string, unknown>): void {
    const line = { event: 'pool_not_reused', reason, ...fields };
    if (NOTABLE.has(reason)) this.log.info(line, 'upstream session closed, not reused');
    else this.log.debug(line, 'upstream session closed, not reused');
  }
}

/**
 * Reads the answer to the reset. Expected, in order: CommandComplete
 * "DISCARD ALL", ReadyForQuery 'I'; RowDescription, one DataRow, CommandComplete
 * "SELECT 1", ReadyForQuery 'I'. ParameterStatus (kept, and checked) and
 * NoticeResponse / NotificationResponse (dropped: the last client's) may come
 * anywhere. Anything else, or a value that is not what it must be, fails it.
 */
class ResetReader {
  private stage: 'discard' | 'discard_ready' | 'check' | 'check_row' | 'check_done' = 'discard';
  private row: Array<string | null> | undefined;

  constructor(private readonly conn: PooledUpstream) {}

  /** Before the reset is sent: only what a server may send unasked. */
  onUnasked(code: number, msg: Buffer): 'done' | string | undefined {
    if (code === BackendCode.ParameterStatus) return this.onParameter(msg);
    if (code === BackendCode.NoticeResponse || code === BackendCode.NotificationResponse) return undefined;
    return `unexpected message "${String.fromCharCode(code)}" before the reset`;
  }

  /** Returns 'done', a reason the reset failed, or undefined to go on. */
  onMessage(code: number, msg: Buffer): 'done' | string | undefined {
    switch (code) {
      case BackendCode.ParameterStatus:
        return this.onParameter(msg);
      case BackendCode.NoticeResponse:
      case BackendCode.NotificationResponse:
        return undefined;
      case BackendCode.ErrorResponse: {
        const f = decodeErrorFields(msg);
        return `error ${f.get('C') ?? '?'}: ${f.get('M') ?? ''}`;
      }
      case BackendCode.CommandComplete: {
        const tag = msg.toString('latin1', 5, msg.length - 1);
        if (this.stage === 'discard' && tag === 'DISCARD ALL') this.stage = 'discard_ready';
        else if (this.stage === 'check_row' && tag === 'SELECT 1') this.stage = 'check_done';
        else return `unexpected command tag "${tag}"`;
        return undefined;
      }
      case BackendCode.ReadyForQuery: {
        const status = decodeReadyForQuery(msg);
        if (status !== TxStatus.Idle) return `ReadyForQuery status ${String.fromCharCode(status)}`;
        if (this.stage === 'discard_ready') {
          this.stage = 'check';
          return undefined;
        }
        if (this.stage === 'check_done') return this.verify();
        return 'ReadyForQuery out of order';
      }
      case BackendCode.RowDescription:
        return this.stage === 'check' ? undefined : 'RowDescription out of order';
      case BackendCode.DataRow:
        if (this.stage !== 'check') return 'DataRow out of order';
        this.row = decodeDataRow(msg);
        this.stage = 'check_row';
        return undefined;
      default:
        return `unexpected message "${String.fromCharCode(code)}"`;
    }
  }

  private onParameter(msg: Buffer): string | undefined {
    const { name, value } = decodeParameterStatus(msg);
    const before = this.conn.parameters.get(name);
    if (name === 'default_transaction_read_only' && value !== 'on')
      return 'default_transaction_read_only is off';
    if (name === 'standard_conforming_strings' && value !== 'on') return 'standard_conforming_strings is off';
    if (name === 'session_authorization' && before !== undefined && before !== value)
      return 'session_authorization changed';
    this.conn.parameters.set(name, value);
    return undefined;
  }

  /** The check's row: read-only on, the login role, the same backend. */
  private verify(): 'done' | string {
    const row = this.row;
    if (!row || row.length !== 6) return 'the check returned no row';
    const [dtro, tro, scs, auth, user, pid] = row;
    const role = this.conn.parameters.get('session_authorization');
    if (dtro !== 'on') return `default_transaction_read_only is ${dtro}`;
    if (tro !== 'on') return `transaction_read_only is ${tro}`;
    if (scs !== 'on') return `standard_conforming_strings is ${scs}`;
    if (role === undefined || auth !== role || user !== role) return 'not the role the session logged in as';
    if (pid !== String(this.conn.backendKey.processId)) return 'not the backend the session logged in to';
    if (this.conn.parameters.get('default_transaction_read_only') !== 'on')
      return 'default_transaction_read_only was never reported on';
    return 'done';
  }
}

/** A DataRow's text columns (null for SQL NULL). */
export function decodeDataRow(msg: Buffer): Array<string | null> {
  const r = new MessageReader(msg, 5, 1 + msg.readInt32BE(1));
  const n = r.int16();
  const out: Array<string | null> = [];
  for (let i = 0; i < n; i++) {
    const len = r.int32();
    out.push(len < 0 ? null : r.bytes(len).toString('utf8'));
  }
  r.expectEnd();
  return out;
}
