/**
 * The statement catalogue: for every statement node type, its command tag and
 * whether it may run on a read-only connection. Anything not listed here is
 * refused as unknown. A rule looks only at its own node's fields; the walker
 * visits everything below it (nested queries meet their own rule there).
 */
import { finding, readOnlyFinding, READ_ONLY_HINT, type Finding } from './messages.js';
import { asArray, constantOf, isObject, location, str, unwrap, type JsonObject } from './nodes.js';
import { checkSettingChange, type SettingChange, type SettingsPolicy } from './settings.js';
import { checkTransactionModes } from './transactions.js';
import { ReasonCode } from './types.js';

export interface RuleContext {
  settings: SettingsPolicy;
  /** Where a nested statement sits, for messages: "in a WITH query", "inside EXPLAIN". */
  via: string | undefined;
}

export interface RuleResult {
  /** Command tag. */
  kind: string;
  finding?: Finding;
}

type Rule = (body: JsonObject, ctx: RuleContext) => RuleResult;

/** Words for an ObjectType enum value: OBJECT_FOREIGN_TABLE → "FOREIGN TABLE". */
const OBJECT_WORDS: Readonly<Record<string, string>> = {
  MATVIEW: 'MATERIALIZED VIEW',
  FDW: 'FOREIGN DATA WRAPPER',
  FOREIGN_SERVER: 'SERVER',
  OPCLASS: 'OPERATOR CLASS',
  OPFAMILY: 'OPERATOR FAMILY',
  TSCONFIGURATION: 'TEXT SEARCH CONFIGURATION',
  TSDICTIONARY: 'TEXT SEARCH DICTIONARY',
  TSPARSER: 'TEXT SEARCH PARSER',
  TSTEMPLATE: 'TEXT SEARCH TEMPLATE',
  LARGEOBJECT: 'LARGE OBJECT',
  STATISTIC_EXT: 'STATISTICS',
  TABCONSTRAINT: 'CONSTRAINT',
  DOMCONSTRAINT: 'CONSTRAINT',
  PARAMETER_ACL: 'PARAMETER',
  DEFACL: 'DEFAULT PRIVILEGES',
};

function objectWords(objtype: unknown, fallback: string): string {
  const s = str(objtype);
  if (s === undefined || !s.startsWith('OBJECT_')) return fallback;
  const key = s.slice('OBJECT_'.length);
  return OBJECT_WORDS[key] ?? key.replace(/_/g, ' ');
}

function allowed(kind: string): RuleResult {
  return { kind };
}

function within(what: string, ctx: RuleContext): string {
  return ctx.via === undefined ? what : `${what} ${ctx.via}`;
}

function relationOffset(body: JsonObject): number | undefined {
  return isObject(body.relation) ? location(body.relation) : undefined;
}

/** DML: kind and the target relation's position. */
function write(kind: string): Rule {
  return (body, ctx) => ({
    kind,
    finding: readOnlyFinding(ReasonCode.Write, within(kind, ctx), relationOffset(body)),
  });
}

function ddl(kind: string | ((body: JsonObject) => string)): Rule {
  return (body, ctx) => {
    const k = typeof kind === 'string' ? kind : kind(body);
    return { kind: k, finding: readOnlyFinding(ReasonCode.Ddl, within(k, ctx)) };
  };
}

function utility(kind: string | ((body: JsonObject) => string)): Rule {
  return (body, ctx) => {
    const k = typeof kind === 'string' ? kind : kind(body);
    return {
      kind: k,
      finding: finding(ReasonCode.Utility, within(k, ctx), 'this connection is read-only', {
        hint: 'pg-readonly-proxy refuses maintenance and server utilities; run them on the server directly.',
      }),
    };
  };
}

const LOCK_STRENGTH: Readonly<Record<string, string>> = {
  LCS_FORKEYSHARE: 'FOR KEY SHARE',
  LCS_FORSHARE: 'FOR SHARE',
  LCS_FORNOKEYUPDATE: 'FOR NO KEY UPDATE',
  LCS_FORUPDATE: 'FOR UPDATE',
};

