/**
 * The listener: one Session per client socket, a global connection limit, and
 * graceful shutdown (stop accepting, let sessions finish within a grace period,
 * then end them).
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { ProxyConfig, UpstreamTarget } from './config/config.js';
import type { Logger } from './observability/logger.js';
import type { Policy } from './policy/types.js';
import { encodeErrorResponse } from './protocol/backend-messages.js';
import { SqlState } from './protocol/sqlstate.js';
import { CancelRegistry } from './session/cancel-registry.js';
import { Session, type SessionContext } from './session/session.js';
import { ClientTls } from './tls/client-tls.js';
import { UserDirectory } from './auth/users.js';
import { Metrics } from './observability/metrics.js';
import { Audit, type AuditSink } from './observability/audit.js';
import { pino } from 'pino';
import { logDestination } from './observability/logger.js';
import { probeTcp } from './observability/http.js';
import { parserReady } from './policy/index.js';
import { reloadUpstreamTls } from './upstream/connect.js';
import { PoolCloseReason, UpstreamPool } from './upstream/pool.js';

export interface ProxyServerOptions {
  config: ProxyConfig;
  upstream: UpstreamTarget;
  policy: Policy;
  logger: Logger;
  /** Counted whether or not they are served over HTTP. */
  metrics?: Metrics;
  /** Cancel keys; a worker process passes one that routes other workers' keys (default: this process owns all). */
  cancels?: CancelRegistry;
}

export class ProxyServer {
  private readonly server: Server;
  private readonly sessions = new Set<Session>();
  private readonly ctx: SessionContext;
  private closing = false;
  /** Sessions per user past authentication, for limits.max_connections_per_user. */
  private readonly perUser = new Map<string, number>();

  /** Reads certificates and users files: throws ConfigError when they are unusable. */
  constructor(private readonly opts: ProxyServerOptions) {
    this.ctx = {
      config: opts.config,
      upstream: opts.upstream,
      policy: opts.policy,
      logger: opts.logger,
      cancels: opts.cancels ?? new CancelRegistry(),
      admitUser: (user) => {
        const limit = this.ctx.config.maxConnectionsPerUser;
        const n = this.perUser.get(user) ?? 0;
        if (limit !== undefined && n >= limit) return false;
        this.perUser.set(user, n + 1);
        return true;
      },
      releaseUser: (user) => {
        const n = (this.perUser.get(user) ?? 1) - 1;
        if (n > 0) this.perUser.set(user, n);
        else this.perUser.delete(user);
      },
      audit: makeAudit(opts.config, opts.logger),
      metrics:
        opts.metrics ??
        new Metrics({ defaultMetrics: false, decisionCacheStats: () => opts.policy.cacheStats() }),
      clientTls: new ClientTls(opts.config.clientTls),
      users: opts.config.auth.mode === 'proxy' ? new UserDirectory(opts.config.auth) : undefined,
      upstreamRequireAuth:
        opts.config.auth.upstreamRequireAuth && new Set(opts.config.auth.upstreamRequireAuth),
      onClose: (s) => this.sessions.delete(s),
    };
    // Only proxy-managed users can share upstream sessions: the proxy holds their credentials.
    if (opts.config.auth.mode === 'proxy') {
      this.ctx.pool = new UpstreamPool({
        config: () => this.ctx.config.pool,
        users: () => this.ctx.users,
        logger: opts.logger,
        metrics: this.ctx.metrics,
      });
    }
    this.server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    this.server.on('error', (err) => opts.logger.error({ err }, 'listener error'));
  }

  private accept(socket: Socket): void {
    if (this.closing) {
      this.ctx.metrics.connectionResult('refused_shutdown');
      refuse(socket, SqlState.CannotConnectNow, 'the proxy is shutting down');
      return;
    }
    const limit = this.ctx.config.maxClientConnections;
    if (this.sessions.size >= limit) {
      this.opts.logger.warn({ event: 'connection_limit', limit }, 'too many connections');
      this.ctx.metrics.connectionResult('refused_limit');
      refuse(socket, SqlState.TooManyConnections, 'sorry, too many clients already');
      return;
    }
    this.sessions.add(new Session(socket, this.ctx));
  }

