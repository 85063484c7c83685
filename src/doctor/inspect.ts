/**
 * The doctor's questions to the server, as catalog queries: read-only, over a
 * session pinned read-only, and each check on its own, so one that fails (a
 * catalog a managed service hides, say) is reported and the others go on.
 * Privileges are asked with has_*_privilege and pg_has_role, which count grants
 * to PUBLIC, to roles whose privileges the role inherits, and ownership.
 */
import type pg from 'pg';
import {
  nothingFoundYet,
  type CheckError,
  type ConnectionFacts,
  type DoctorFacts,
  type ExtensionFact,
  type LanguageFact,
  type MembershipFact,
  type OwnedObject,
  type PinFacts,
  type RoleFacts,
  type SecurityDefinerFact,
  type ServerFacts,
  type SettingOverride,
  type TableGrant,
} from './facts.js';

/** Schemas of the system itself: pg_catalog, information_schema, TOAST and temporary schemas. */
function nonSystem(alias: string): string {
  return `${alias}.nspname NOT IN ('pg_catalog', 'information_schema') AND ${alias}.nspname !~ '^pg_(toast|temp_)'`;
}

function qualified(schema: string, name: string): string {
  return `quote_ident(${schema}.nspname) || '.' || quote_ident(${name})`;
}

const ON = new Set(['on', 'true', 'yes', '1']);

export interface InspectContext {
  connection: Omit<ConnectionFacts, 'tls'>;
  proxyUser?: string | undefined;
}

export async function inspect(client: pg.Client, ctx: InspectContext): Promise<DoctorFacts> {
  const errors: CheckError[] = [];
  const check = async <T>(name: string, fallback: T, run: () => Promise<T>): Promise<T> => {
    try {
      return await run();
    } catch (err) {
      errors.push({ check: name, message: (err as Error).message });
      return fallback;
    }
  };

  // The pin first, on the session as it was opened.
  const pin = await check<PinFacts | undefined>('pin', undefined, () => checkPin(client));
  const { server, role } = await basics(client, ctx.proxyUser);
  const tls = await check('tls', undefined, async () => {
    const r = await client.query<{ ssl: boolean; version: string | null; cipher: string | null }>(
      'SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()',
    );
    const row = r.rows[0];
    return row?.ssl ? { version: row.version ?? '?', cipher: row.cipher ?? '?' } : undefined;
  });
  const major = Math.floor(server.versionNum / 10000);
  const facts: DoctorFacts = {
    server,
    connection: { ...ctx.connection, tls },
    role,
    ...nothingFoundYet(),
    pin,
    errors,
  };
  facts.extensions = await check('extensions', [], () => extensions(client));
  facts.languages = await check('languages', [], () => languages(client));
  facts.settingOverrides = await check('settings', [], () => settingOverrides(client));
  // A superuser passes every privilege check: the per-object ones would list everything.
  if (!role.superuser) {
    facts.memberships = await check('memberships', [], () => memberships(client, major));
    facts.tableGrants = await check('tables', [], () => tableGrants(client, major));
    facts.sequenceGrants = await check('sequences', [], () => sequenceGrants(client));
    facts.schemaCreate = await check('schemas', [], async () => {
      const r = await client.query<{ name: string }>(
        `SELECT quote_ident(n.nspname) AS name FROM pg_namespace n
          WHERE ${nonSystem('n')} AND has_schema_privilege(n.oid, 'CREATE') ORDER BY 1`,
      );
      return r.rows.map((row) => row.name);
    });
    facts.databaseCreate = await check('database', false, async () => {
      const r = await client.query<{ create: boolean }>(
        "SELECT has_database_privilege(current_database(), 'CREATE') AS create",
      );
      return r.rows[0]?.create ?? false;
    });
    facts.owned = await check('ownership', [], () => owned(client));
    const lo = await check('large-objects', { compat: false, granted: 0 }, () => largeObjects(client));
    facts.loCompatPrivileges = lo.compat;
    facts.largeObjectsGranted = lo.granted;
    facts.securityDefiner = await check('security-definer', [], () => securityDefiner(client));
  } else {
    facts.loCompatPrivileges = await check(
      'large-objects',
      false,
      async () => (await largeObjects(client)).compat,
    );
  }
  return facts;
}

