/**
 * Proxy-issued cancel keys. Each client gets a random BackendKeyData of the
 * proxy's own, so it never learns the upstream backend's pid or secret; a
 * CancelRequest is matched in constant time and forwarded to the right backend.
 * Cancels are rate-limited per key so a client cannot flood the server.
 *
 * With several worker processes (`workers`), a CancelRequest reaches whichever
 * worker the listener hands its connection to. The process id then names its
 * owner: its top bits hold the issuing worker's index, the rest is random. A
 * worker that receives a key of another's passes it on (through the primary,
 * see src/cluster/); only the owner holds the secret and compares it.
 */
import { randomBytes, randomInt, timingSafeEqual } from 'node:crypto';
import type { BackendKey } from '../protocol/backend-messages.js';

export interface Cancellable {
  cancelUpstream(): void;
}

/** How many top bits of a 31-bit process id name the worker, for `workers` processes (0 for one). */
export function workerBits(workers: number): number {
  return workers <= 1 ? 0 : 32 - Math.clz32(workers - 1);
}

/**
 * A new process id for `worker` (0-based) of `workers`: the worker's index in
 * the top workerBits(workers) bits of a positive Int32, random below. Never 0.
 */
export function makeProcessId(worker: number, workers: number): number {
  const span = 2 ** (31 - workerBits(workers));
  return worker * span + randomInt(worker === 0 ? 1 : 0, span);
}

/** The worker that issued `processId`, or undefined when no worker of `workers` could have. */
export function workerOfProcessId(processId: number, workers: number): number | undefined {
  if (!Number.isInteger(processId) || processId < 1 || processId > 0x7fffffff) return undefined;
  const worker = Math.floor(processId / 2 ** (31 - workerBits(workers)));
  return worker < workers ? worker : undefined;
}

/** A worker process's place among the others, and the way to its siblings' keys. */
export interface CancelRouting {
  /** This worker's index, 0-based. */
  worker: number;
  /** How many workers there are. */
  workers: number;
  /** Hands a CancelRequest for another worker's key on (to the primary, which passes it to its owner). */
  forward(processId: number, secretKey: Buffer): void;
}

/** What became of a CancelRequest (for logs): `relayed` went to the worker that owns the key. */
export type CancelOutcome = 'forwarded' | 'unknown_key' | 'rate_limited' | 'relayed';

interface Entry {
  secret: Buffer;
  target: Cancellable;
  lastCancel: number;
}

export class CancelRegistry {
  private readonly entries = new Map<number, Entry>();

  /** Without routing, one process owns every key. */
  constructor(
    private readonly minIntervalMs = 100,
    private readonly routing?: CancelRouting,
  ) {}

  issue(target: Cancellable): BackendKey {
    const r = this.routing;
    let processId: number;
    do processId = r ? makeProcessId(r.worker, r.workers) : randomInt(1, 0x7fffffff);
    while (this.entries.has(processId));
    const secretKey = randomBytes(4);
    this.entries.set(processId, { secret: secretKey, target, lastCancel: 0 });
    return { processId, secretKey };
  }

  release(processId: number): void {
    this.entries.delete(processId);
  }

  /** What became of a CancelRequest (for logs and metrics). */
  cancel(processId: number, secretKey: Buffer, now = Date.now()): CancelOutcome {
    const r = this.routing;
    if (r) {
      const owner = workerOfProcessId(processId, r.workers);
      if (owner === undefined) return 'unknown_key';
      if (owner !== r.worker) {
        r.forward(processId, secretKey);
        return 'relayed';
      }
    }
    const e = this.entries.get(processId);
    if (!e || e.secret.length !== secretKey.length || !timingSafeEqual(e.secret, secretKey))
      return 'unknown_key';
    if (now - e.lastCancel < this.minIntervalMs) return 'rate_limited';
    e.lastCancel = now;
    e.target.cancelUpstream();
    return 'forwarded';
  }

  get size(): number {
    return this.entries.size;
  }
}
