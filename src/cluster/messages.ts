/**
 * What the primary and its worker processes say to each other over the IPC
 * channel node:cluster opens for each worker. Every message is a plain object
 * whose `type` starts with `pgro:` (prom-client and node:cluster keep to their
 * own types on the same channel).
 *
 * Nothing here is logged as it is: a cancel message holds a client's secret key.
 */
import type { RawConfig, UpstreamTarget } from '../config/config.js';
import type { ReloadResult } from '../observability/http.js';

/** Set in a worker's environment by the primary: its index (0-based) and how many workers there are. */
export const WORKER_INDEX_ENV = 'PGRO_WORKER_INDEX';
export const WORKER_COUNT_ENV = 'PGRO_WORKER_COUNT';

/** Primary → worker. */
export type ToWorker =
  /**
   * The answer to `hello`. `raw` is the configuration the cluster started
   * with; `current`, when a reload changed it since, is applied on top (as a
   * reload would), so a replacement serves what its siblings serve. `upstream`:
   * the embedded PostgreSQL's address, when the primary started one.
   */
  | { type: 'pgro:start'; raw: RawConfig; current?: RawConfig; upstream?: UpstreamTarget }
  /** Reload; `raw` is the new configuration, absent when there is no config file or it was refused. */
  | { type: 'pgro:reload'; id: number; raw?: RawConfig }
  /** A CancelRequest another worker received for a key this worker issued. Secret in hex. */
  | { type: 'pgro:cancel'; processId: number; secret: string }
  /** Metrics for /metrics: answer with the registry as JSON. */
  | { type: 'pgro:metrics'; id: number }
  /** Stop as on SIGTERM (stop accepting, let sessions finish within the grace period). */
  | { type: 'pgro:shutdown' };

/** Worker → primary. */
export type ToPrimary =
  /** Ready for `start`. */
  | { type: 'pgro:hello' }
  /** Listening (the shared handle is bound). */
  | { type: 'pgro:listening'; host: string; port: number }
  /** What a reload did; `applied`: the new configuration was taken. */
  | { type: 'pgro:reloaded'; id: number; applied: boolean; result: ReloadResult }
  /** A CancelRequest for a key another worker issued (its index is in the process id). */
  | { type: 'pgro:cancel'; processId: number; secret: string }
  | { type: 'pgro:metrics'; id: number; metrics: object[] | undefined; error?: string };

/** A secret key as it travels: hex, at most PostgreSQL's 256 bytes. */
export const SECRET_HEX = /^(?:[0-9a-f]{2}){1,256}$/;

export function isMessage<T extends { type: string }>(m: unknown): m is T {
  return (
    typeof m === 'object' &&
    m !== null &&
    typeof (m as { type?: unknown }).type === 'string' &&
    (m as { type: string }).type.startsWith('pgro:')
  );
}
