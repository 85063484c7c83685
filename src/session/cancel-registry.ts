/**
 * Proxy-issued cancel keys. Each client gets a random BackendKeyData of the
 * proxy's own, so it never learns the upstream backend's pid or secret; a
 * CancelRequest is matched in constant time and forwarded to the right backend.
 * Cancels are rate-limited per key so a client cannot flood the server.
 */
import { randomBytes, randomInt, timingSafeEqual } from 'node:crypto';
import type { BackendKey } from '../protocol/backend-messages.js';

export interface Cancellable {
  cancelUpstream(): void;
}

interface Entry {
  secret: Buffer;
  target: Cancellable;
  lastCancel: number;
}

export class CancelRegistry {
  private readonly entries = new Map<number, Entry>();

  constructor(private readonly minIntervalMs = 100) {}

  issue(target: Cancellable): BackendKey {
    let processId: number;
    do processId = randomInt(1, 0x7fffffff);
    while (this.entries.has(processId));
    const secretKey = randomBytes(4);
    this.entries.set(processId, { secret: secretKey, target, lastCancel: 0 });
    return { processId, secretKey };
  }

  release(processId: number): void {
    this.entries.delete(processId);
  }

  /** What became of a CancelRequest (for logs and metrics). */
  cancel(
    processId: number,
    secretKey: Buffer,
    now = Date.now(),
  ): 'forwarded' | 'unknown_key' | 'rate_limited' {
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
