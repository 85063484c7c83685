/**
 * The primary of a cluster (`workers` > 1). It serves no client itself: it
 * forks the workers (each runs the same command line, see worker.ts) and
 * node:cluster's listener hands them the connections. It alone:
 *
 * - starts the embedded PostgreSQL (when no upstream is configured) and tells
 *   the workers where it is;
 * - serves the HTTP endpoint: /metrics sums the workers' registries (and its
 *   own process metrics), /readyz checks that every worker serves;
 * - reloads: SIGHUP or POST /admin/reload validate the config file once here,
 *   then every worker applies it and reports back;
 * - stops: SIGTERM / SIGINT stop every worker as a single process stops;
 * - replaces a worker that dies, with a growing delay when one keeps dying;
 * - passes a CancelRequest a worker received for a sibling's key on to the
 *   worker that owns it (the process id names it), and to nobody else.
 */
import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry } from 'prom-client';
import { UserDirectory } from '../auth/users.js';
import { ConfigError, type ProxyConfig, type RawConfig, type UpstreamTarget } from '../config/config.js';
import {
  cacheReadiness,
  probeTcp,
  startHttpServer,
  type HttpServerHandle,
  type ReloadResult,
} from '../observability/http.js';
import type { Logger } from '../observability/logger.js';
import { Metrics } from '../observability/metrics.js';
import { createPolicy } from '../policy/index.js';
import { workerOfProcessId } from '../session/cancel-registry.js';
import { ClientTls } from '../tls/client-tls.js';
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

/** The embedded PostgreSQL, started by the primary for every worker. */
export interface EmbeddedUpstream {
  upstream: UpstreamTarget;
  stop(): Promise<void>;
}

export interface PrimaryOptions {
  /** The configuration as validated (the command line's log level applied), and resolved. */
  raw: RawConfig;
  config: ProxyConfig;
  /** The primary's own lines (workers' carry `worker`). */
  logger: Logger;
  /** Reads and validates the config file again (throws ConfigError); absent without a config file. */
  reread?: () => { raw: RawConfig; config: ProxyConfig };
  /** Starts the embedded PostgreSQL (called when no upstream is configured). */
  startEmbedded(): Promise<EmbeddedUpstream>;
  /** Once every worker listens: the banner, warnings about the configuration. */
  onListening(addr: { host: string; port: number }, upstream: UpstreamTarget): void;
}

/** How long the primary waits for the workers' answers. */
const RELOAD_TIMEOUT_MS = 15_000;
const METRICS_TIMEOUT_MS = 5_000;
/** A worker that dies sooner than this after its start counts as crash-looping. */
const STABLE_AFTER_MS = 10_000;
/** Delay before a replacement: short for a worker that ran a while, growing to the maximum for one that keeps dying. */
const RESTART_DELAY_MS = 100;
const MAX_RESTART_DELAY_MS = 30_000;

interface Slot {
  index: number;
  worker: Worker | undefined;
  /** starting: forked; started: given its configuration; serving: listening; down: no process. */
  state: 'starting' | 'started' | 'serving' | 'down';
  startedAt: number;
  /** Deaths in a row, each soon after its start. */
  quickDeaths: number;
  restart: NodeJS.Timeout | undefined;
}

/** Replies the primary is waiting for, by request id. */
interface Pending {
  waiting: Set<number>;
  replies: Map<number, ToPrimary>;
  done(): void;
}

