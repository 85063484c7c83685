/**
 * Grading: the facts the doctor gathered, turned into findings with a severity,
 * an explanation and advice. Pure: the same facts always give the same findings.
 *
 * The severities answer one question: if a client got past the proxy (or a
 * function, view or trigger did something the proxy cannot see), what could
 * this role do? critical: anything, or run programs on the server; high: write
 * data, change who may do what, or reach outside the database; medium: change
 * things at the edges (create objects, advance sequences, disturb other
 * sessions); low: read more than it might need; info: worth knowing.
 */
import type {
  DoctorFacts,
  ExtensionFact,
  LanguageFact,
  MembershipFact,
  PinFacts,
  SecurityDefinerFact,
} from './facts.js';
import { sortFindings, type Finding, type Severity } from './severity.js';

/** How many objects a finding's detail names before "and N more". */
export const LIST_LIMIT = 10;
/** How many objects a finding carries in `objects` (the JSON output). */
export const OBJECTS_LIMIT = 100;

/** The oldest major the proxy accepts upstream. */
export const OLDEST_SUPPORTED_MAJOR = 14;

/** PostgreSQL's published end-of-life dates (the final minor release), by major. */
export const END_OF_LIFE: Readonly<Record<number, string>> = {
  12: '2024-11-21',
  13: '2025-11-13',
  14: '2026-11-12',
  15: '2027-11-11',
  16: '2028-11-09',
  17: '2029-11-08',
  18: '2030-11-14',
};

export function majorOf(versionNum: number): number {
  // 10 and later: 100003 → 10; before: 90602 → 9 (9.6 is past caring about).
  return Math.floor(versionNum / 10000);
}

