/**
 * Prometheus metrics (prom-client), all named `pgro_*`, on a registry of their
 * own (not prom-client's global one), so tests and embedders can hold several.
 *
 * The hot path (per statement, per socket chunk) only bumps plain numbers: the
 * counters and the gauge read them when scraped (prom-client's `collect()`
 * hook), so counting costs a few nanoseconds and allocates nothing. Histograms
 * are prom-client's own (≈ 0.1 µs per observation, once per query).
 *
 * Every label takes its values from a fixed set, whatever the caller passes:
 * statement kinds outside the set become their verb (CREATE / ALTER / DROP) or
 * OTHER, and unknown reasons, results and event kinds become `other`. No client
 * input can grow the number of series.
 *
 * With several worker processes, the primary sums the workers' registries
 * (prom-client's AggregatorRegistry.aggregate, see src/cluster/): counters,
 * gauges and histograms add up; each metric's `aggregator` says otherwise.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry, type Aggregator } from 'prom-client';
import { ReasonCode } from '../policy/types.js';
import { VERSION } from '../version.js';

export const METRICS_PREFIX = 'pgro_';

/** How a client connection turned out, counted once per connection (`pgro_client_connections_total{result}`). */
export const ConnectionResult = {
  /** The session became ready (login done, read-only pin confirmed). */
  Ok: 'ok',
  /** Refused by the server: `limits.max_client_connections` reached (53300). */
  RefusedLimit: 'refused_limit',
  /** Refused by the server: shutting down (57P03). */
  RefusedShutdown: 'refused_shutdown',
  /** The startup packet was refused (protected setting, replication, options, protocol version, plaintext under TLS `require`). */
  StartupRefused: 'startup_refused',
  /** The proxy's own login failed, the database was not granted, or SCRAM channel binding could not be relayed. */
  AuthFailed: 'auth_failed',
  /** The upstream connection, its login, its version or its read-only confirmation failed. */
  UpstreamFailed: 'upstream_failed',
  /** The client's TLS handshake failed. */
  TlsFailed: 'tls_failed',
  /** Bad framing, an unexpected message before the session was ready, or the startup timeout. */
  ProtocolError: 'protocol_error',
  /** A CancelRequest connection (it never becomes a session). */
  CancelRequest: 'cancel_request',
  /** The client went away (or sent Terminate) before the session was ready. */
  ClientClosed: 'client_closed',
  /** Anything else: an internal error, a shutdown during login. */
  Other: 'other',
} as const;
export type ConnectionResult = (typeof ConnectionResult)[keyof typeof ConnectionResult];

/** `pgro_security_events_total{kind}`: the `kind` of the log's `event: "security"` lines. */
export const SecurityEventKind = {
  StartupProtectedSetting: 'startup_protected_setting',
  StartupInvalidSetting: 'startup_invalid_setting',
  StartupOptionsSwitch: 'startup_options_switch',
  StartupReplication: 'startup_replication',
  StartupNoUser: 'startup_no_user',
  PlaintextRefused: 'plaintext_refused',
  AuthFailed: 'auth_failed',
  DatabaseNotGranted: 'database_not_granted',
  PinViolation: 'pin_violation',
  Other: 'other',
} as const;
export type SecurityEventKind = (typeof SecurityEventKind)[keyof typeof SecurityEventKind];

/** `pgro_errors_total{kind}`: why the proxy ended a connection with an error (the `kind` of `fatal()`). */
export const ErrorKind = {
  ProtocolViolation: 'protocol_violation',
  StartupTimeout: 'startup_timeout',
  StartupUnsupportedProtocol: 'startup_unsupported_protocol',
  /** Any other `startup_*` kind: the startup packet was refused. */
  StartupRefused: 'startup_refused',
  PlaintextRefused: 'plaintext_refused',
  AuthFailed: 'auth_failed',
  DatabaseNotGranted: 'database_not_granted',
  TlsHandshakeFailed: 'tls_handshake_failed',
  ChannelBindingRefused: 'channel_binding_refused',
  UpstreamConnectFailed: 'upstream_connect_failed',
  UpstreamLoginFailed: 'upstream_login_failed',
  UpstreamProtocol: 'upstream_protocol',
  UpstreamTooOld: 'upstream_too_old',
  PinViolation: 'pin_violation',
  InternalError: 'internal_error',
  /** Sessions ended by shutdown after the grace period. */
  AdminShutdown: 'admin_shutdown',
  /** A session idle past limits.idle_client_timeout_ms. */
  IdleTimeout: 'idle_timeout',
  /** A query cancelled for limits.max_result_rows / max_result_bytes (the session goes on). */
  ResultLimit: 'result_limit',
  Other: 'other',
} as const;
export type ErrorKind = (typeof ErrorKind)[keyof typeof ErrorKind];

