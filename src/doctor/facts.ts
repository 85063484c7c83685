/**
 * What the doctor learns from the server, as plain data: `inspect.ts` gathers
 * it, `grade.ts` turns it into findings. Keeping the two apart lets the grading
 * be tested without a server.
 */
import type { SslMode } from '../upstream/connect.js';

export interface ServerFacts {
  /** server_version_num, e.g. 180001. */
  versionNum: number;
  /** server_version, e.g. "18.1". */
  version: string;
}

export interface ConnectionFacts {
  /** host:port or the socket path, as the proxy logs it. */
  target: string;
  unixSocket: boolean;
  /** A Unix socket or a loopback address: the traffic never leaves the machine. */
  local: boolean;
  sslmode: SslMode;
  /** A CA was given (sslrootcert), so the chain is checked whatever the sslmode. */
  sslrootcert: boolean;
  /** The TLS the server reports for this connection (pg_stat_ssl); undefined: none. */
  tls: { version: string; cipher: string } | undefined;
  authMode: 'passthrough' | 'proxy';
}

export interface RoleFacts {
  /** The upstream role (current_user). */
  name: string;
  /** The proxy-managed user it stands for, if any. */
  proxyUser?: string | undefined;
  database: string;
  superuser: boolean;
  createrole: boolean;
  createdb: boolean;
  replication: boolean;
  bypassrls: boolean;
}

/** A role the checked role is a member of (directly or not). */
export interface MembershipFact {
  role: string;
  /** Its privileges apply without SET ROLE (INHERIT along the whole chain). */
  inherited: boolean;
  /** The checked role may SET ROLE to it (PostgreSQL 16's SET option; always, before 16). */
  canSet: boolean;
  superuser: boolean;
  createrole: boolean;
  createdb: boolean;
  replication: boolean;
  bypassrls: boolean;
}

export interface TableGrant {
  /** schema.name, quoted as needed. */
  name: string;
  /** pg_class.relkind: r, p, v, m or f. */
  kind: string;
  /** INSERT, UPDATE (table or any column), DELETE, TRUNCATE, TRIGGER, MAINTAIN (17+). */
  privileges: string[];
}

export interface OwnedObject {
  /** table, view, sequence, function, procedure, schema, database, large object, ... */
  kind: string;
  name: string;
}

export interface ExtensionFact {
  name: string;
  version: string;
  /** The role can run one of its functions or use one of its foreign-data wrappers or servers. */
  usable: boolean;
}

export interface LanguageFact {
  name: string;
  trusted: boolean;
  /** Functions in this language the role may execute. */
  executableFunctions: number;
}

export interface SecurityDefinerFact {
  /** schema.name(arguments). */
  name: string;
  owner: string;
  ownerSuperuser: boolean;
  /** Owned by the role itself or a role whose privileges it has: no escalation. */
  ownedBySelf: boolean;
  /** Has SET search_path: without it a caller's search_path can hijack the function. */
  setsSearchPath: boolean;
}

export interface SettingOverride {
  /** Where it applies: ALTER ROLE ... IN DATABASE, ALTER ROLE, ALTER DATABASE or all. */
  scope: string;
  name: string;
  value: string;
}

export interface PinFacts {
  /** SHOW default_transaction_read_only on a session opened as the proxy opens them. */
  defaultReadOnly: string;
  standardConformingStrings: string;
  /** SHOW transaction_read_only inside a fresh transaction. */
  transactionReadOnly: string;
  /** The SQLSTATE a rolled-back CREATE TEMP TABLE got; undefined: it succeeded. */
  writeSqlState: string | undefined;
  writeError: string | undefined;
}

/** A check whose query failed: reported, and the other checks go on. */
export interface CheckError {
  check: string;
  message: string;
}

export interface DoctorFacts {
  server: ServerFacts;
  connection: ConnectionFacts;
  role: RoleFacts;
  memberships: MembershipFact[];
  tableGrants: TableGrant[];
  /** Sequences with USAGE or UPDATE: schema.name and which. */
  sequenceGrants: Array<{ name: string; privileges: string[] }>;
  /** Non-system schemas where the role may CREATE. */
  schemaCreate: string[];
  /** CREATE on the current database (new schemas). */
  databaseCreate: boolean;
  owned: OwnedObject[];
  /** Large objects the role may write without owning them (lomacl UPDATE). */
  largeObjectsGranted: number;
  /** lo_compat_privileges = on: every large object is writable by every role. */
  loCompatPrivileges: boolean;
  extensions: ExtensionFact[];
  languages: LanguageFact[];
  securityDefiner: SecurityDefinerFact[];
  settingOverrides: SettingOverride[];
  pin: PinFacts | undefined;
  errors: CheckError[];
}

/** The facts the per-object checks fill in, before any has run (nothing found yet). */
export type CheckedFacts = Omit<DoctorFacts, 'server' | 'connection' | 'role' | 'pin' | 'errors'>;

export function nothingFoundYet(): CheckedFacts {
  return {
    memberships: [],
    tableGrants: [],
    sequenceGrants: [],
    schemaCreate: [],
    databaseCreate: false,
    owned: [],
    largeObjectsGranted: 0,
    loCompatPrivileges: false,
    extensions: [],
    languages: [],
    securityDefiner: [],
    settingOverrides: [],
  };
}