/** "a, b, c and 4 more" */
export function listSome(items: readonly string[], limit = LIST_LIMIT): string {
  if (items.length <= limit) return items.join(', ');
  return `${items.slice(0, limit).join(', ')} and ${items.length - limit} more`;
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

function objects(items: readonly string[]): string[] {
  return items.slice(0, OBJECTS_LIMIT);
}

export function gradeServer(server: DoctorFacts['server'], now: Date): Finding[] {
  const major = majorOf(server.versionNum);
  if (major < OLDEST_SUPPORTED_MAJOR) {
    return [
      {
        id: 'server-unsupported',
        severity: 'critical',
        title: `PostgreSQL ${server.version} is too old for the proxy`,
        detail: `pg-readonly-proxy needs PostgreSQL ${OLDEST_SUPPORTED_MAJOR} or newer upstream: older servers do not report default_transaction_read_only, so the proxy cannot watch the pin, and it refuses every session.`,
        advice: `Upgrade the server to PostgreSQL ${OLDEST_SUPPORTED_MAJOR} or newer (a supported major).`,
      },
    ];
  }
  const eol = END_OF_LIFE[major];
  if (eol && now.toISOString().slice(0, 10) > eol) {
    return [
      {
        id: 'server-eol',
        severity: 'info',
        title: `PostgreSQL ${major} is past its end of life (${eol})`,
        detail: `PostgreSQL ${server.version} gets no more security fixes from the PostgreSQL project.`,
        advice: 'Plan an upgrade to a supported major.',
      },
    ];
  }
  return [];
}

export function gradeConnection(c: DoctorFacts['connection']): Finding[] {
  if (c.unixSocket) return [];
  if (!c.tls) {
    if (c.local) return [];
    return [
      {
        id: 'tls-off',
        severity: 'medium',
        title: `The connection to ${c.target} is not encrypted`,
        detail: `With sslmode ${c.sslmode} the connection went over TCP without TLS: passwords (unless SCRAM) and every row the clients read cross the network in clear, and a man in the middle can change them.`,
        advice:
          'Turn on ssl on the server and set upstream.sslmode to verify-full with sslrootcert (the CA bundle, e.g. the RDS global bundle).',
      },
    ];
  }
  const verified = c.sslmode === 'verify-ca' || c.sslmode === 'verify-full' || c.sslrootcert;
  if (verified || c.local) return [];
  const managed = c.authMode === 'proxy';
  return [
    {
      id: 'tls-unverified',
      severity: managed ? 'medium' : 'low',
      title: `TLS to ${c.target} is not verified (sslmode ${c.sslmode})`,
      detail: managed
        ? "The server's certificate is not checked, and the proxy logs in upstream with passwords it holds: a man in the middle could pose as the server and collect them."
        : "The server's certificate is not checked: a man in the middle could pose as the server.",
      advice:
        'Set upstream.sslmode to verify-full with sslrootcert (the CA bundle), and upstream.require_auth: [scram-sha-256].',
    },
  ];
}

export function gradeRole(r: DoctorFacts['role'], serverMajor: number): Finding[] {
  const out: Finding[] = [];
  const q = quoteIdent(r.name);
  if (r.superuser) {
    out.push({
      id: 'role-superuser',
      severity: 'critical',
      title: `The role "${r.name}" is a superuser`,
      detail:
        "A superuser passes every permission check: it can read and write every table, run programs on the server (COPY ... TO PROGRAM), read and write the server's files and load code, and a read-only transaction does not stop all of it (COPY TO PROGRAM, lo_create, pg_reload_conf and more still run). The proxy refuses these in SQL, but what it cannot see into (a function, a trigger, a view over a volatile function, an extension such as dblink) runs with full power, and anyone who reaches the server without the proxy owns it. The per-object checks were skipped: every one would pass.",
      advice: `Give the proxy a role made for it: CREATE ROLE agent_ro LOGIN; GRANT CONNECT ON DATABASE ... ; GRANT USAGE ON SCHEMA ... ; GRANT SELECT ON ... TO agent_ro; (or ALTER ROLE ${q} NOSUPERUSER).`,
    });
    // Its other attributes add nothing to that.
    return out;
  }
  if (r.createrole) {
    out.push({
      id: 'role-createrole',
      severity: 'high',
      title: `The role "${r.name}" has CREATEROLE`,
      detail:
        serverMajor < 16
          ? `Before PostgreSQL 16, CREATEROLE can create roles and grant membership in any role that is not a superuser, pg_execute_server_program and pg_write_all_data included: it is nearly a superuser.`
          : 'CREATEROLE can create roles and grant them the privileges it holds with ADMIN OPTION.',
      advice: `ALTER ROLE ${q} NOCREATEROLE;`,
    });
  }
  if (r.replication) {
    out.push({
      id: 'role-replication',
      severity: 'high',
      title: `The role "${r.name}" has REPLICATION`,
      detail:
        'A replication connection streams the whole cluster (every database, every table) and can create replication slots, which hold WAL on the server until it fills the disk. The proxy refuses replication connections; the server does not.',
      advice: `ALTER ROLE ${q} NOREPLICATION;`,
    });
  }
  if (r.bypassrls) {
    out.push({
      id: 'role-bypassrls',
      severity: 'medium',
      title: `The role "${r.name}" bypasses row-level security`,
      detail: 'Row-level security policies, if any limit what this role may read, do not apply to it.',
      advice: `ALTER ROLE ${q} NOBYPASSRLS;`,
    });
  }
  if (r.createdb) {
    out.push({
      id: 'role-createdb',
      severity: 'medium',
      title: `The role "${r.name}" has CREATEDB`,
      detail: 'It can create databases (and owns what it creates), filling the disk or copying templates.',
      advice: `ALTER ROLE ${q} NOCREATEDB;`,
    });
  }
  return out;
}

/** Predefined roles: what membership gives, and how bad that is. */
export const PREDEFINED_ROLES: Readonly<Record<string, { severity: Severity; why: string }>> = {
  pg_execute_server_program: {
    severity: 'critical',
    why: 'runs programs on the server as its operating-system user (COPY ... TO/FROM PROGRAM)',
  },
  pg_write_server_files: {
    severity: 'critical',
    why: "writes any file the server's operating-system user can (COPY ... TO 'file'), the server's own configuration included",
  },
  pg_read_server_files: {
    severity: 'high',
    why: "reads any file the server's operating-system user can (COPY ... FROM 'file', pg_read_file): keys, configuration, other databases' files",
  },
  pg_write_all_data: {
    severity: 'high',
    why: 'has INSERT, UPDATE and DELETE on every table, view and sequence, whatever their grants',
  },
  pg_create_subscription: {
    severity: 'high',
    why: 'can create subscriptions (with CREATE on the database): connections to other servers that write into this one',
  },
  pg_signal_backend: {
    severity: 'medium',
    why: "can cancel and terminate other sessions (not superusers')",
  },
  pg_maintain: {
    severity: 'medium',
    why: 'can VACUUM, ANALYZE, CLUSTER, REINDEX, REFRESH MATERIALIZED VIEW and LOCK every table',
  },
  pg_read_all_data: {
    severity: 'low',
    why: 'has SELECT on every table, view and sequence, whatever their grants',
  },
  pg_monitor: {
    severity: 'low',
    why: "sees every session's query text and statistics (query text may hold secrets)",
  },
  pg_read_all_stats: {
    severity: 'low',
    why: "sees every session's query text and statistics (query text may hold secrets)",
  },
  pg_stat_scan_tables: { severity: 'low', why: 'can run monitoring functions that lock tables' },
  pg_checkpoint: { severity: 'low', why: 'can run CHECKPOINT' },
  pg_signal_autovacuum_worker: { severity: 'low', why: 'can cancel and terminate autovacuum workers' },
  pg_read_all_settings: {
    severity: 'info',
    why: 'reads every configuration setting, the superuser-only ones included',
  },
  pg_use_reserved_connections: {
    severity: 'info',
    why: 'may use the connections reserved by reserved_connections',
  },
};

export function gradeMemberships(role: string, memberships: readonly MembershipFact[]): Finding[] {
  const out: Finding[] = [];
  const how = (m: MembershipFact): string =>
    m.inherited
      ? 'its privileges apply at once'
      : m.canSet
        ? 'its privileges apply after SET ROLE'
        : 'it cannot SET ROLE to it and does not inherit its privileges';
  for (const m of memberships) {
    const predefined = PREDEFINED_ROLES[m.role];
    const revoke = `REVOKE ${quoteIdent(m.role)} FROM ${quoteIdent(role)};`;
    if (predefined) {
      // Without INHERIT and without SET, membership gives nothing usable.
      const usable = m.inherited || m.canSet;
      out.push({
        id: `member-${m.role}`,
        severity: usable ? predefined.severity : 'info',
        title: `The role is a member of ${m.role}`,
        detail: `A member of ${m.role} ${predefined.why}; ${how(m)}.`,
        advice: revoke,
      });
      continue;
    }
    if (m.role.startsWith('pg_')) {
      out.push({
        id: `member-${m.role}`,
        severity: 'info',
        title: `The role is a member of ${m.role}`,
        detail: `${m.role} is a predefined role this version of the doctor does not know; ${how(m)}.`,
        advice: `Check what ${m.role} allows in the PostgreSQL documentation (Predefined Roles).`,
      });
      continue;
    }
    const powers = [
      m.superuser && 'SUPERUSER',
      m.createrole && 'CREATEROLE',
      m.replication && 'REPLICATION',
      m.bypassrls && 'BYPASSRLS',
      m.createdb && 'CREATEDB',
    ].filter((p): p is string => !!p);
    if (powers.length === 0) continue;
    // Role attributes are never inherited: they take SET ROLE.
    const severity: Severity = !m.canSet
      ? 'low'
      : m.superuser
        ? 'critical'
        : m.createrole || m.replication
          ? 'high'
          : 'medium';
    out.push({
      id: m.superuser ? 'member-superuser-role' : 'member-powerful-role',
      severity,
      title: `The role can become "${m.role}" (${powers.join(', ')})`,
      detail: m.canSet
        ? `As a member of "${m.role}" it may SET ROLE ${quoteIdent(m.role)} and then has ${powers.join(', ')}. The proxy refuses SET ROLE; the server does not.`
        : `It is a member of "${m.role}" (${powers.join(', ')}) without the SET option: role attributes are not inherited, so this gives it nothing today.`,
      advice: revoke,
    });
  }
  return out;
}

const KIND_NAMES: Readonly<Record<string, string>> = {
  r: 'table',
  p: 'partitioned table',
  v: 'view',
  m: 'materialized view',
  f: 'foreign table',
};

const WRITE_PRIVILEGES = ['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'TRIGGER'];

export function gradeGrants(f: DoctorFacts): Finding[] {
  const out: Finding[] = [];
  const writable = f.tableGrants.filter((t) => t.privileges.some((p) => WRITE_PRIVILEGES.includes(p)));
  if (writable.length > 0) {
    const names = writable.map(
      (t) =>
        `${t.name} (${t.kind === 'r' ? '' : `${KIND_NAMES[t.kind] ?? t.kind}: `}${t.privileges.filter((p) => WRITE_PRIVILEGES.includes(p)).join(', ')})`,
    );
    out.push({
      id: 'table-write',
      severity: 'high',
      title: `The role can write ${plural(writable.length, 'table')}`,
      detail: `It has INSERT, UPDATE, DELETE, TRUNCATE or TRIGGER (directly, through PUBLIC or a role it inherits from, or as owner) on ${listSome(names)}. default_transaction_read_only stops these writes in sessions through the proxy; a session without it (a direct login, dblink, a scheduled job) would not.`,
      advice:
        'Revoke what the agent does not need: REVOKE INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER ON ALL TABLES IN SCHEMA ... FROM ...; (and from PUBLIC, and from roles it inherits from).',
      objects: objects(writable.map((t) => t.name)),
    });
  }
  const maintain = f.tableGrants.filter(
    (t) => t.privileges.includes('MAINTAIN') && !t.privileges.some((p) => WRITE_PRIVILEGES.includes(p)),
  );
  if (maintain.length > 0) {
    out.push({
      id: 'table-maintain',
      severity: 'medium',
      title: `The role has MAINTAIN on ${plural(maintain.length, 'table')}`,
      detail: `MAINTAIN allows VACUUM, ANALYZE, CLUSTER, REINDEX, REFRESH MATERIALIZED VIEW and LOCK TABLE on ${listSome(maintain.map((t) => t.name))}.`,
      advice: 'REVOKE MAINTAIN ON ... FROM ...;',
      objects: objects(maintain.map((t) => t.name)),
    });
  }
  if (f.sequenceGrants.length > 0) {
    out.push({
      id: 'sequence-write',
      severity: 'medium',
      title: `The role can advance or set ${plural(f.sequenceGrants.length, 'sequence')}`,
      detail: `USAGE allows nextval(), UPDATE also setval(), on ${listSome(f.sequenceGrants.map((s) => `${s.name} (${s.privileges.join(', ')})`))}.`,
      advice: 'REVOKE USAGE, UPDATE ON ALL SEQUENCES IN SCHEMA ... FROM ...; (keep SELECT to read them)',
      objects: objects(f.sequenceGrants.map((s) => s.name)),
    });
  }
  if (f.schemaCreate.length > 0) {
    out.push({
      id: 'schema-create',
      severity: 'medium',
      title: `The role can create objects in ${plural(f.schemaCreate.length, 'schema')}`,
      detail: `CREATE on ${listSome(f.schemaCreate)}: it could add tables, and functions or operators that other roles' queries pick up through their search_path.${f.schemaCreate.includes('public') ? ' (Before PostgreSQL 15, every role has CREATE on public unless it was revoked.)' : ''}`,
      advice: `REVOKE CREATE ON SCHEMA ${f.schemaCreate.slice(0, 3).join(', ')}${f.schemaCreate.length > 3 ? ', ...' : ''} FROM PUBLIC, ...;`,
      objects: objects(f.schemaCreate),
    });
  }
  if (f.databaseCreate) {
    out.push({
      id: 'database-create',
      severity: 'medium',
      title: `The role can create schemas in database "${f.role.database}"`,
      detail:
        'CREATE on the database allows new schemas (which it would own), and with PostgreSQL 16 publications.',
      advice: `REVOKE CREATE ON DATABASE ${quoteIdent(f.role.database)} FROM ...;`,
    });
  }
  if (f.owned.length > 0) {
    const byKind = new Map<string, number>();
    for (const o of f.owned) byKind.set(o.kind, (byKind.get(o.kind) ?? 0) + 1);
    const counts = [...byKind].map(([k, n]) => plural(n, k)).join(', ');
    out.push({
      id: 'owns-objects',
      severity: 'high',
      title: `The role owns ${plural(f.owned.length, 'object')} (${counts})`,
      detail: `An owner holds every privilege on what it owns and can ALTER, DROP and GRANT it, whatever is revoked: ${listSome(f.owned.map((o) => `${o.kind} ${o.name}`))}. The proxy refuses DDL, but the server-side protection is what remains if the proxy is bypassed.`,
      advice:
        'Have another role own the objects (ALTER ... OWNER TO app_owner, or REASSIGN OWNED BY ... TO app_owner) and grant this role SELECT.',
      objects: objects(f.owned.map((o) => `${o.kind} ${o.name}`)),
    });
  }
  if (f.loCompatPrivileges) {
    out.push({
      id: 'lo-compat-privileges',
      severity: 'high',
      title: 'lo_compat_privileges is on',
      detail:
        'With lo_compat_privileges every role can read, write and unlink every large object, whatever their grants.',
      advice: 'ALTER SYSTEM SET lo_compat_privileges = off; SELECT pg_reload_conf();',
    });
  }
  if (f.largeObjectsGranted > 0) {
    out.push({
      id: 'largeobject-write',
      severity: 'medium',
      title: `The role can write ${plural(f.largeObjectsGranted, 'large object')} it does not own`,
      detail: 'UPDATE on a large object allows lo_put, lowrite and lo_truncate on it.',
      advice: 'REVOKE UPDATE ON LARGE OBJECT ... FROM ...;',
    });
  }
  return out;
}

/** Extensions that reach outside the database, or outside the read-only session. */
export const RISKY_EXTENSIONS: Readonly<Record<string, string>> = {
  dblink:
    'opens connections to any server, this one included: a new session there is not read-only, so dblink_exec can write',
  postgres_fdw:
    'connects to other PostgreSQL servers (this one included) through foreign servers and user mappings',
  file_fdw: "reads the server's files and the output of programs it runs, as foreign tables",
  adminpack: "writes, renames and removes the server's files",
  pg_background: 'runs SQL in a background worker: a session of its own, not read-only',
  pg_cron: "schedules SQL that the cron worker runs later, outside the proxy's read-only session",
  pg_net: 'sends HTTP requests from the server',
  http: 'sends HTTP requests from the server',
  aws_s3: 'exports to and imports from Amazon S3',
  aws_lambda: 'invokes AWS Lambda functions',
  log_fdw: "reads the server's log files",
};

export function isRiskyExtension(name: string): boolean {
  return name in RISKY_EXTENSIONS || name.endsWith('_fdw');
}

export function gradeExtensions(extensions: readonly ExtensionFact[]): Finding[] {
  return extensions
    .filter((e) => isRiskyExtension(e.name))
    .map((e) => {
      const why =
        RISKY_EXTENSIONS[e.name] ?? 'is a foreign-data wrapper: it reaches data outside this database';
      return {
        id: `extension-${e.name}`,
        severity: e.usable ? 'high' : 'low',
        title: `Extension ${e.name} ${e.version} is installed${e.usable ? ' and the role can use it' : ''}`,
        detail: `${e.name} ${why}. ${e.usable ? 'The role can execute its functions or use its wrappers or servers.' : 'The role cannot use it now; a GRANT would change that.'} The proxy refuses the extension's functions it knows of; views and functions calling them are out of its sight.`,
        advice: e.usable
          ? `DROP EXTENSION ${quoteIdent(e.name)}; if nothing needs it, else REVOKE EXECUTE / USAGE on its functions, wrappers and servers FROM PUBLIC, ...;`
          : `DROP EXTENSION ${quoteIdent(e.name)}; if nothing needs it.`,
      } satisfies Finding;
    });
}

export function gradeLanguages(languages: readonly LanguageFact[], superuser: boolean): Finding[] {
  return languages
    .filter((l) => !l.trusted)
    .map((l) => {
      const usable = superuser || l.executableFunctions > 0;
      return {
        id: `untrusted-language-${l.name}`,
        severity: usable ? 'high' : 'medium',
        title: `Untrusted language ${l.name} is installed`,
        detail: `Functions in an untrusted language run arbitrary code as the server's operating-system user, outside the database's permission checks. ${
          superuser
            ? 'A superuser can create such functions.'
            : l.executableFunctions > 0
              ? `The role may execute ${plural(l.executableFunctions, 'function')} written in it.`
              : 'The role may execute no function written in it now.'
        }`,
        advice: `DROP EXTENSION ${quoteIdent(l.name)}; (or DROP LANGUAGE) if nothing needs it, else REVOKE EXECUTE on its functions FROM PUBLIC, ...;`,
      } satisfies Finding;
    });
}

export function gradeSecurityDefiner(functions: readonly SecurityDefinerFact[]): Finding[] {
  const out: Finding[] = [];
  const describe = (fn: SecurityDefinerFact): string =>
    `${fn.name} owned by ${fn.owner}${fn.setsSearchPath ? '' : ', no SET search_path'}`;
  const bySuper = functions.filter((fn) => !fn.ownedBySelf && fn.ownerSuperuser);
  const byOther = functions.filter((fn) => !fn.ownedBySelf && !fn.ownerSuperuser);
  const own = functions.filter((fn) => fn.ownedBySelf);
  const common =
    "A SECURITY DEFINER function runs with its owner's privileges; the proxy sees the call, not what the function does inside, and default_transaction_read_only is the backstop against its writes. One without SET search_path can be hijacked by objects in the caller's search_path.";
  if (bySuper.length > 0) {
    out.push({
      id: 'security-definer-superuser',
      severity: 'high',
      title: `The role can execute ${plural(bySuper.length, 'SECURITY DEFINER function')} owned by a superuser`,
      detail: `${common} These run as a superuser: ${listSome(bySuper.map(describe))}.`,
      advice:
        'REVOKE EXECUTE ON FUNCTION ... FROM PUBLIC, ...; for those the agent does not need; give the others SET search_path = pg_catalog, pg_temp and an owner that is not a superuser.',
      objects: objects(bySuper.map((fn) => fn.name)),
    });
  }
  if (byOther.length > 0) {
    out.push({
      id: 'security-definer',
      severity: 'medium',
      title: `The role can execute ${plural(byOther.length, 'SECURITY DEFINER function')} owned by other roles`,
      detail: `${common} ${listSome(byOther.map(describe))}.`,
      advice:
        'REVOKE EXECUTE ON FUNCTION ... FROM PUBLIC, ...; for those the agent does not need; give the others SET search_path = pg_catalog, pg_temp.',
      objects: objects(byOther.map((fn) => fn.name)),
    });
  }
  if (own.length > 0) {
    out.push({
      id: 'security-definer-own',
      severity: 'low',
      title: `The role owns ${plural(own.length, 'SECURITY DEFINER function')}`,
      detail: `They run with its own privileges (no escalation for it), but others who may call them get its privileges: ${listSome(own.map(describe))}.`,
      advice: 'Check who may execute them (\\df+ in psql).',
      objects: objects(own.map((fn) => fn.name)),
    });
  }
  return out;
}

export function gradeSettingOverrides(overrides: DoctorFacts['settingOverrides']): Finding[] {
  if (overrides.length === 0) return [];
  return [
    {
      id: 'setting-override',
      severity: 'info',
      title: `${plural(overrides.length, 'role or database setting')} would undo the pin without the proxy`,
      detail: `${listSome(overrides.map((o) => `${o.scope}: ${o.name} = ${o.value}`))}. The proxy's startup parameters outrank these, so sessions through it are unaffected; direct logins get them.`,
      advice: `If nothing needs them: ${overrides.map((o) => `${o.scope} RESET ${o.name};`).join(' ')}`,
    },
  ];
}

/** The live check: a session opened as the proxy opens them refuses a write. */
export function gradePin(pin: PinFacts | undefined): Finding[] {
  if (!pin) return [];
  const problems: string[] = [];
  if (pin.defaultReadOnly !== 'on') problems.push(`default_transaction_read_only is ${pin.defaultReadOnly}`);
  if (pin.transactionReadOnly !== 'on')
    problems.push(`a new transaction has transaction_read_only ${pin.transactionReadOnly}`);
  if (pin.standardConformingStrings !== 'on')
    problems.push(`standard_conforming_strings is ${pin.standardConformingStrings}`);
  if (pin.writeSqlState === undefined) problems.push('CREATE TEMP TABLE succeeded (it was rolled back)');
  else if (pin.writeSqlState !== '25006')
    problems.push(
      `CREATE TEMP TABLE failed with ${pin.writeSqlState} (${pin.writeError ?? 'no message'}), not 25006 read_only_sql_transaction`,
    );
  if (problems.length === 0) {
    return [
      {
        id: 'pin-holds',
        severity: 'info',
        title: 'The read-only pin holds',
        detail:
          'A session opened with default_transaction_read_only=on and standard_conforming_strings=on, as the proxy opens them, reports both on, and the server refused a write in it (25006 read_only_sql_transaction).',
        advice: 'Nothing to do.',
      },
    ];
  }
  return [
    {
      id: 'pin-failed',
      severity: 'critical',
      title: 'The read-only pin did not hold',
      detail: `In a session opened as the proxy opens them, ${problems.join('; ')}. The proxy ends a session whose server does not report default_transaction_read_only = on (so clients could not work); one that reports it and still writes leaves the proxy without its server-side backstop. A pooler in between that drops startup parameters, or an extension resetting settings, does this.`,
      advice:
        'Point the proxy at PostgreSQL itself (or a pooler in session mode that passes startup parameters on), and check that no extension or hook resets default_transaction_read_only.',
    },
  ];
}

export function gradeErrors(errors: DoctorFacts['errors']): Finding[] {
  return errors.map((e) => ({
    id: `check-failed-${e.check}`,
    severity: 'low',
    title: `The ${e.check} check could not run`,
    detail: e.message,
    advice:
      "Run the doctor as a role that can read the system catalogs, or check this by hand; a finding that was not checked is not a finding that isn't there.",
  }));
}

/** Every finding for these facts, most severe first. */
export function grade(f: DoctorFacts, now: Date = new Date()): Finding[] {
  return sortFindings([
    ...gradeServer(f.server, now),
    ...gradeConnection(f.connection),
    ...gradePin(f.pin),
    ...gradeRole(f.role, majorOf(f.server.versionNum)),
    ...gradeMemberships(f.role.name, f.memberships),
    ...gradeGrants(f),
    ...gradeExtensions(f.extensions),
    ...gradeLanguages(f.languages, f.role.superuser),
    ...gradeSecurityDefiner(f.securityDefiner),
    ...gradeSettingOverrides(f.settingOverrides),
    ...gradeErrors(f.errors),
  ]);
}

/** An identifier quoted when it needs to be (for the SQL in advice; keywords aside, as quote_ident). */
export function quoteIdent(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}
