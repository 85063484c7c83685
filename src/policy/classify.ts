/**
 * classify(sql): one Decision for a whole query string. Parses with PostgreSQL's
 * grammar, checks every statement, and never throws: parser errors and internal
 * failures come back as refusals.
 */
import { normalizeFunctionEntry, type FunctionPolicy } from './functions.js';
import { toRefusal, type Finding } from './messages.js';
import { constantReadCount } from './nodes.js';
import { parse, parserReady } from './parser.js';
import { BUILTIN_FROZEN_SETTINGS, canonicalSettingName, type SettingsPolicy } from './settings.js';
import { QueryText } from './text.js';
import {
  PolicySqlState,
  ReasonCode,
  type Decision,
  type PolicyOptions,
  type Refusal,
  type StatementResult,
} from './types.js';
import { checkStatement, type WalkPolicy } from './walk.js';

/** Builds the lookup structures the walk uses from the operator's options. */
export function compileOptions(options: PolicyOptions): WalkPolicy {
  const settings: SettingsPolicy = {
    frozen: new Set([...BUILTIN_FROZEN_SETTINGS, ...options.protectedSettings.map(canonicalSettingName)]),
    limits: new Map(Object.entries(options.settingLimits).map(([k, v]) => [canonicalSettingName(k), v])),
  };
  const functions: FunctionPolicy = {
    mode: options.functionMode,
    deny: new Set(options.denyFunctions.map(normalizeFunctionEntry)),
    allow: new Set(options.allowFunctions.map(normalizeFunctionEntry)),
    maxSleepSeconds: options.maxSleepSeconds,
    settings,
  };
  return {
    settings,
    functions,
    allowStatements: new Set(options.allowStatements.map((s) => s.trim().toUpperCase())),
  };
}

function refused(refusal: Refusal, statements: StatementResult[] = []): Decision {
  return { allowed: false, refusal, statements };
}

function bare(code: ReasonCode, sqlstate: string, message: string, position?: number): Refusal {
  const r: Refusal = { code, sqlstate, kind: 'UNKNOWN', message };
  if (position !== undefined) r.position = position;
  return r;
}

/**
 * classifyWith, and whether the decision read any literal's value (a setting's
 * new value, a pg_sleep duration...): one that did not holds for every query
 * string of the same literal shape.
 */
export function classifyTraced(
  sql: string,
  policy: WalkPolicy,
): { decision: Decision; readsLiterals: boolean } {
  const before = constantReadCount();
  const decision = classifyWith(sql, policy);
  return { decision, readsLiterals: constantReadCount() !== before };
}

export function classifyWith(sql: string, policy: WalkPolicy): Decision {
  if (sql.includes('\0')) {
    // The server reads a query as a C string: text after a NUL would be hidden from one side.
    return refused(
      bare(
        ReasonCode.SyntaxError,
        PolicySqlState.SyntaxError,
        'pg-readonly-proxy: the query text contains a NUL byte',
      ),
    );
  }
  if (!parserReady()) {
    return refused(
      bare(
        ReasonCode.Internal,
        PolicySqlState.InternalError,
        'pg-readonly-proxy: the SQL parser is not loaded; the query was refused',
      ),
    );
  }
  try {
    const outcome = parse(sql);
    if (!outcome.ok) {
      const position = outcome.cursor === undefined ? undefined : outcome.cursor + 1;
      return refused(bare(ReasonCode.SyntaxError, PolicySqlState.SyntaxError, outcome.message, position));
    }
    const text = outcome.statements.length > 0 ? new QueryText(sql) : undefined;
    const statements: StatementResult[] = [];
    let first: Refusal | undefined;
    for (const s of outcome.statements) {
      const end = s.length === undefined ? undefined : s.location + s.length;
      const stmtText = text ? text.slice(s.location, end).trim() : '';
      const check = checkStatement(s.stmt, policy);
      const result: StatementResult = { kind: check.kind, text: stmtText };
      if (check.finding) {
        result.refusal = refusalOf(check.finding, check.kind, text);
        first ??= result.refusal;
      }
      if (endsTransaction(s.stmt)) result.endsTransaction = true;
      statements.push(result);
    }
    const boundary = statements.findIndex((r, i) => r.endsTransaction && i < statements.length - 1);
    if (!first && boundary >= 0) {
      // The server reports a setting changed in a transaction (say by a function
      // that turned default_transaction_read_only off) only at ReadyForQuery, at
      // the end of the whole string: statements after a COMMIT in the same string
      // would run in a new transaction before the proxy could see the report.
      const after = statements[boundary + 1]!;
      first = after.refusal = {
        code: ReasonCode.TransactionBoundary,
        sqlstate: PolicySqlState.ReadOnlySqlTransaction,
        kind: after.kind,
        message: `pg-readonly-proxy: ${after.kind} after ${statements[boundary]!.kind} in the same query string is not allowed: it would run in a new transaction before the proxy can check the one that ended`,
        hint: 'Send the statements that follow COMMIT as a separate query.',
      };
    }
    return first ? { allowed: false, refusal: first, statements } : { allowed: true, statements };
  } catch (e) {
    return refused(
      bare(
        ReasonCode.Internal,
        PolicySqlState.InternalError,
        `pg-readonly-proxy: the policy could not classify the query: ${e instanceof Error ? e.message : String(e)}`,
      ),
    );
  }
}

function refusalOf(f: Finding, kind: string, text: QueryText | undefined): Refusal {
  const position = f.offset !== undefined && text ? text.position(f.offset) : undefined;
  return toRefusal(f, kind, position);
}

/** COMMIT / END without AND CHAIN: the next statement starts a new transaction. */
function endsTransaction(stmt: unknown): boolean {
  const t = (stmt as { TransactionStmt?: { kind?: string; chain?: boolean } }).TransactionStmt;
  return t !== undefined && t.kind === 'TRANS_STMT_COMMIT' && t.chain !== true;
}