  /** Resolves with the bound address once listening. */
  listen(): Promise<{ host: string; port: number }> {
    const { host, port } = this.opts.config.listen;
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const addr = this.server.address();
        resolve(typeof addr === 'object' && addr ? { host: addr.address, port: addr.port } : { host, port });
      });
    });
  }

  /**
   * SIGHUP: certificates, the users file and upstream passwords are read again.
   * Open sessions keep what they started with; each part that fails to load is
   * logged and keeps its old value. Returns whether everything reloaded.
   */
  reload(): { ok: boolean; errors: string[] } {
    let ok = true;
    const errors: string[] = [];
    const parts: Array<[string, () => void]> = [
      ['client_tls', () => this.ctx.clientTls.reload()],
      ['users', () => this.ctx.users?.reload()],
      ['upstream_tls', () => reloadUpstreamTls()],
    ];
    for (const [part, reload] of parts) {
      try {
        reload();
      } catch (err) {
        ok = false;
        errors.push(`${part}: ${(err as Error).message}`);
        this.opts.logger.error(
          { event: 'reload_failed', part, err: (err as Error).message },
          `reload of ${part} failed; keeping the old one`,
        );
      }
    }
    // Pooled upstream sessions of users whose credentials or databases changed are closed.
    this.ctx.pool?.reconcile();
    this.opts.logger.info(
      { event: 'reloaded', ok, certificate: this.ctx.clientTls.describe(), users: this.ctx.users?.size },
      ok ? 'reloaded' : 'reloaded with errors',
    );
    return { ok, errors };
  }

  /**
   * SIGHUP with a config file: a new configuration for new connections and new
   * statements. Policy, limits, log level, client TLS and users change; what a
   * running listener cannot change (where it listens, the upstream, the HTTP
   * listener, the auth mode, the embedded server) is kept and reported. Every
   * part is built before anything is swapped, so an error keeps all of the old.
   */
  applyConfig(next: ProxyConfig, policy: Policy): { ok: boolean; errors: string[]; restartNeeded: string[] } {
    const old = this.ctx.config;
    const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);
    const fixed: Array<[string, unknown, unknown]> = [
      ['workers', old.workers, next.workers],
      ['listen', old.listen, next.listen],
      ['upstream', old.upstream, next.upstream],
      ['http', old.http, next.http],
      ['auth.mode', old.auth.mode, next.auth.mode],
      ['embedded', old.embedded, next.embedded],
      ['audit', old.audit, next.audit],
    ];
    const restartNeeded = fixed.filter(([, a, b]) => !same(a, b)).map(([name]) => name);
    let clientTls: ClientTls;
    let users: UserDirectory | undefined;
    try {
      clientTls = same(old.clientTls, next.clientTls) ? this.ctx.clientTls : new ClientTls(next.clientTls);
      users = old.auth.mode === 'proxy' ? new UserDirectory({ ...next.auth, mode: 'proxy' }) : undefined;
    } catch (err) {
      const message = (err as Error).message;
      this.opts.logger.error(
        { event: 'reload_failed', part: 'config', err: message },
        'new configuration refused',
      );
      return { ok: false, errors: [`config: ${message}`], restartNeeded };
    }
    const kept = {
      workers: old.workers,
      listen: old.listen,
      upstream: old.upstream,
      http: old.http,
      embedded: old.embedded,
      audit: old.audit,
    };
    this.ctx.config = { ...next, ...kept, auth: { ...next.auth, mode: old.auth.mode } };
    this.ctx.policy = policy;
    this.ctx.clientTls = clientTls;
    this.ctx.users = users;
    const requireAuthChanged = !same(old.auth.upstreamRequireAuth, next.auth.upstreamRequireAuth);
    this.ctx.upstreamRequireAuth = next.auth.upstreamRequireAuth && new Set(next.auth.upstreamRequireAuth);
    // Pooled upstream sessions logged in by a method no longer allowed, or for users that changed, go.
    if (requireAuthChanged) this.ctx.pool?.drain(PoolCloseReason.Drained);
    this.ctx.pool?.reconcile();
    this.ctx.metrics.setDecisionCacheStats(() => policy.cacheStats());
    this.opts.logger.level = next.logLevel;
    if (restartNeeded.length > 0) {
      this.opts.logger.warn(
        { event: 'reload_needs_restart', settings: restartNeeded },
        'some changed settings take effect only after a restart; their old values are kept',
      );
    }
    this.opts.logger.info({ event: 'config_applied', log_level: next.logLevel }, 'configuration applied');
    return { ok: true, errors: [], restartNeeded };
  }

  /** What client TLS is serving now (for logs and tests). */
  get tlsCertificate(): Record<string, string> | undefined {
    return this.ctx.clientTls.describe();
  }

  get metrics(): Metrics {
    return this.ctx.metrics;
  }

  /** For /readyz: the parser is loaded, the upstream accepts a TCP connection, and the proxy accepts clients. */
  async readiness(): Promise<{ ok: boolean; checks: Record<string, boolean | string> }> {
    const t = this.opts.upstream;
    const target = t.host.startsWith('/')
      ? { path: `${t.host}/.s.PGSQL.${t.port}` }
      : { host: t.host, port: t.port };
    const checks = {
      parser: parserReady(),
      upstream: await probeTcp(target, 2000),
      accepting: !this.closing,
    };
    return { ok: Object.values(checks).every((v) => v === true), checks };
  }

  /** Whether new connections are still accepted (false once shutdown began). */
  get accepting(): boolean {
    return !this.closing;
  }

  get activeSessions(): number {
    return this.sessions.size;
  }

  /** Upstream sessions idle in the pool (proxy-managed users), reset and ready for a client. */
  get pooledIdle(): number {
    return this.ctx.pool?.idleCount ?? 0;
  }

  /** Stops accepting; waits up to graceMs for sessions to end, then ends the rest. */
  async shutdown(graceMs = this.ctx.config.shutdownGraceMs): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.ctx.pool?.close();
    this.opts.logger.info(
      { event: 'shutdown', sessions: this.sessions.size, grace_ms: graceMs },
      'shutting down',
    );
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const deadline = Date.now() + graceMs;
    while (this.sessions.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, Math.min(100, Math.max(1, deadline - Date.now()))));
    }
    for (const s of [...this.sessions]) s.terminate('terminating connection due to administrator command');
    await closed;
  }
}

/**
 * Sends a FATAL error and closes. What the client sends is read and dropped (so
 * closing does not reset the connection before the error arrives), and the
 * socket is destroyed after a second even if the client never closes its side:
 * a refused socket must not keep server.close() (and so shutdown) waiting.
 */
function refuse(socket: Socket, code: string, message: string): void {
  socket.on('error', () => undefined);
  socket.resume();
  socket.end(encodeErrorResponse({ severity: 'FATAL', code, message }));
  setTimeout(() => socket.destroy(), 1000).unref();
}

/**
 * The audit log: with the other logs (at info whatever their level) or in a
 * file of its own; undefined when the operator turned it off.
 */
function makeAudit(config: ProxyConfig, logger: Logger): Audit | undefined {
  if (!config.audit.enabled) return undefined;
  const sink: AuditSink = config.audit.file
    ? logDestination({ dest: config.audit.file, mkdir: true })
    : (logger as unknown as Record<symbol, AuditSink>)[pino.symbols.streamSym]!;
  return new Audit(sink, logger.bindings(), config.audit.includeText);
}
