/**
 * The audit log: one JSON record per statement string a client sends (a Query,
 * or a Parse of the extended protocol), with who sent it, what the proxy
 * decided and why, PostgreSQL's own fingerprint of it and its text with every
 * literal replaced (`$1`, `$2`, ...: passwords and other secrets in literals do
 * not reach the log). The full text only when the operator opts in.
 *
 * Fingerprint and normalized text come from libpg-query, cached by text, so a
 * repeated statement costs a map lookup. Statements that differ only in plain
 * literals (the policy's literal shape, see policy/shape.ts) share one entry
 * when libpg-query replaced every literal of the first: they have the same
 * fingerprint and the same normalized text, and cost no parse either.
 */
import { fingerprintSync, normalizeSync, scanSync } from 'libpg-query';
import { LruCache } from '../policy/cache.js';
import { literalShape } from '../policy/shape.js';
import type { Decision } from '../policy/types.js';

export interface AuditSession {
  session: number;
  client: string;
  user: string;
  database: string;
  applicationName: string;
}

export interface AuditOutcome {
  /** From sending the statement to the server's ReadyForQuery (simple queries). */
  durationMs?: number;
  /** Rows reported by the server's CommandComplete tags. */
  rows?: number;
  /** Bytes the proxy sent the client for it. */
  bytes?: number;
  /** Why the session ended before the statement finished. */
  ended?: string;
}

interface Shape {
  fingerprint: string | undefined;
  normalized: string | undefined;
}

/** Where audit lines go: the log destination (pino's stream), written to directly. */
export interface AuditSink {
  write(line: string): unknown;
}

export class Audit {
  private readonly shapes = new LruCache<Shape>(10_000);
  private readonly byLiteralShape = new LruCache<Shape>(10_000);

  /**
   * Records are written as JSON lines of the same shape as the other log lines
   * (level, time, the logger's bindings, fields, msg), but without going
   * through pino's per-line machinery (redaction paths, serializers): with a
   * record per statement, that cost more than classifying the statement. The
   * fields are the proxy's own, none of them a secret.
   */
  constructor(
    private readonly sink: AuditSink,
    private readonly bindings: Record<string, unknown>,
    private readonly includeText: boolean,
  ) {}

  private shape(sql: string): Shape {
    const hit = this.shapes.get(sql);
    if (hit) return hit;
    const literal = literalShape(sql);
    const shared = literal !== undefined && literal.spans.length > 0 ? literal.key : undefined;
    if (shared !== undefined) {
      const same = this.byLiteralShape.get(shared);
      if (same) return same;
    }
    let shape: Shape;
    try {
      const normalized = normalizeSync(sql);
      shape = {
        fingerprint: fingerprintSync(sql),
        normalized: literalFree(normalized) ? normalized : undefined,
      };
    } catch {
      // Text the parser refuses: no fingerprint, and no text unless opted in.
      shape = { fingerprint: undefined, normalized: undefined };
    }
    if (shared !== undefined && shape.normalized !== undefined) this.byLiteralShape.set(shared, shape);
    else this.shapes.set(sql, shape);
    return shape;
  }

  record(
    s: AuditSession,
    via: 'Query' | 'Parse',
    sql: string,
    decision: Decision,
    outcome: AuditOutcome = {},
  ): void {
    const { fingerprint, normalized } = this.shape(sql);
    const line = JSON.stringify({
      level: 'info',
      time: new Date().toISOString(),
      ...this.bindings,
      event: 'audit',
      session: s.session,
      client: s.client,
      user: s.user,
      database: s.database,
      application_name: s.applicationName,
      via,
      decision: decision.allowed ? 'allowed' : 'refused',
      reason: decision.refusal?.code,
      kind: decision.allowed ? decision.statements.map((st) => st.kind).join(';') : decision.refusal?.kind,
      fingerprint,
      normalized,
      text: this.includeText ? sql : undefined,
      duration_ms: outcome.durationMs,
      rows: outcome.rows,
      bytes: outcome.bytes,
      session_ended: outcome.ended,
      msg: 'statement',
    });
    this.sink.write(line + '\n');
  }
}

/** Token kinds that carry a value or a comment: none may be left in the logged text. */
const VALUE_TOKENS = new Set([
  'SCONST',
  'ICONST',
  'FCONST',
  'BCONST',
  'XCONST',
  'USCONST',
  'C_COMMENT',
  'SQL_COMMENT',
]);

/**
 * Whether the normalized text holds no literal and no comment, by PostgreSQL's
 * own scanner. libpg_query leaves the literals of some statements (PREPARE,
 * EXECUTE, view bodies, options of utility statements) in place: such a text is
 * not logged, the fingerprint is.
 */
function literalFree(text: string): boolean {
  try {
    return !scanSync(text).tokens.some((t) => VALUE_TOKENS.has(t.tokenName) || t.text.includes("'"));
  } catch {
    return false;
  }
}

/** The row count of a CommandComplete tag ("SELECT 5", "INSERT 0 1", "COPY 3"); 0 when it has none. */
export function rowsOfTag(tag: string): number {
  const last = tag.slice(tag.lastIndexOf(' ') + 1);
  return /^\d+$/.test(last) ? Number(last) : 0;
}