/**
 * `pgro_pool_closed_total{reason}`: why an upstream session of a proxy-managed
 * user was closed instead of being kept for the next client (src/upstream/pool.ts).
 */
export const PoolCloseReason = {
  /** The session ended with an error: protocol violation, timeout, upstream gone, shutdown of the session. */
  SessionError: 'session_error',
  PinViolation: 'pin_violation',
  /** The client left inside a transaction block (ReadyForQuery 'T' or 'E'). */
  InTransaction: 'in_transaction',
  /** Something was still in flight: an unanswered Sync or query, an unsynced batch, COPY, a refusal's substitute error. */
  InFlight: 'in_flight',
  /** A query of the session hit limits.max_result_rows / max_result_bytes (and was cancelled). */
  ResultLimit: 'result_limit',
  /** A cancel forwarded for the session did not settle in time: it could land on the next client. */
  CancelUnsettled: 'cancel_unsettled',
  /** The user, its upstream credentials or its databases changed (reload). */
  CredentialsChanged: 'credentials_changed',
  MaxLifetime: 'max_lifetime',
  IdleTimeout: 'idle_timeout',
  /** pool.max_idle or pool.max_idle_total was reached. */
  PoolFull: 'pool_full',
  /** DISCARD ALL or its check failed, was answered unexpectedly or not in time. */
  ResetFailed: 'reset_failed',
  /** The server closed an idle session. */
  UpstreamClosed: 'upstream_closed',
  /** The server sent something to an idle session. */
  UnexpectedMessage: 'unexpected_message',
  /** A session handed out failed the session's own checks (read-only, version, encoding). */
  HandoutCheck: 'handout_check',
  /** Emptied by a reload (upstream.require_auth changed) or the pool was disabled. */
  Drained: 'drained',
  Shutdown: 'shutdown',
  Other: 'other',
} as const;
export type PoolCloseReason = (typeof PoolCloseReason)[keyof typeof PoolCloseReason];

/** Other labels' fallback value (a kind that is not in the set). */
const OTHER = 'other';

/**
 * Statement kinds (command tags, as the policy reports them) counted under
 * their own name. Any other CREATE / ALTER / DROP ... counts under its verb;
 * anything else under OTHER.
 */
