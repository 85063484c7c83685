/**
 * A worker process of a cluster (`workers` > 1): the same proxy as a single
 * process, sharing the listener node:cluster holds in the primary. What only
 * one process can do is the primary's: the embedded PostgreSQL, the HTTP
 * endpoint, reloads (it validates the file once and hands it over), shutdown.
 *
 * The worker issues cancel keys whose process id names it (see
 * src/session/cancel-registry.ts); a CancelRequest for a sibling's key goes to
 * the primary, which passes it to the owner, and keys the primary passes here
 * are checked as the worker's own clients' are.
 */
import { createPolicy, loadParser } from '../policy/index.js';
import { ConfigError, type ProxyConfig, type RawConfig } from '../config/config.js';
import { createLogger, logDestination, type Logger } from '../observability/logger.js';
import { Metrics } from '../observability/metrics.js';
import type { ReloadResult } from '../observability/http.js';
import { CancelRegistry, workerOfProcessId } from '../session/cancel-registry.js';
import { ProxyServer } from '../server.js';
import { describeTarget } from '../upstream/connect.js';
import { VERSION } from '../version.js';
import {
  isMessage,
  SECRET_HEX,
  WORKER_COUNT_ENV,
  WORKER_INDEX_ENV,
  type ToPrimary,
  type ToWorker,
} from './messages.js';

export interface WorkerOptions {
  /** A raw configuration resolved as the command line does (its flags and environment applied). */
  resolve(raw: RawConfig): ProxyConfig;
}

type Start = Extract<ToWorker, { type: 'pgro:start' }>;

/** This process's place in the cluster, from the environment the primary gave it. */
export function workerPlace(env: NodeJS.ProcessEnv = process.env): { index: number; count: number } {
  const index = Number(env[WORKER_INDEX_ENV]);
  const count = Number(env[WORKER_COUNT_ENV]);
  if (!Number.isInteger(count) || count < 2 || !Number.isInteger(index) || index < 0 || index >= count)
    throw new ConfigError(`${WORKER_INDEX_ENV} / ${WORKER_COUNT_ENV}: not a worker of a cluster`);
  return { index, count };
}

function send(m: ToPrimary): void {
  if (process.connected) process.send?.(m);
}

/**
 * Asks the primary for the configuration, starts the proxy on the shared
 * listener, and serves until the primary (or a signal) says stop. Resolves
 * once listening; throws if the proxy cannot start.
 */
export async function runWorker(opts: WorkerOptions): Promise<void> {
  const { index, count } = workerPlace();
  const early: { log?: Logger } = {};
  // The primary reloads every worker: a SIGHUP sent to the whole process group
  // (a terminal hanging up) must neither end nor reload this one.
  process.on('SIGHUP', () =>
    early.log?.info(
      { signal: 'SIGHUP', primary_pid: process.ppid },
      'signal received: reloads go through the primary, send SIGHUP to it',
    ),
  );
  const start = await new Promise<Start>((resolve) => {
    const onStart = (m: unknown): void => {
      if (!isMessage<ToWorker>(m) || m.type !== 'pgro:start') return;
      process.off('message', onStart);
      resolve(m);
    };
    process.on('message', onStart);
    send({ type: 'pgro:hello' });
  });

  const config = opts.resolve(start.raw);
  const log = createLogger(config.logLevel, logDestination({ fd: 1 }, { shared: true })).child({
    worker: index,
  });
  early.log = log;
  const metrics = new Metrics({ defaultMetrics: config.http !== undefined });
  const cancels = new CancelRegistry(undefined, {
    worker: index,
    workers: count,
    forward: (processId, secretKey) =>
      send({ type: 'pgro:cancel', processId, secret: secretKey.toString('hex') }),
  });
  const upstream = start.upstream ?? config.upstream;
  if (!upstream) throw new ConfigError('no upstream: the primary started no embedded PostgreSQL');

  /** A reload as the single process does it, with the configuration the primary validated. */
  const reloadWith = (
    server: ProxyServer,
    raw: RawConfig | undefined,
  ): { applied: boolean; result: ReloadResult } => {
    const errors: string[] = [];
    let applied = false;
    if (raw) {
      try {
        const next = opts.resolve(raw);
        const r = server.applyConfig(next, createPolicy(next.policy));
        applied = r.ok;
        errors.push(...r.errors);
      } catch (err) {
        const message = (err as Error).message;
        log.error(
          { event: 'reload_failed', part: 'config', err: message },
          'new configuration refused; keeping the old one',
        );
        errors.push(`config: ${message}`);
      }
    }
    errors.push(...server.reload().errors);
    return { applied, result: { ok: errors.length === 0, errors } };
  };

  let stopping = false;
  const ready = (async (): Promise<ProxyServer> => {
    await loadParser();
    const policy = createPolicy(config.policy);
    metrics.setDecisionCacheStats(() => policy.cacheStats());
    const server = new ProxyServer({ config, upstream, policy, logger: log, metrics, cancels });
    // A replacement worker: what reloads changed since the cluster started.
    if (start.current) reloadWith(server, start.current);
    const addr = await server.listen();
    log.info(
      {
        event: 'worker_listening',
        listen: `${addr.host}:${addr.port}`,
        upstream: describeTarget(upstream),
        version: VERSION,
        pid: process.pid,
      },
      'worker listening',
    );
    send({ type: 'pgro:listening', host: addr.host, port: addr.port });
    return server;
  })();

  let signals = 0;
  /**
   * A signal or the primary's word. Only a second signal exits at once: when
   * SIGTERM goes to every process of the group (systemd's default), the
   * primary's shutdown message and the signal are one request.
   */
  const stop = async (reason: string, signal: boolean): Promise<void> => {
    if (signal && ++signals > 1) {
      log.warn({ signal: reason }, 'second signal: exiting now');
      log.flush();
      process.exit(1);
    }
    if (stopping) return;
    stopping = true;
    if (signal) log.info({ signal: reason }, 'signal received');
    else log.info({ event: 'stop_requested' }, reason);
    const server = await ready.catch(() => undefined);
    await server?.shutdown();
    log.info({ event: 'stopped' }, 'stopped');
    // The IPC channel keeps the process alive: exit once the log is written.
    setTimeout(() => process.exit(0), 1000).unref();
    log.flush(() => process.exit(0));
  };

  process.on('message', (m: unknown) => {
    if (!isMessage<ToWorker>(m)) return;
    switch (m.type) {
      case 'pgro:cancel': {
        // Only keys this worker issued: the primary routes by the same bits.
        if (!SECRET_HEX.test(m.secret) || workerOfProcessId(m.processId, count) !== index) return;
        const outcome = cancels.cancel(m.processId, Buffer.from(m.secret, 'hex'));
        log.info({ event: 'cancel_request', outcome, via: 'primary' }, 'cancel request');
        return;
      }
      case 'pgro:reload': {
        const id = m.id;
        void ready.then(
          (server) => send({ type: 'pgro:reloaded', id, ...reloadWith(server, m.raw) }),
          () => undefined,
        );
        return;
      }
      case 'pgro:metrics': {
        const id = m.id;
        metrics.registry.getMetricsAsJSON().then(
          (json) => send({ type: 'pgro:metrics', id, metrics: json }),
          (err: Error) => send({ type: 'pgro:metrics', id, metrics: undefined, error: err.message }),
        );
        return;
      }
      case 'pgro:shutdown':
        void stop('shutdown requested by the primary', false);
        return;
      default:
        return;
    }
  });
  process.on('SIGINT', () => void stop('SIGINT', true));
  process.on('SIGTERM', () => void stop('SIGTERM', true));

  await ready;
}