/** A locking clause found anywhere in a query; its kind ("SELECT FOR UPDATE") is what an operator would list. */
export function lockingRule(body: JsonObject): RuleResult {
  const clause = LOCK_STRENGTH[str(body.strength) ?? ''] ?? 'FOR UPDATE';
  const rels = asArray(body.lockedRels);
  const first = unwrap(rels[0]);
  const offset = first ? location(first.body) : undefined;
  const kind = `SELECT ${clause}`;
  return {
    kind,
    finding: finding(
      ReasonCode.LockingClause,
      kind,
      'row locks write to the table and this connection is read-only',
      {
        hint: `Remove the ${clause} clause.`,
        ...(offset === undefined ? {} : { offset }),
      },
    ),
  };
}

function selectRule(body: JsonObject, ctx: RuleContext): RuleResult {
  if (isObject(body.intoClause)) {
    const into = body.intoClause;
    const offset = isObject(into.rel) ? location(into.rel) : undefined;
    return {
      kind: 'SELECT',
      finding: readOnlyFinding(
        ReasonCode.Write,
        within('SELECT INTO', ctx),
        offset,
        'SELECT INTO creates a table from the result.',
      ),
    };
  }
  return allowed('SELECT');
}

function createTableAsRule(body: JsonObject, ctx: RuleContext): RuleResult {
  if (body.is_select_into === true) return selectRule({ intoClause: body.into ?? {} }, ctx);
  if (body.objtype === 'OBJECT_MATVIEW') return ddl('CREATE MATERIALIZED VIEW')(body, ctx);
  return write('CREATE TABLE AS')(body, ctx);
}

function createTableRule(body: JsonObject, ctx: RuleContext): RuleResult {
  const rel = isObject(body.relation) ? body.relation : {};
  const temp = rel.relpersistence === 't';
  const kind = 'CREATE TABLE';
  return {
    kind,
    finding: readOnlyFinding(
      ReasonCode.Ddl,
      within(temp ? 'CREATE TEMPORARY TABLE' : kind, ctx),
      location(rel),
      temp ? 'Temporary tables are refused too: creating one writes to the system catalogs.' : undefined,
    ),
  };
}

const TRANSACTION_KINDS: Readonly<Record<string, string>> = {
  TRANS_STMT_BEGIN: 'BEGIN',
  TRANS_STMT_START: 'START TRANSACTION',
  TRANS_STMT_COMMIT: 'COMMIT',
  TRANS_STMT_ROLLBACK: 'ROLLBACK',
  TRANS_STMT_SAVEPOINT: 'SAVEPOINT',
  TRANS_STMT_RELEASE: 'RELEASE',
  TRANS_STMT_ROLLBACK_TO: 'ROLLBACK',
  TRANS_STMT_PREPARE: 'PREPARE TRANSACTION',
  TRANS_STMT_COMMIT_PREPARED: 'COMMIT PREPARED',
  TRANS_STMT_ROLLBACK_PREPARED: 'ROLLBACK PREPARED',
};

function transactionRule(body: JsonObject): RuleResult {
  const stmtKind = str(body.kind) ?? '';
  const kind = TRANSACTION_KINDS[stmtKind];
  if (kind === undefined) return { kind: 'TRANSACTION', finding: unknownTransaction(stmtKind) };
  if (
    stmtKind === 'TRANS_STMT_PREPARE' ||
    stmtKind === 'TRANS_STMT_COMMIT_PREPARED' ||
    stmtKind === 'TRANS_STMT_ROLLBACK_PREPARED'
  ) {
    return {
      kind,
      finding: finding(ReasonCode.TwoPhase, kind, 'two-phase commit writes the transaction state to disk', {
        hint: READ_ONLY_HINT,
      }),
    };
  }
  const f = checkTransactionModes(body.options, kind);
  return f ? { kind, finding: f } : allowed(kind);
}