export async function runPrimary(opts: PrimaryOptions): Promise<void> {
  const { raw: startRaw, logger: log } = opts;
  let config = opts.config;
  const count = config.workers;
  const hooks: { reload?: () => void } = {};
  process.on('SIGHUP', () => {
    log.info(
      { signal: 'SIGHUP' },
      hooks.reload ? 'signal received: reloading' : 'signal received before start: ignored',
    );
    hooks.reload?.();
  });

  // What each worker would refuse at start, refused once here with one message.
  const clientTls = new ClientTls(config.clientTls);
  if (config.auth.mode === 'proxy') new UserDirectory(config.auth);
  createPolicy(config.policy);

  let embedded: EmbeddedUpstream | undefined;
  if (!config.upstream) embedded = await opts.startEmbedded();
  const upstream = config.upstream ?? embedded!.upstream;

  /** The configuration reloads have brought since the start (what a replacement applies). */
  let currentRaw: RawConfig | undefined;
  let stopping = false;
  let nextId = 1;
  const pending = new Map<number, Pending>();
  const slots: Slot[] = Array.from({ length: count }, (_, index) => ({
    index,
    worker: undefined,
    state: 'down',
    startedAt: 0,
    quickDeaths: 0,
    restart: undefined,
  }));

  let startup: { resolve(addr: { host: string; port: number }): void; reject(err: Error): void } | undefined;
  let address: { host: string; port: number } | undefined;
  const started = new Promise<{ host: string; port: number }>((resolve, reject) => {
    startup = { resolve, reject };
  });
  let allExited: (() => void) | undefined;

  const fork = (slot: Slot): void => {
    const worker = cluster.fork({
      [WORKER_INDEX_ENV]: String(slot.index),
      [WORKER_COUNT_ENV]: String(count),
    });
    slot.worker = worker;
    slot.state = 'starting';
    slot.startedAt = Date.now();
    worker.on('message', (m: unknown) => {
      if (slot.worker === worker && isMessage<ToPrimary>(m)) onMessage(slot, worker, m);
    });
    worker.on('exit', (code, signal) => onExit(slot, worker, code, signal));
    worker.on('error', (err) => log.warn({ worker: slot.index, err: err.message }, 'worker channel error'));
  };

  const tell = (worker: Worker | undefined, m: ToWorker): void => {
    if (worker?.isConnected()) worker.send(m);
  };

  const onMessage = (slot: Slot, worker: Worker, m: ToPrimary): void => {
    switch (m.type) {
      case 'pgro:hello':
        if (stopping) {
          worker.process.kill('SIGKILL');
          return;
        }
        slot.state = 'started';
        tell(worker, {
          type: 'pgro:start',
          raw: startRaw,
          ...(currentRaw ? { current: currentRaw } : {}),
          ...(embedded ? { upstream } : {}),
        });
        return;
      case 'pgro:listening':
        slot.state = 'serving';
        address ??= { host: m.host, port: m.port };
        if (startup && slots.every((s) => s.state === 'serving')) {
          startup.resolve(address);
          startup = undefined;
        } else if (!startup) {
          log.info(
            { event: 'worker_replaced', worker: slot.index, pid: worker.process.pid },
            'worker serving',
          );
        }
        return;
      case 'pgro:cancel':
        return routeCancel(slot, m);
      case 'pgro:reloaded':
      case 'pgro:metrics': {
        const p = pending.get(m.id);
        if (!p || !p.waiting.delete(slot.index)) return;
        p.replies.set(slot.index, m);
        if (p.waiting.size === 0) p.done();
        return;
      }
      default:
        return;
    }
  };

  /**
   * A worker received a CancelRequest for a key it did not issue: the owner
   * named by the process id gets it, and only it; anything else is dropped.
   */
  const routeCancel = (from: Slot, m: Extract<ToPrimary, { type: 'pgro:cancel' }>): void => {
    const owner = workerOfProcessId(m.processId, count);
    const to = owner === undefined ? undefined : slots[owner];
    if (!SECRET_HEX.test(m.secret) || !to || to === from || to.state !== 'serving') {
      log.info(
        { event: 'cancel_request', outcome: 'unknown_key', worker: owner },
        'cancel request for a worker that does not serve: dropped',
      );
      return;
    }
    tell(to.worker, { type: 'pgro:cancel', processId: m.processId, secret: m.secret });
  };

  const onExit = (slot: Slot, worker: Worker, code: number | null, signal: string | null): void => {
    if (slot.worker !== worker) return;
    slot.worker = undefined;
    slot.state = 'down';
    for (const p of pending.values()) if (p.waiting.delete(slot.index) && p.waiting.size === 0) p.done();
    if (stopping) {
      if (slots.every((s) => s.worker === undefined)) allExited?.();
      return;
    }
    if (startup) {
      const why = `worker ${slot.index} exited (${signal ?? `code ${code}`}) before it was listening`;
      startup.reject(code === 2 ? new ConfigError(why) : new Error(why));
      startup = undefined;
      return;
    }
    slot.quickDeaths = Date.now() - slot.startedAt < STABLE_AFTER_MS ? slot.quickDeaths + 1 : 0;
    const delay =
      slot.quickDeaths <= 1
        ? RESTART_DELAY_MS
        : Math.min(MAX_RESTART_DELAY_MS, 1000 * 2 ** (slot.quickDeaths - 2));
    log.error(
      { event: 'worker_exited', worker: slot.index, code, signal, restart_in_ms: delay },
      'worker exited unexpectedly: starting another',
    );
    slot.restart = setTimeout(() => {
      slot.restart = undefined;
      if (!stopping) fork(slot);
    }, delay);
  };

  /** Sends `make(id)` to every worker in `states` and waits for their answers (or their exit, or the timeout). */
  const ask = async (
    states: ReadonlyArray<Slot['state']>,
    make: (id: number) => ToWorker,
    timeoutMs: number,
  ): Promise<{ replies: Map<number, ToPrimary>; missing: number[] }> => {
    const id = nextId++;
    const targets = slots.filter((s) => states.includes(s.state) && s.worker?.isConnected());
    const p: Pending = { waiting: new Set(targets.map((s) => s.index)), replies: new Map(), done: () => {} };
    const finished = new Promise<void>((resolve) => (p.done = resolve));
    pending.set(id, p);
    for (const s of targets) tell(s.worker, make(id));
    if (p.waiting.size === 0) p.done();
    const timer = setTimeout(() => p.done(), timeoutMs);
    await finished;
    clearTimeout(timer);
    pending.delete(id);
    return { replies: p.replies, missing: [...p.waiting] };
  };

  /** SIGHUP and /admin/reload: the file validated here, then every worker reloads (certificates and users too). */
  const reloadAll = async (): Promise<ReloadResult> => {
    const errors: string[] = [];
    let raw: RawConfig | undefined;
    if (opts.reread) {
      try {
        const next = opts.reread();
        createPolicy(next.config.policy);
        raw = next.raw;
        currentRaw = JSON.stringify(raw) === JSON.stringify(startRaw) ? undefined : raw;
        config = { ...next.config, workers: config.workers, http: config.http, upstream: config.upstream };
        log.level = next.config.logLevel;
      } catch (err) {
        const message = (err as Error).message;
        log.error(
          { event: 'reload_failed', part: 'config', err: message },
          'new configuration refused; keeping the old one',
        );
        errors.push(`config: ${message}`);
      }
    }
    const { replies, missing } = await ask(
      ['started', 'serving'],
      (id) => ({ type: 'pgro:reload', id, ...(raw ? { raw } : {}) }),
      RELOAD_TIMEOUT_MS,
    );
    for (const [index, r] of replies) {
      if (r.type === 'pgro:reloaded')
        errors.push(...(r.result.errors ?? []).map((e) => `worker ${index}: ${e}`));
    }
    for (const index of missing) errors.push(`worker ${index}: no answer within ${RELOAD_TIMEOUT_MS} ms`);
    const ok = errors.length === 0;
    log.info(
      { event: 'workers_reloaded', ok, workers: replies.size, errors: errors.length },
      ok ? 'every worker reloaded' : 'reloaded with errors',
    );
    return { ok, errors };
  };

  /** Every serving worker's registry, and the primary's own process metrics, summed. */
  const primaryMetrics = config.http ? new Metrics({ defaultMetrics: true }) : undefined;
  const metricsText = async (): Promise<string> => {
    const { replies, missing } = await ask(
      ['serving'],
      (id) => ({ type: 'pgro:metrics', id }),
      METRICS_TIMEOUT_MS,
    );
    const all: object[][] = [];
    for (const [index, r] of replies) {
      if (r.type !== 'pgro:metrics') continue;
      if (!r.metrics) throw new Error(`worker ${index}: ${r.error ?? 'no metrics'}`);
      all.push(r.metrics);
    }
    if (missing.length > 0)
      throw new Error(`no metrics from worker ${missing.join(', ')} within ${METRICS_TIMEOUT_MS} ms`);
    if (primaryMetrics) all.push(await primaryMetrics.registry.getMetricsAsJSON());
    return AggregatorRegistry.aggregate(all).metrics();
  };

  /** Kills what is left of the workers after `graceMs`; resolves once none is left. */
  const stopWorkers = async (graceMs: number): Promise<void> => {
    for (const s of slots) {
      clearTimeout(s.restart);
      s.restart = undefined;
      if (s.state === 'serving' || s.state === 'started') tell(s.worker, { type: 'pgro:shutdown' });
      else s.worker?.process.kill('SIGKILL');
    }
    if (slots.every((s) => s.worker === undefined)) return;
    const exited = new Promise<void>((resolve) => (allExited = resolve));
    const timer = setTimeout(() => {
      for (const s of slots) s.worker?.process.kill('SIGKILL');
    }, graceMs);
    await exited;
    clearTimeout(timer);
  };

  for (const slot of slots) fork(slot);
  let addr: { host: string; port: number };
  try {
    addr = await started;
  } catch (err) {
    stopping = true;
    await stopWorkers(0);
    await embedded?.stop();
    throw err;
  }

  let http: HttpServerHandle | undefined;
  if (config.http) {
    const t = upstream;
    const target = t.host.startsWith('/')
      ? { path: `${t.host}/.s.PGSQL.${t.port}` }
      : { host: t.host, port: t.port };
    try {
      http = await startHttpServer({
        listen: config.http.listen,
        metrics: { metricsText, contentType: primaryMetrics!.contentType },
        logger: log,
        ready: cacheReadiness(async () => {
          const serving = slots.filter((s) => s.state === 'serving').length;
          const checks = {
            workers: serving === count || `${serving} of ${count} workers serving`,
            upstream: await probeTcp(target, 2000),
            accepting: !stopping,
          };
          return { ok: Object.values(checks).every((v) => v === true), checks };
        }, 2000),
        admin: config.http.admin ? { enabled: true, reload: () => reloadAll() } : undefined,
      });
    } catch (err) {
      stopping = true;
      await stopWorkers(5000);
      await embedded?.stop();
      throw err;
    }
  }

  log.info(
    {
      event: 'listening',
      listen: `${addr.host}:${addr.port}`,
      workers: count,
      upstream: describeTarget(upstream),
      upstream_sslmode: upstream.tls.sslmode,
      client_tls: config.clientTls.mode,
      certificate: clientTls.describe(),
      auth: config.auth.mode,
      version: VERSION,
    },
    'listening',
  );
  opts.onListening(addr, upstream);

  const stop = async (signal: string): Promise<void> => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      for (const s of slots) s.worker?.process.kill('SIGKILL');
      await embedded?.stop().catch(() => undefined);
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'signal received');
    // Each worker ends its sessions after shutdown_grace_ms; past that and a margin, it is killed.
    await stopWorkers(config.shutdownGraceMs + 5000);
    await http?.close();
    await embedded?.stop();
    log.info({ event: 'stopped' }, 'stopped');
    log.flush();
    process.exitCode = 0;
    setTimeout(() => process.exit(0), 200).unref();
  };
  hooks.reload = () => void reloadAll();
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
}