export const STATEMENT_KINDS: ReadonlySet<string> = new Set([
  // Reads and session state.
  'SELECT',
  'EXPLAIN',
  'SHOW',
  'BEGIN',
  'START TRANSACTION',
  'COMMIT',
  'ROLLBACK',
  'SAVEPOINT',
  'RELEASE',
  'TRANSACTION',
  'SET',
  'RESET',
  'SET CONSTRAINTS',
  'DECLARE CURSOR',
  'FETCH',
  'MOVE',
  'CLOSE CURSOR',
  'CLOSE CURSOR ALL',
  'PREPARE',
  'EXECUTE',
  'DEALLOCATE',
  'DEALLOCATE ALL',
  'COPY',
  'LISTEN',
  'UNLISTEN',
  'DISCARD',
  'DISCARD ALL',
  'DISCARD PLANS',
  'DISCARD SEQUENCES',
  'DISCARD TEMP',
  'LOCK TABLE',
  // Row locks.
  'SELECT FOR UPDATE',
  'SELECT FOR NO KEY UPDATE',
  'SELECT FOR SHARE',
  'SELECT FOR KEY SHARE',
  // Writes, code, notifications.
  'INSERT',
  'UPDATE',
  'DELETE',
  'MERGE',
  'TRUNCATE TABLE',
  'CREATE TABLE AS',
  'DO',
  'CALL',
  'NOTIFY',
  'PREPARE TRANSACTION',
  'COMMIT PREPARED',
  'ROLLBACK PREPARED',
  // Maintenance and server utilities.
  'VACUUM',
  'ANALYZE',
  'CLUSTER',
  'REINDEX',
  'CHECKPOINT',
  'REFRESH MATERIALIZED VIEW',
  'LOAD',
  'ALTER SYSTEM',
  // The most common DDL and privileges.
  'CREATE TABLE',
  'CREATE INDEX',
  'CREATE VIEW',
  'CREATE MATERIALIZED VIEW',
  'CREATE FUNCTION',
  'CREATE PROCEDURE',
  'CREATE SCHEMA',
  'CREATE EXTENSION',
  'CREATE ROLE',
  'CREATE USER',
  'CREATE DATABASE',
  'CREATE SEQUENCE',
  'CREATE TYPE',
  'CREATE TRIGGER',
  'ALTER TABLE',
  'ALTER ROLE',
  'ALTER DATABASE',
  'DROP TABLE',
  'DROP INDEX',
  'DROP VIEW',
  'DROP FUNCTION',
  'DROP SCHEMA',
  'DROP DATABASE',
  'DROP ROLE',
  'GRANT',
  'REVOKE',
  'GRANT ROLE',
  'REVOKE ROLE',
  'COMMENT',
  'SECURITY LABEL',
  'IMPORT FOREIGN SCHEMA',
  // What the policy or the session reports when there is no statement to name.
  'UNKNOWN',
  'PARSE',
  'BIND',
  'FUNCTION CALL',
]);

/** Verbs that stand for the DDL kinds not listed one by one. */
const STATEMENT_VERBS: ReadonlySet<string> = new Set(['CREATE', 'ALTER', 'DROP']);

export const OTHER_KIND = 'OTHER';

/** The kind label a statement kind counts under (see STATEMENT_KINDS). */
export function statementKindLabel(kind: string): string {
  if (STATEMENT_KINDS.has(kind)) return kind;
  const space = kind.indexOf(' ');
  const verb = space < 0 ? kind : kind.slice(0, space);
  return STATEMENT_VERBS.has(verb) ? verb : OTHER_KIND;
}

const REASONS: ReadonlySet<string> = new Set<string>(Object.values(ReasonCode));

/** Cumulative decision-cache counters (since the policy was created). */
export interface DecisionCacheStats {
  hits: number;
  misses: number;
  /** Of the hits, those found by literal shape. */
  shapeHits?: number;
}

export interface MetricsOptions {
  /** Node's default process metrics (CPU, memory, event loop lag, GC, handles), prefixed. Default true. */
  defaultMetrics?: boolean;
  /** Read at each scrape; see setDecisionCacheStats. */
  decisionCacheStats?: () => DecisionCacheStats;
}

/** Buckets in seconds. */
const CLASSIFICATION_BUCKETS = [
  0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
  0.01,
];
const QUERY_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
];
const CONNECT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Counts for one statement kind label. */
interface KindCounts {
  allowed: number;
  /** Refusals by reason label. */
  refused: Map<string, number>;
}

/** Raw kinds remembered with their counts; past this, unlisted kinds are looked up each time. */
const MAX_REMEMBERED_KINDS = 512;

/** A counter per value of a fixed label set; unknown values count under `other`. */
class LabelCounts {
  readonly counts = new Map<string, number>();

  constructor(values: Iterable<string>) {
    for (const v of values) this.counts.set(v, 0);
  }

  add(value: string, n = 1): void {
    const c = this.counts.get(value);
    if (c === undefined) this.counts.set(OTHER, (this.counts.get(OTHER) ?? 0) + n);
    else this.counts.set(value, c + n);
  }
}

export class Metrics {
  readonly registry = new Registry();

