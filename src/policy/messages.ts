/**
 * Refusal texts. Every refusal names what was refused and why, in words a client
 * can act on; the SQLSTATE follows from the reason code.
 */
import { PolicySqlState, ReasonCode, type Refusal } from './types.js';

const PREFIX = 'pg-readonly-proxy: ';

export const READ_ONLY_HINT =
  'pg-readonly-proxy allows read-only statements only; connect to the primary directly to write.';

/** The SQLSTATE each reason code is reported with. */
export function sqlStateFor(code: ReasonCode): string {
  switch (code) {
    case ReasonCode.ProtectedSetting:
    case ReasonCode.ForbiddenFunction:
    case ReasonCode.RoleChange:
      return PolicySqlState.InsufficientPrivilege;
    case ReasonCode.SyntaxError:
      return PolicySqlState.SyntaxError;
    case ReasonCode.Unknown:
      return PolicySqlState.FeatureNotSupported;
    case ReasonCode.Internal:
      return PolicySqlState.InternalError;
    default:
      // write, ddl, utility, read_write_transaction, locking_clause, copy,
      // procedural, two_phase_commit, notify: all "not in a read-only transaction".
      return PolicySqlState.ReadOnlySqlTransaction;
  }
}

/** What a refusal is made of before the statement kind and position are known. */
export interface Finding {
  code: ReasonCode;
  /** The full message, prefix included. */
  message: string;
  detail?: string;
  hint?: string;
  /** Byte offset in the query string of the offending node, when known. */
  offset?: number;
}

export function finding(
  code: ReasonCode,
  what: string,
  why: string,
  extra: { hint?: string; detail?: string; offset?: number } = {},
): Finding {
  const f: Finding = { code, message: `${PREFIX}${what} is not allowed: ${why}` };
  if (extra.hint !== undefined) f.hint = extra.hint;
  if (extra.detail !== undefined) f.detail = extra.detail;
  if (extra.offset !== undefined) f.offset = extra.offset;
  return f;
}

/** A write, DDL or utility statement (possibly nested inside another one). */
export function readOnlyFinding(code: ReasonCode, what: string, offset?: number, detail?: string): Finding {
  const extra: { hint: string; offset?: number; detail?: string } = { hint: READ_ONLY_HINT };
  if (offset !== undefined) extra.offset = offset;
  if (detail !== undefined) extra.detail = detail;
  return finding(code, what, 'this connection is read-only', extra);
}

export function unknownFinding(tag: string, offset?: number): Finding {
  const extra: { hint: string; offset?: number } = {
    hint: 'The proxy refuses statement types it does not know; ask the operator if this one should be allowed.',
  };
  if (offset !== undefined) extra.offset = offset;
  return {
    code: ReasonCode.Unknown,
    message: `${PREFIX}statement type ${tag} is not supported: the proxy refuses statements it cannot classify`,
    ...extra,
  };
}

export function toRefusal(f: Finding, kind: string, position: number | undefined): Refusal {
  const r: Refusal = { code: f.code, sqlstate: sqlStateFor(f.code), kind, message: f.message };
  if (f.detail !== undefined) r.detail = f.detail;
  if (f.hint !== undefined) r.hint = f.hint;
  if (position !== undefined) r.position = position;
  return r;
}