async function basics(
  client: pg.Client,
  proxyUser: string | undefined,
): Promise<{ server: ServerFacts; role: RoleFacts }> {
  const r = await client.query<{
    num: string;
    version: string;
    role: string;
    database: string;
    rolsuper: boolean | null;
    rolcreaterole: boolean | null;
    rolcreatedb: boolean | null;
    rolreplication: boolean | null;
    rolbypassrls: boolean | null;
  }>(
    `SELECT current_setting('server_version_num') AS num, current_setting('server_version') AS version,
            current_user AS role, current_database() AS database,
            r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls
       FROM (SELECT 1) AS one LEFT JOIN pg_roles r ON r.rolname = current_user`,
  );
  const row = r.rows[0]!;
  return {
    server: { versionNum: Number(row.num), version: row.version },
    role: {
      name: row.role,
      proxyUser,
      database: row.database,
      superuser: row.rolsuper ?? false,
      createrole: row.rolcreaterole ?? false,
      createdb: row.rolcreatedb ?? false,
      replication: row.rolreplication ?? false,
      bypassrls: row.rolbypassrls ?? false,
    },
  };
}

/**
 * The live check: the session reports the pinned settings, a new transaction is
 * read-only, and the server refuses a write in it. The write is rolled back
 * whatever happens.
 */
export async function checkPin(client: pg.Client): Promise<PinFacts> {
  const show = async (name: string): Promise<string> => {
    const r = await client.query<Record<string, string>>(`SHOW ${name}`);
    return Object.values(r.rows[0] ?? {})[0] ?? '';
  };
  const defaultReadOnly = await show('default_transaction_read_only');
  const standardConformingStrings = await show('standard_conforming_strings');
  await client.query('BEGIN');
  let transactionReadOnly = '';
  let writeSqlState: string | undefined;
  let writeError: string | undefined;
  try {
    transactionReadOnly = await show('transaction_read_only');
    try {
      await client.query('CREATE TEMPORARY TABLE pg_readonly_proxy_doctor_probe (x int)');
    } catch (err) {
      writeSqlState = (err as { code?: string }).code ?? 'unknown';
      writeError = (err as Error).message;
    }
  } finally {
    await client.query('ROLLBACK');
  }
  return { defaultReadOnly, standardConformingStrings, transactionReadOnly, writeSqlState, writeError };
}

async function memberships(client: pg.Client, major: number): Promise<MembershipFact[]> {
  // PostgreSQL 16 split membership into INHERIT and SET options; before, a member may always SET ROLE.
  const canSet = major >= 16 ? "pg_has_role(r.oid, 'SET')" : 'true';
  const r = await client.query<{
    role: string;
    inherited: boolean;
    can_set: boolean;
    rolsuper: boolean;
    rolcreaterole: boolean;
    rolcreatedb: boolean;
    rolreplication: boolean;
    rolbypassrls: boolean;
  }>(
    `SELECT r.rolname AS role, pg_has_role(r.oid, 'USAGE') AS inherited, ${canSet} AS can_set,
            r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls
       FROM pg_roles r
      WHERE r.rolname <> current_user AND r.rolname <> 'pg_database_owner' AND pg_has_role(r.oid, 'MEMBER')
      ORDER BY 1`,
  );
  return r.rows.map((row) => ({
    role: row.role,
    inherited: row.inherited,
    canSet: row.can_set,
    superuser: row.rolsuper,
    createrole: row.rolcreaterole,
    createdb: row.rolcreatedb,
    replication: row.rolreplication,
    bypassrls: row.rolbypassrls,
  }));
}

async function tableGrants(client: pg.Client, major: number): Promise<TableGrant[]> {
  const maintain =
    major >= 17 ? `, CASE WHEN has_table_privilege(c.oid, 'MAINTAIN') THEN 'MAINTAIN' END` : '';
  const r = await client.query<TableGrant>(
    `SELECT * FROM (
       SELECT ${qualified('n', 'c.relname')} AS name, c.relkind::text AS kind,
              array_remove(ARRAY[
                CASE WHEN has_any_column_privilege(c.oid, 'INSERT') THEN 'INSERT' END,
                CASE WHEN has_any_column_privilege(c.oid, 'UPDATE') THEN 'UPDATE' END,
                CASE WHEN has_table_privilege(c.oid, 'DELETE') THEN 'DELETE' END,
                CASE WHEN has_table_privilege(c.oid, 'TRUNCATE') THEN 'TRUNCATE' END,
                CASE WHEN has_table_privilege(c.oid, 'TRIGGER') THEN 'TRIGGER' END${maintain}
              ]::text[], NULL) AS privileges
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND ${nonSystem('n')}
     ) t WHERE cardinality(privileges) > 0 ORDER BY name`,
  );
  return r.rows;
}