function unknownTransaction(kind: string): Finding {
  return finding(ReasonCode.Unknown, `transaction statement ${kind}`, 'the proxy does not know it');
}

/** A constant argument list as SQL-ish text for messages. */
function showArgs(args: unknown[]): string {
  return args
    .map((a) => {
      const c = constantOf(a);
      if (!c) return '...';
      if (c.type === 'string') return `'${c.value}'`;
      if (c.type === 'number') return c.text;
      if (c.type === 'boolean') return String(c.value);
      return 'NULL';
    })
    .join(', ');
}

function variableSetRule(body: JsonObject, ctx: RuleContext): RuleResult {
  const setKind = str(body.kind) ?? '';
  const name = str(body.name) ?? '';
  const local = body.is_local === true ? 'LOCAL ' : '';
  if (setKind === 'VAR_RESET_ALL') return allowed('RESET');
  if (setKind === 'VAR_SET_MULTI') {
    if (name === 'TRANSACTION' || name === 'SESSION CHARACTERISTICS') {
      const what = name === 'TRANSACTION' ? 'SET TRANSACTION' : 'SET SESSION CHARACTERISTICS AS TRANSACTION';
      const f = checkTransactionModes(body.args, what);
      return f ? { kind: 'SET', finding: f } : allowed('SET');
    }
    if (name === 'TRANSACTION SNAPSHOT') return allowed('SET');
    return {
      kind: 'SET',
      finding: finding(ReasonCode.Unknown, `SET ${name}`, 'the proxy does not know this form'),
    };
  }
  const kind = setKind === 'VAR_RESET' ? 'RESET' : 'SET';
  let change: SettingChange;
  let what: string;
  const args = asArray(body.args);
  switch (setKind) {
    case 'VAR_SET_VALUE': {
      const values = args.map(constantOf);
      const constants = values.every((v) => v !== undefined)
        ? values.filter((v) => v !== undefined)
        : undefined;
      change = { type: 'set', values: constants };
      what =
        name === 'role'
          ? `SET ${local}ROLE ${showArgs(args)}`
          : name === 'session_authorization'
            ? `SET ${local}SESSION AUTHORIZATION ${showArgs(args)}`
            : `SET ${local}${name} = ${showArgs(args)}`;
      break;
    }
    case 'VAR_SET_DEFAULT':
      change = { type: 'reset' };
      what = `SET ${local}${name} TO DEFAULT`;
      break;
    case 'VAR_RESET':
      change = { type: 'reset' };
      what = `RESET ${name}`;
      break;
    case 'VAR_SET_CURRENT':
      change = { type: 'current' };
      what = `SET ${name} FROM CURRENT`;
      break;
    default:
      return {
        kind,
        finding: finding(ReasonCode.Unknown, `${kind} ${name}`, 'the proxy does not know this form'),
      };
  }
  const f = checkSettingChange(name, change, ctx.settings, what);
  return f ? { kind, finding: f } : allowed(kind);
}

function copyRule(body: JsonObject, ctx: RuleContext): RuleResult {
  const kind = 'COPY';
  const hint = 'Use COPY ... TO STDOUT (psql: \\copy ... to a local file).';
  if (body.is_from === true) {
    return {
      kind,
      finding: finding(ReasonCode.Copy, within('COPY FROM', ctx), 'this connection is read-only', {
        hint: READ_ONLY_HINT,
      }),
    };
  }
  if (body.is_program === true) {
    return {
      kind,
      finding: finding(
        ReasonCode.Copy,
        within('COPY TO PROGRAM', ctx),
        'it runs a program on the database server',
        { hint },
      ),
    };
  }
  if (typeof body.filename === 'string') {
    return {
      kind,
      finding: finding(
        ReasonCode.Copy,
        within('COPY TO a file', ctx),
        'it writes a file on the database server',
        { hint },
      ),
    };
  }
  return allowed(kind);
}

/** AccessShareLock, the lock every SELECT takes. */
const ACCESS_SHARE = 1;