  #active = 0;
  readonly #results = new LabelCounts(Object.values(ConnectionResult));
  readonly #security = new LabelCounts(Object.values(SecurityEventKind));
  readonly #errors = new LabelCounts(Object.values(ErrorKind));
  /** By kind label. */
  readonly #kinds = new Map<string, KindCounts>();
  /** Raw kind → its label's counts (the lookup on the hot path: no string work after the first time). */
  readonly #rawKinds = new Map<string, KindCounts>();
  #bytesIn = 0;
  #bytesOut = 0;
  #cacheStats: (() => DecisionCacheStats) | undefined;
  #poolIdle = 0;
  readonly #poolRequests = new LabelCounts(['hit', 'miss']);
  readonly #poolResets = new LabelCounts(['ok', 'failed']);
  readonly #poolClosed = new LabelCounts(Object.values(PoolCloseReason));

  readonly #classification: Histogram;
  readonly #query: Histogram;
  readonly #upstreamConnect: Histogram;

  constructor(options: MetricsOptions = {}) {
    const p = METRICS_PREFIX;
    this.#cacheStats = options.decisionCacheStats;

    new Gauge({
      name: `${p}build_info`,
      help: 'pg-readonly-proxy build information (always 1).',
      labelNames: ['version'],
      registers: [this.registry],
      aggregator: 'first',
    }).set({ version: VERSION }, 1);
    new Gauge({
      name: `${p}client_connections`,
      help: 'Client connections open now (sessions, from accept to close).',
      registers: [this.registry],
      collect: fillWith((g: Gauge) => g.set(this.#active)),
    });
    this.#counter(
      'client_connections_total',
      'Client connections, by how they turned out (once per connection: ok when the session became ready).',
      ['result'],
      (c) => fillLabels(c, 'result', this.#results),
    );
    this.#counter(
      'statements_total',
      'Statements classified, by decision (allowed, refused), statement kind and refusal reason. A refused query string counts its refusal only.',
      ['decision', 'kind', 'reason'],
      (c) => {
        for (const [kind, k] of this.#kinds) {
          if (k.allowed > 0) c.inc({ decision: 'allowed', kind }, k.allowed);
          for (const [reason, n] of k.refused) c.inc({ decision: 'refused', kind, reason }, n);
        }
      },
    );
    this.#classification = this.#histogram(
      'classification_duration_seconds',
      'Time to classify one query string (Query or Parse), decision-cache hits included.',
      CLASSIFICATION_BUCKETS,
    );
    this.#query = this.#histogram(
      'query_duration_seconds',
      "Time from a sync point (Query, Sync, FunctionCall) sent upstream to the server's ReadyForQuery for it.",
      QUERY_BUCKETS,
    );
    this.#upstreamConnect = this.#histogram(
      'upstream_connect_duration_seconds',
      'Time to open a connection to the upstream server (TCP, and TLS if used); successful attempts only.',
      CONNECT_BUCKETS,
    );
    this.#counter(
      'client_received_bytes_total',
      'Protocol bytes received from clients (after TLS decryption).',
      [],
      (c) => c.inc(this.#bytesIn),
    );
    this.#counter(
      'client_sent_bytes_total',
      'Protocol bytes sent to clients (before TLS encryption).',
      [],
      (c) => c.inc(this.#bytesOut),
    );
    this.#counter(
      'decision_cache_hits_total',
      "Query strings answered from the policy's decision cache.",
      [],
      (c) => c.inc(this.#readCacheStats()?.hits ?? 0),
    );
    this.#counter(
      'decision_cache_misses_total',
      'Query strings the policy had to parse (not in its decision cache).',
      [],
      (c) => c.inc(this.#readCacheStats()?.misses ?? 0),
    );
    this.#counter(
      'decision_cache_shape_hits_total',
      'Decision-cache hits by literal shape: a query string differing only in literals from one parsed before (part of the hits).',
      [],
      (c) => c.inc(this.#readCacheStats()?.shapeHits ?? 0),
    );
    this.#counter(
      'security_events_total',
      'Security events (startup-packet attacks, failed proxy logins, read-only pin violations), by kind.',
      ['kind'],
      (c) => fillLabels(c, 'kind', this.#security),
    );
    this.#counter('errors_total', 'Connections the proxy ended with a FATAL error, by kind.', ['kind'], (c) =>
      fillLabels(c, 'kind', this.#errors),
    );

    new Gauge({
      name: `${p}pool_idle_connections`,
      help: 'Upstream sessions of proxy-managed users idle in the pool now, reset and ready for a client.',
      registers: [this.registry],
      collect: fillWith((g: Gauge) => g.set(this.#poolIdle)),
    });
    this.#counter(
      'pool_requests_total',
      'Proxy-managed logins by where their upstream session came from: hit (an idle pooled one) or miss (a fresh login upstream).',
      ['result'],
      (c) => fillLabels(c, 'result', this.#poolRequests),
    );
    this.#counter(
      'pool_resets_total',
      'Resets (DISCARD ALL and its check) of upstream sessions returned to the pool, by result.',
      ['result'],
      (c) => fillLabels(c, 'result', this.#poolResets),
    );
    this.#counter(
      'pool_closed_total',
      'Upstream sessions of proxy-managed users closed instead of kept in the pool, by reason.',
      ['reason'],
      (c) => fillLabels(c, 'reason', this.#poolClosed),
    );

    if (options.defaultMetrics !== false) {
      collectDefaultMetrics({ register: this.registry, prefix: p });
      // prom-client leaves the start time out of a cluster's sum: the earliest process's start instead.
      const start = this.registry.getSingleMetric(`${p}process_start_time_seconds`);
      if (start) (start as unknown as { aggregator: Aggregator }).aggregator = 'min';
    }
  }

  /* ------------------------------------------------------------- hot path */
  // None of these throws: a NaN duration is dropped, an unknown label value counts as `other`.

  /** A client connection became a session (call once, when the server accepts it). */
  connectionOpened(): void {
    this.#active++;
  }

  /** A session ended (call exactly once per connectionOpened). */
  connectionClosed(): void {
    if (this.#active > 0) this.#active--;
  }

  /** How a connection turned out: once per connection, `ok` when it becomes ready, else why it ended before. */
  connectionResult(result: ConnectionResult): void {
    this.#results.add(result);
  }

  /**
   * One classified statement. `kind` is the command tag (`SELECT`, `CREATE
   * TABLE`, ...); `reason` the refusal's reason code, ignored when allowed.
   */
  statement(allowed: boolean, kind: string, reason?: string): void {
    let c = this.#rawKinds.get(kind);
    if (c === undefined) c = this.#kindCounts(kind);
    if (allowed) {
      c.allowed++;
      return;
    }
    const r = reason !== undefined && REASONS.has(reason) ? reason : OTHER;
    c.refused.set(r, (c.refused.get(r) ?? 0) + 1);
  }

  /** Time to classify one query string, in seconds. */
  observeClassification(seconds: number): void {
    if (Number.isFinite(seconds)) this.#classification.observe(seconds);
  }

  /** Time from a sync point sent upstream to its ReadyForQuery, in seconds. */
  observeQuery(seconds: number): void {
    if (Number.isFinite(seconds)) this.#query.observe(seconds);
  }

  /** Time to connect to the upstream server, in seconds. */
  observeUpstreamConnect(seconds: number): void {
    if (Number.isFinite(seconds)) this.#upstreamConnect.observe(seconds);
  }

  /** Bytes read from a client. */
  bytesIn(n: number): void {
    this.#bytesIn += n;
  }

  /** Bytes written to a client. */
  bytesOut(n: number): void {
    this.#bytesOut += n;
  }

  securityEvent(kind: SecurityEventKind | string): void {
    this.#security.add(kind);
  }

  /** `kind`: the session's fatal() kind; `startup_*` kinds not listed in ErrorKind count as startup_refused. */
  error(kind: ErrorKind | string): void {
    if (!this.#errors.counts.has(kind) && kind.startsWith('startup_')) kind = ErrorKind.StartupRefused;
    this.#errors.add(kind);
  }

  /** Idle sessions in the upstream pool now. */
  poolIdle(n: number): void {
    this.#poolIdle = n;
  }

  /** A proxy-managed login took an idle pooled session (hit) or logged in upstream (miss). */
  poolRequest(hit: boolean): void {
    this.#poolRequests.add(hit ? 'hit' : 'miss');
  }

  poolReset(ok: boolean): void {
    this.#poolResets.add(ok ? 'ok' : 'failed');
  }

  /** An upstream session closed instead of being pooled (or while pooled). */
  poolClosed(reason: PoolCloseReason | string): void {
    this.#poolClosed.add(reason);
  }

  /* ------------------------------------------------------------ the rest */

  /**
   * Where the decision-cache counters come from: a function returning the
   * policy's cumulative hits and misses, read at each scrape (so it may follow
   * a policy swapped on reload; a drop reads as a counter reset). Without one
   * both counters stay 0.
   */
  setDecisionCacheStats(stats: (() => DecisionCacheStats) | undefined): void {
    this.#cacheStats = stats;
  }

  /** The Prometheus text exposition of every metric. */
  metricsText(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** A counter whose value is written from plain numbers (by `fill`, after a reset) when scraped. */
  #counter(name: string, help: string, labelNames: string[], fill: (c: Counter<string>) => void): void {
    new Counter({
      name: METRICS_PREFIX + name,
      help,
      labelNames,
      registers: [this.registry],
      collect: fillWith((c: Counter<string>) => {
        c.reset();
        fill(c);
      }),
    });
  }

  #histogram(name: string, help: string, buckets: number[]): Histogram {
    return new Histogram({ name: METRICS_PREFIX + name, help, buckets, registers: [this.registry] });
  }

  #kindCounts(kind: string): KindCounts {
    const label = statementKindLabel(kind);
    let c = this.#kinds.get(label);
    if (c === undefined) {
      c = { allowed: 0, refused: new Map() };
      this.#kinds.set(label, c);
    }
    if (this.#rawKinds.size < MAX_REMEMBERED_KINDS) this.#rawKinds.set(kind, c);
    return c;
  }

  #readCacheStats(): DecisionCacheStats | undefined {
    try {
      return this.#cacheStats?.();
    } catch {
      return undefined;
    }
  }
}