async function sequenceGrants(client: pg.Client): Promise<Array<{ name: string; privileges: string[] }>> {
  const r = await client.query<{ name: string; privileges: string[] }>(
    `SELECT * FROM (
       SELECT ${qualified('n', 'c.relname')} AS name,
              array_remove(ARRAY[
                CASE WHEN has_sequence_privilege(c.oid, 'USAGE') THEN 'USAGE' END,
                CASE WHEN has_sequence_privilege(c.oid, 'UPDATE') THEN 'UPDATE' END
              ]::text[], NULL) AS privileges
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'S' AND ${nonSystem('n')}
     ) s WHERE cardinality(privileges) > 0 ORDER BY name`,
  );
  return r.rows;
}

/** What the role owns, or a role whose privileges it inherits owns (owners may ALTER, DROP and GRANT). */
async function owned(client: pg.Client): Promise<OwnedObject[]> {
  const r = await client.query<OwnedObject>(
    `SELECT kind, name FROM (
       SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table' ELSE 'sequence' END AS kind,
              ${qualified('n', 'c.relname')} AS name, c.relowner AS owner
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND ${nonSystem('n')}
       UNION ALL
       SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END,
              ${qualified('n', 'p.proname')} || '(' || pg_get_function_identity_arguments(p.oid) || ')', p.proowner
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE ${nonSystem('n')}
       UNION ALL
       SELECT 'type', format_type(t.oid, NULL), t.typowner
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE t.typtype IN ('d', 'e', 'r') AND ${nonSystem('n')}
       UNION ALL
       SELECT 'schema', quote_ident(n.nspname), n.nspowner FROM pg_namespace n WHERE ${nonSystem('n')}
       UNION ALL
       SELECT 'database', quote_ident(d.datname), d.datdba FROM pg_database d
       UNION ALL
       SELECT 'foreign server', quote_ident(s.srvname), s.srvowner FROM pg_foreign_server s
       UNION ALL
       SELECT 'publication', quote_ident(p.pubname), p.pubowner FROM pg_publication p
       UNION ALL
       SELECT 'large object', l.oid::text, l.lomowner FROM pg_largeobject_metadata l
     ) o WHERE pg_has_role(o.owner, 'USAGE') ORDER BY kind, name`,
  );
  return r.rows;
}

async function largeObjects(client: pg.Client): Promise<{ compat: boolean; granted: number }> {
  const r = await client.query<{ compat: boolean; granted: number }>(
    `SELECT current_setting('lo_compat_privileges') = 'on' AS compat,
            (SELECT count(*) FROM pg_largeobject_metadata m
              WHERE NOT pg_has_role(m.lomowner, 'USAGE')
                AND EXISTS (SELECT 1 FROM aclexplode(m.lomacl) a
                             WHERE a.privilege_type = 'UPDATE'
                               AND (a.grantee = 0 OR pg_has_role(a.grantee, 'USAGE'))))::int AS granted`,
  );
  return r.rows[0] ?? { compat: false, granted: 0 };
}

/**
 * Installed extensions and whether the role can use them: a foreign-data
 * wrapper extension by USAGE on its wrapper or one of its servers; any other by
 * EXECUTE on one of its functions (handlers and validators, which SQL cannot
 * call, aside).
 */