/**
 * LOCK TABLE ... IN ACCESS SHARE MODE takes the lock a SELECT takes anyway;
 * pg_dump issues it for every table it dumps. Stronger modes are refused.
 */
function lockRule(body: JsonObject, ctx: RuleContext): RuleResult {
  if (body.mode === ACCESS_SHARE) return allowed('LOCK TABLE');
  return {
    kind: 'LOCK TABLE',
    finding: finding(
      ReasonCode.Utility,
      within('LOCK TABLE in a mode stronger than ACCESS SHARE', ctx),
      'it blocks writers on the server and this connection is read-only',
      { hint: 'LOCK TABLE ... IN ACCESS SHARE MODE (the lock a SELECT takes) is allowed.' },
    ),
  };
}

const DISCARD_KINDS: Readonly<Record<string, string>> = {
  DISCARD_ALL: 'DISCARD ALL',
  DISCARD_PLANS: 'DISCARD PLANS',
  DISCARD_SEQUENCES: 'DISCARD SEQUENCES',
  DISCARD_TEMP: 'DISCARD TEMP',
};

function notifyRule(_body: JsonObject, ctx: RuleContext): RuleResult {
  return {
    kind: 'NOTIFY',
    finding: finding(ReasonCode.Notify, within('NOTIFY', ctx), 'it signals other sessions', {
      hint: 'LISTEN and UNLISTEN are allowed; NOTIFY is not.',
    }),
  };
}

function procedural(kind: string): Rule {
  return (_body, ctx) => ({
    kind,
    finding: finding(
      ReasonCode.Procedural,
      within(kind, ctx),
      'the proxy cannot check what the code inside does',
      {
        hint: 'Run the queries the code would run as plain statements.',
      },
    ),
  });
}

const alterObject = (body: JsonObject): string => `ALTER ${objectWords(body.objtype, 'TABLE')}`;