/** prom-client calls collect() with the metric as `this`. */
function fillWith<M>(fill: (metric: M) => void): (this: M) => void {
  return function (this: M) {
    fill(this);
  };
}

function fillLabels(counter: Counter<string>, label: string, counts: LabelCounts): void {
  for (const [value, n] of counts.counts) counter.inc({ [label]: value }, n);
}

/**
 * The connection result for the reason a session ended before it was ready:
 * the `kind` given to the session's `fatal()`, or the reason given to
 * `close()`. Unknown reasons map to `other`.
 */
export function connectionResultFor(reason: string): ConnectionResult {
  if (reason.startsWith('startup_') && reason !== 'startup_timeout') return ConnectionResult.StartupRefused;
  switch (reason) {
    case 'plaintext_refused':
      return ConnectionResult.StartupRefused;
    case 'auth_failed':
    case 'database_not_granted':
    case 'channel_binding_refused':
      return ConnectionResult.AuthFailed;
    case 'upstream_connect_failed':
    case 'upstream_protocol':
    case 'upstream login failed':
    case 'upstream closed':
    case 'upstream protocol violation':
    case 'server too old':
    case 'pin violation':
      return ConnectionResult.UpstreamFailed;
    case 'TLS handshake failed':
      return ConnectionResult.TlsFailed;
    case 'protocol_violation':
    case 'startup_timeout':
      return ConnectionResult.ProtocolError;
    case 'cancel request':
      return ConnectionResult.CancelRequest;
    case 'client disconnected':
    case 'client terminated':
      return ConnectionResult.ClientClosed;
    case 'admin_shutdown':
      return ConnectionResult.RefusedShutdown;
    default:
      return ConnectionResult.Other;
  }
}