async function extensions(client: pg.Client): Promise<ExtensionFact[]> {
  const r = await client.query<{ name: string; version: string; functions: boolean; fdw: boolean }>(
    `SELECT e.extname AS name, e.extversion AS version,
            EXISTS (SELECT 1 FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
                     WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_extension'::regclass
                       AND d.refobjid = e.oid AND d.deptype = 'e'
                       AND p.prorettype NOT IN ('fdw_handler'::regtype, 'language_handler'::regtype,
                                                'index_am_handler'::regtype, 'table_am_handler'::regtype)
                       AND NOT EXISTS (SELECT 1 FROM pg_foreign_data_wrapper w WHERE w.fdwvalidator = p.oid)
                       AND has_function_privilege(p.oid, 'EXECUTE')
                       AND has_schema_privilege(p.pronamespace, 'USAGE')) AS functions,
            EXISTS (SELECT 1 FROM pg_depend d JOIN pg_foreign_data_wrapper w ON w.oid = d.objid
                     WHERE d.classid = 'pg_foreign_data_wrapper'::regclass
                       AND d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid AND d.deptype = 'e'
                       AND (has_foreign_data_wrapper_privilege(w.oid, 'USAGE')
                            OR EXISTS (SELECT 1 FROM pg_foreign_server s
                                        WHERE s.srvfdw = w.oid AND has_server_privilege(s.oid, 'USAGE')))) AS fdw
       FROM pg_extension e ORDER BY 1`,
  );
  return r.rows.map((row) => ({
    name: row.name,
    version: row.version,
    usable: row.name.endsWith('_fdw') ? row.fdw : row.functions || row.fdw,
  }));
}

async function languages(client: pg.Client): Promise<LanguageFact[]> {
  const r = await client.query<{ name: string; trusted: boolean; executable: number }>(
    `SELECT l.lanname AS name, l.lanpltrusted AS trusted,
            (SELECT count(*) FROM pg_proc p
              WHERE p.prolang = l.oid AND has_function_privilege(p.oid, 'EXECUTE')
                AND has_schema_privilege(p.pronamespace, 'USAGE'))::int AS executable
       FROM pg_language l WHERE l.lanispl ORDER BY 1`,
  );
  return r.rows.map((row) => ({ name: row.name, trusted: row.trusted, executableFunctions: row.executable }));
}

async function securityDefiner(client: pg.Client): Promise<SecurityDefinerFact[]> {
  const r = await client.query<{
    name: string;
    owner: string;
    owner_superuser: boolean;
    owned_by_self: boolean;
    sets_search_path: boolean;
  }>(
    `SELECT ${qualified('n', 'p.proname')} || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS name,
            o.rolname AS owner, o.rolsuper AS owner_superuser, pg_has_role(p.proowner, 'USAGE') AS owned_by_self,
            EXISTS (SELECT 1 FROM unnest(p.proconfig) AS c WHERE c LIKE 'search\\_path=%') AS sets_search_path
       FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_roles o ON o.oid = p.proowner
      WHERE p.prosecdef AND ${nonSystem('n')}
        AND has_function_privilege(p.oid, 'EXECUTE') AND has_schema_privilege(n.oid, 'USAGE')
      ORDER BY 1`,
  );
  return r.rows.map((row) => ({
    name: row.name,
    owner: row.owner,
    ownerSuperuser: row.owner_superuser,
    ownedBySelf: row.owned_by_self,
    setsSearchPath: row.sets_search_path,
  }));
}

/** ALTER ROLE / ALTER DATABASE settings that apply to this login and disagree with the pin. */
async function settingOverrides(client: pg.Client): Promise<SettingOverride[]> {
  const r = await client.query<SettingOverride>(
    `SELECT CASE WHEN s.setrole <> 0 AND s.setdatabase <> 0
                   THEN 'ALTER ROLE ' || quote_ident(r.rolname) || ' IN DATABASE ' || quote_ident(d.datname)
                 WHEN s.setrole <> 0 THEN 'ALTER ROLE ' || quote_ident(r.rolname)
                 WHEN s.setdatabase <> 0 THEN 'ALTER DATABASE ' || quote_ident(d.datname)
                 ELSE 'ALTER ROLE ALL' END AS scope,
            lower(split_part(c, '=', 1)) AS name, substr(c, strpos(c, '=') + 1) AS value
       FROM pg_db_role_setting s
       LEFT JOIN pg_roles r ON r.oid = s.setrole
       LEFT JOIN pg_database d ON d.oid = s.setdatabase
       CROSS JOIN LATERAL unnest(s.setconfig) AS c
      WHERE (s.setrole = 0 OR r.rolname = current_user)
        AND (s.setdatabase = 0 OR d.datname = current_database())
        AND lower(split_part(c, '=', 1)) IN ('default_transaction_read_only', 'standard_conforming_strings')
      ORDER BY 1, 2`,
  );
  return r.rows.filter((o) => !ON.has(o.value.toLowerCase()));
}
