/**
 * The policy's public types. The policy is pure: it takes SQL text and returns a
 * Decision as a value. It does no I/O and never throws across the session loop.
 */

/** Stable reason codes: they appear in logs, metrics labels and `check` output. */
export const ReasonCode = {
  /** INSERT / UPDATE / DELETE / MERGE, SELECT INTO, CREATE TABLE AS, data-modifying CTE. */
  Write: 'write',
  /** CREATE / ALTER / DROP / COMMENT / SECURITY LABEL / GRANT / REVOKE ... */
  Ddl: 'ddl',
  /** Maintenance and server utilities: VACUUM, ANALYZE, CHECKPOINT, CLUSTER, REINDEX, LOCK, LOAD, ... */
  Utility: 'utility',
  /** BEGIN READ WRITE, SET TRANSACTION READ WRITE, SET SESSION CHARACTERISTICS ... READ WRITE. */
  ReadWriteTransaction: 'read_write_transaction',
  /** SET / RESET / set_config() / startup parameter of a protected setting to a looser value. */
  ProtectedSetting: 'protected_setting',
  /** A function on the deny list (or not on the allow list), in any calling form. */
  ForbiddenFunction: 'forbidden_function',
  /** SELECT ... FOR UPDATE / FOR SHARE / FOR NO KEY UPDATE / FOR KEY SHARE. */
  LockingClause: 'locking_clause',
  /** COPY FROM, COPY TO a file or a program. */
  Copy: 'copy',
  /** DO, CALL: code the proxy cannot see into. */
  Procedural: 'procedural',
  /** Two-phase commit: PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED. */
  TwoPhase: 'two_phase_commit',
  /** SET ROLE, SET SESSION AUTHORIZATION. */
  RoleChange: 'role_change',
  /** A statement kind the policy does not know: refused by default. */
  Unknown: 'unknown_statement',
  /** The parser could not read the SQL. */
  SyntaxError: 'syntax_error',
  /** A statement after COMMIT in the same query string (see classify.ts). */
  TransactionBoundary: 'transaction_boundary',
  /**
   * Given by the session, not by classify(): a statement whose text could read
   * differently after a setting changed earlier in the same extended-query batch.
   */
  BatchBoundary: 'batch_boundary',
  /** NOTIFY, pg_notify(): reaches other sessions. */
  Notify: 'notify',
  /** The policy itself failed (parser not loaded, unexpected input): refused, never allowed by accident. */
  Internal: 'internal_error',
} as const;
export type ReasonCode = (typeof ReasonCode)[keyof typeof ReasonCode];

/** SQLSTATEs the policy hands out. */
export const PolicySqlState = {
  /** read_only_sql_transaction: writes and read-write toggles. */
  ReadOnlySqlTransaction: '25006',
  /** insufficient_privilege: forbidden functions and privileged operations. */
  InsufficientPrivilege: '42501',
  /** syntax_error: SQL the parser cannot read. */
  SyntaxError: '42601',
  /** feature_not_supported: statement kinds the proxy does not know. */
  FeatureNotSupported: '0A000',
  /** internal_error: the policy could not decide. */
  InternalError: 'XX000',
} as const;
export type PolicySqlState = (typeof PolicySqlState)[keyof typeof PolicySqlState];

export interface Refusal {
  code: ReasonCode;
  sqlstate: string;
  /** Statement kind as a command tag: 'INSERT', 'CREATE TABLE', 'SET', 'SELECT' ... */
  kind: string;
  /** One line a user can act on, naming what was refused and why. */
  message: string;
  detail?: string;
  hint?: string;
  /** 1-based character position in the whole query string (ErrorResponse field 'P'), when known. */
  position?: number;
}

export interface StatementResult {
  /** Statement kind as a command tag. */
  kind: string;
  /** The statement's own text, sliced from the query string. */
  text: string;
  /** Undefined when the statement is allowed. */
  refusal?: Refusal;
  /** COMMIT or END without AND CHAIN: what follows runs in a new transaction. */
  endsTransaction?: boolean;
}

export interface Decision {
  /** True only if every statement of the string is allowed. An empty string is allowed. */
  allowed: boolean;
  /** The first refusal, if any: what the client is told. */
  refusal?: Refusal;
  /** One entry per statement (empty when the string holds none, or on a syntax error). */
  statements: StatementResult[];
}

export interface PolicyOptions {
  /** Statement kinds (command tags such as 'ANALYZE', 'VACUUM') an operator chose to allow. */
  allowStatements: string[];
  /** 'denylist': the built-in deny list plus denyFunctions; 'allowlist': curated safe built-ins plus allowFunctions. */
  functionMode: 'denylist' | 'allowlist';
  /** Extra functions to deny (names, optionally schema-qualified; case-insensitive). */
  denyFunctions: string[];
  /** Extra functions allowed in allowlist mode. */
  allowFunctions: string[];
  /** Extra settings a client may not change at all. */
  protectedSettings: string[];
  /**
   * Limits the operator pins (e.g. statement_timeout: 30000 ms). A client may lower
   * them but not raise or remove them. Values in the setting's base unit: milliseconds for
   * the timeouts, kB for work_mem-like settings; a plain number for any other setting.
   */
  settingLimits: Record<string, number>;
  /** pg_sleep / pg_sleep_for / pg_sleep_until above this many seconds is refused. */
  maxSleepSeconds: number;
  /** Decision cache entries. 0 disables the cache. */
  cacheSize: number;
}

export interface Policy {
  classify(sql: string): Decision;
  readonly options: Readonly<PolicyOptions>;
  /**
   * Decision-cache lookups so far, for metrics: hits (shapeHits of them by
   * literal shape, the rest by exact text) and misses (parsed in full).
   */
  cacheStats(): { hits: number; misses: number; shapeHits: number };
}