/** Every statement node type libpg_query (PostgreSQL 18) produces at the top level. */
export const STATEMENT_RULES: ReadonlyMap<string, Rule> = new Map<string, Rule>([
  // Reads and session state that reads need.
  ['SelectStmt', selectRule],
  ['SetOperationStmt', () => allowed('SELECT')],
  ['ExplainStmt', () => allowed('EXPLAIN')],
  ['VariableShowStmt', () => allowed('SHOW')],
  ['TransactionStmt', transactionRule],
  ['VariableSetStmt', variableSetRule],
  ['DeclareCursorStmt', () => allowed('DECLARE CURSOR')],
  ['FetchStmt', (b) => allowed(b.ismove === true ? 'MOVE' : 'FETCH')],
  ['ClosePortalStmt', (b) => allowed(b.portalname === undefined ? 'CLOSE CURSOR ALL' : 'CLOSE CURSOR')],
  ['PrepareStmt', () => allowed('PREPARE')],
  ['ExecuteStmt', () => allowed('EXECUTE')],
  ['DeallocateStmt', (b) => allowed(b.isall === true ? 'DEALLOCATE ALL' : 'DEALLOCATE')],
  ['CopyStmt', copyRule],
  ['ListenStmt', () => allowed('LISTEN')],
  ['UnlistenStmt', () => allowed('UNLISTEN')],
  ['DiscardStmt', (b) => allowed(DISCARD_KINDS[str(b.target) ?? ''] ?? 'DISCARD')],
  ['ConstraintsSetStmt', () => allowed('SET CONSTRAINTS')],

  // Writes.
  ['InsertStmt', write('INSERT')],
  ['UpdateStmt', write('UPDATE')],
  ['DeleteStmt', write('DELETE')],
  ['MergeStmt', write('MERGE')],
  ['TruncateStmt', write('TRUNCATE TABLE')],
  ['CreateTableAsStmt', createTableAsRule],

  // Procedural code, notifications.
  ['DoStmt', procedural('DO')],
  ['CallStmt', procedural('CALL')],
  ['NotifyStmt', notifyRule],

  // Maintenance and server utilities.
  ['VacuumStmt', utility((b) => (b.is_vacuumcmd === true ? 'VACUUM' : 'ANALYZE'))],
  ['ClusterStmt', utility('CLUSTER')],
  ['ReindexStmt', utility('REINDEX')],
  ['CheckPointStmt', utility('CHECKPOINT')],
  ['RefreshMatViewStmt', utility('REFRESH MATERIALIZED VIEW')],
  ['LockStmt', lockRule],
  ['LoadStmt', utility('LOAD')],
  ['AlterSystemStmt', utility('ALTER SYSTEM')],
  ['AlterDatabaseRefreshCollStmt', utility('ALTER DATABASE')],

  // DDL, privileges, roles, comments, labels.
  ['CreateStmt', createTableRule],
  ['CreateForeignTableStmt', ddl('CREATE FOREIGN TABLE')],
  ['CreateSchemaStmt', ddl('CREATE SCHEMA')],
  ['AlterTableStmt', ddl(alterObject)],
  ['ReplicaIdentityStmt', ddl('ALTER TABLE')],
  ['AlterCollationStmt', ddl('ALTER COLLATION')],
  ['AlterDomainStmt', ddl('ALTER DOMAIN')],
  ['GrantStmt', ddl((b) => (b.is_grant === true ? 'GRANT' : 'REVOKE'))],
  ['GrantRoleStmt', ddl((b) => (b.is_grant === true ? 'GRANT ROLE' : 'REVOKE ROLE'))],
  ['AlterDefaultPrivilegesStmt', ddl('ALTER DEFAULT PRIVILEGES')],
  ['CreateTableSpaceStmt', ddl('CREATE TABLESPACE')],
  ['DropTableSpaceStmt', ddl('DROP TABLESPACE')],
  ['AlterTableSpaceOptionsStmt', ddl('ALTER TABLESPACE')],
  ['AlterTableMoveAllStmt', ddl('ALTER TABLE')],
  ['CreateExtensionStmt', ddl('CREATE EXTENSION')],
  ['AlterExtensionStmt', ddl('ALTER EXTENSION')],
  ['AlterExtensionContentsStmt', ddl('ALTER EXTENSION')],
  ['CreateFdwStmt', ddl('CREATE FOREIGN DATA WRAPPER')],
  ['AlterFdwStmt', ddl('ALTER FOREIGN DATA WRAPPER')],
  ['CreateForeignServerStmt', ddl('CREATE SERVER')],
  ['AlterForeignServerStmt', ddl('ALTER SERVER')],
  ['CreateUserMappingStmt', ddl('CREATE USER MAPPING')],
  ['AlterUserMappingStmt', ddl('ALTER USER MAPPING')],
  ['DropUserMappingStmt', ddl('DROP USER MAPPING')],
  ['ImportForeignSchemaStmt', ddl('IMPORT FOREIGN SCHEMA')],
  ['CreatePolicyStmt', ddl('CREATE POLICY')],
  ['AlterPolicyStmt', ddl('ALTER POLICY')],
  ['CreateAmStmt', ddl('CREATE ACCESS METHOD')],
  ['CreateTrigStmt', ddl('CREATE TRIGGER')],
  ['CreateEventTrigStmt', ddl('CREATE EVENT TRIGGER')],
  ['AlterEventTrigStmt', ddl('ALTER EVENT TRIGGER')],
  ['CreatePLangStmt', ddl('CREATE LANGUAGE')],
  [
    'CreateRoleStmt',
    ddl((b) =>
      b.stmt_type === 'ROLESTMT_USER'
        ? 'CREATE USER'
        : b.stmt_type === 'ROLESTMT_GROUP'
          ? 'CREATE GROUP'
          : 'CREATE ROLE',
    ),
  ],
  ['AlterRoleStmt', ddl('ALTER ROLE')],
  ['AlterRoleSetStmt', ddl('ALTER ROLE')],
  ['DropRoleStmt', ddl('DROP ROLE')],
  ['CreateSeqStmt', ddl('CREATE SEQUENCE')],
  ['AlterSeqStmt', ddl('ALTER SEQUENCE')],
  ['DefineStmt', ddl((b) => `CREATE ${objectWords(b.kind, 'TYPE')}`)],
  ['CreateDomainStmt', ddl('CREATE DOMAIN')],
  ['CreateOpClassStmt', ddl('CREATE OPERATOR CLASS')],
  ['CreateOpFamilyStmt', ddl('CREATE OPERATOR FAMILY')],
  ['AlterOpFamilyStmt', ddl('ALTER OPERATOR FAMILY')],
  ['DropStmt', ddl((b) => `DROP ${objectWords(b.removeType, 'OBJECT')}`)],
  ['CommentStmt', ddl('COMMENT')],
  ['SecLabelStmt', ddl('SECURITY LABEL')],
  ['IndexStmt', ddl('CREATE INDEX')],
  ['CreateStatsStmt', ddl('CREATE STATISTICS')],
  ['AlterStatsStmt', ddl('ALTER STATISTICS')],
  ['CreateFunctionStmt', ddl((b) => (b.is_procedure === true ? 'CREATE PROCEDURE' : 'CREATE FUNCTION'))],
  ['AlterFunctionStmt', ddl((b) => `ALTER ${objectWords(b.objtype, 'FUNCTION')}`)],
  ['RenameStmt', ddl((b) => `ALTER ${objectWords(b.renameType, 'OBJECT')}`)],
  ['AlterObjectDependsStmt', ddl((b) => `ALTER ${objectWords(b.objectType, 'OBJECT')}`)],
  ['AlterObjectSchemaStmt', ddl((b) => `ALTER ${objectWords(b.objectType, 'OBJECT')}`)],
  ['AlterOwnerStmt', ddl((b) => `ALTER ${objectWords(b.objectType, 'OBJECT')}`)],
  ['AlterOperatorStmt', ddl('ALTER OPERATOR')],
  ['AlterTypeStmt', ddl('ALTER TYPE')],
  ['RuleStmt', ddl('CREATE RULE')],
  ['CompositeTypeStmt', ddl('CREATE TYPE')],
  ['CreateEnumStmt', ddl('CREATE TYPE')],
  ['CreateRangeStmt', ddl('CREATE TYPE')],
  ['AlterEnumStmt', ddl('ALTER TYPE')],
  ['ViewStmt', ddl('CREATE VIEW')],
  ['CreatedbStmt', ddl('CREATE DATABASE')],
  ['AlterDatabaseStmt', ddl('ALTER DATABASE')],
  ['AlterDatabaseSetStmt', ddl('ALTER DATABASE')],
  ['DropdbStmt', ddl('DROP DATABASE')],
  ['CreateConversionStmt', ddl('CREATE CONVERSION')],
  ['CreateCastStmt', ddl('CREATE CAST')],
  ['CreateTransformStmt', ddl('CREATE TRANSFORM')],
  ['DropOwnedStmt', ddl('DROP OWNED')],
  ['ReassignOwnedStmt', ddl('REASSIGN OWNED')],
  ['AlterTSDictionaryStmt', ddl('ALTER TEXT SEARCH DICTIONARY')],
  ['AlterTSConfigurationStmt', ddl('ALTER TEXT SEARCH CONFIGURATION')],
  ['CreatePublicationStmt', ddl('CREATE PUBLICATION')],
  ['AlterPublicationStmt', ddl('ALTER PUBLICATION')],
  ['CreateSubscriptionStmt', ddl('CREATE SUBSCRIPTION')],
  ['AlterSubscriptionStmt', ddl('ALTER SUBSCRIPTION')],
  ['DropSubscriptionStmt', ddl('DROP SUBSCRIPTION')],
]);

/** Statement node types that only PL/pgSQL produces; refused as unknown like any other. */
export function isStatementTag(tag: string): boolean {
  return tag.endsWith('Stmt') || STATEMENT_RULES.has(tag);
}
