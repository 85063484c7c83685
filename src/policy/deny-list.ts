/**
 * The built-in deny list: functions with effects a read-only transaction still
 * allows, or that reach outside the database. Matched on the function's own name
 * (lower-cased) whatever schema qualifies it, since extensions such as dblink
 * live in any schema. Each entry says why, for the refusal message.
 */

const CONTROL = 'it signals or controls other server processes';
const WAL = 'it writes WAL or changes the backup state of the server';
const REPLICATION = 'it changes replication state on the server';
const STATS = 'it resets server-wide statistics';
const ADVISORY = 'advisory locks are visible to, and block, other sessions';
const LARGE_OBJECTS = 'large-object functions can create, change or export large objects and server files';
const FILES = 'it reads or writes files on the database server';
const REMOTE = 'it opens or controls connections to other servers';
const SQL_TEXT = 'it runs SQL given as a string, which the proxy cannot check';
const XID = 'it assigns a transaction ID, which writes to the server';
const SEQUENCE = 'it advances or sets a sequence, which is a write';
const CATALOG = 'it writes to the system catalogs';
const STORAGE = 'it changes server storage or shared buffers';
const LOG = 'it writes to the server log';

/** Exact names. */
export const DENIED_FUNCTIONS: ReadonlyMap<string, string> = new Map<string, string>([
  // Session and server control.
  ['pg_terminate_backend', CONTROL],
  ['pg_cancel_backend', CONTROL],
  ['pg_signal_backend', CONTROL],
  ['pg_reload_conf', CONTROL],
  ['pg_rotate_logfile', CONTROL],
  ['pg_rotate_logfile_old', CONTROL],
  ['pg_promote', CONTROL],
  ['pg_wal_replay_pause', CONTROL],
  ['pg_wal_replay_resume', CONTROL],
  ['pg_xlog_replay_pause', CONTROL],
  ['pg_xlog_replay_resume', CONTROL],
  ['pg_log_backend_memory_contexts', LOG],
  // WAL and backups.
  ['pg_switch_wal', WAL],
  ['pg_switch_xlog', WAL],
  ['pg_create_restore_point', WAL],
  ['pg_backup_start', WAL],
  ['pg_backup_stop', WAL],
  ['pg_start_backup', WAL],
  ['pg_stop_backup', WAL],
  ['pg_log_standby_snapshot', WAL],
  // Replication slots and origins.
  ['pg_create_physical_replication_slot', REPLICATION],
  ['pg_create_logical_replication_slot', REPLICATION],
  ['pg_drop_replication_slot', REPLICATION],
  ['pg_copy_physical_replication_slot', REPLICATION],
  ['pg_copy_logical_replication_slot', REPLICATION],
  ['pg_replication_slot_advance', REPLICATION],
  ['pg_sync_replication_slots', REPLICATION],
  ['pg_logical_emit_message', REPLICATION],
  // Statistics resets, core and common extensions.
  ['pg_stat_statements_reset', STATS],
  ['pg_stat_kcache_reset', STATS],
  ['pg_qualstats_reset', STATS],
  ['pg_wait_sampling_reset_profile', STATS],
  ['pg_stat_monitor_reset', STATS],
  // Large objects (the lo_ prefix below covers the rest for calls).
  ...[
    'loread',
    'lowrite',
    'lo_open',
    'lo_close',
    'lo_creat',
    'lo_create',
    'lo_import',
    'lo_export',
    'lo_unlink',
    'lo_lseek',
    'lo_lseek64',
    'lo_tell',
    'lo_tell64',
    'lo_truncate',
    'lo_truncate64',
    'lo_from_bytea',
    'lo_get',
    'lo_put',
  ].map((n): [string, string] => [n, LARGE_OBJECTS]),
  // Advisory locks (also covered by prefixes for calls).
  ...[
    'pg_advisory_lock',
    'pg_advisory_lock_shared',
    'pg_advisory_unlock',
    'pg_advisory_unlock_shared',
    'pg_advisory_unlock_all',
    'pg_advisory_xact_lock',
    'pg_advisory_xact_lock_shared',
    'pg_try_advisory_lock',
    'pg_try_advisory_lock_shared',
    'pg_try_advisory_xact_lock',
    'pg_try_advisory_xact_lock_shared',
  ].map((n): [string, string] => [n, ADVISORY]),
  ['pg_stat_reset', STATS],
  ['pg_stat_reset_shared', STATS],
  ['pg_stat_reset_single_table_counters', STATS],
  ['pg_stat_reset_single_function_counters', STATS],
  ['pg_stat_reset_slru', STATS],
  ['pg_stat_reset_replication_slot', STATS],
  ['pg_stat_reset_subscription_stats', STATS],
  ['pg_stat_reset_backend_stats', STATS],
  ['pg_notify', 'it signals other sessions'],
  ['dblink', REMOTE],
  ['dblink_exec', REMOTE],
  ['dblink_connect', REMOTE],
  ['dblink_connect_u', REMOTE],
  ['dblink_send_query', REMOTE],
  ['dblink_open', REMOTE],
  ['dblink_fetch', REMOTE],
  ['pg_ls_dir', FILES],
  // Server files (adminpack's pg_file_* are covered by a prefix).
  ['pg_read_file', FILES],
  ['pg_read_file_old', FILES],
  ['pg_read_binary_file', FILES],
  ['pg_stat_file', FILES],
  ['pg_current_logfile', FILES],
  ['pg_logdir_ls', FILES],
  ['pg_logfile_rotate', FILES],
  // Functions that run a query given as text.
  ['query_to_xml', SQL_TEXT],
  ['query_to_xmlschema', SQL_TEXT],
  ['query_to_xml_and_xmlschema', SQL_TEXT],
  ['cursor_to_xml', SQL_TEXT],
  ['cursor_to_xmlschema', SQL_TEXT],
  ['ts_stat', SQL_TEXT],
  ['pg_background_launch', SQL_TEXT],
  // Transaction IDs and sequences. (txid_current_if_assigned and
  // pg_current_xact_id_if_assigned assign nothing and stay allowed; so do
  // currval/lastval, and pg_export_snapshot, which pg_dump -j needs.)
  ['txid_current', XID],
  ['pg_current_xact_id', XID],
  ['nextval', SEQUENCE],
  ['setval', SEQUENCE],
  // Catalog writes.
  ['pg_import_system_collations', CATALOG],
  ['pg_nextoid', CATALOG],
  ['pg_clear_attribute_stats', CATALOG],
  ['pg_clear_relation_stats', CATALOG],
  ['pg_restore_attribute_stats', CATALOG],
  ['pg_restore_relation_stats', CATALOG],
  ['pg_set_attribute_stats', CATALOG],
  ['pg_set_relation_stats', CATALOG],
  // Storage and buffers (pg_prewarm, pg_buffercache, pg_surgery, pg_visibility).
  ['pg_prewarm', STORAGE],
  ['autoprewarm_start_worker', STORAGE],
  ['autoprewarm_dump_now', STORAGE],
  ['pg_buffercache_evict', STORAGE],
  ['pg_buffercache_evict_relation', STORAGE],
  ['pg_buffercache_evict_all', STORAGE],
  ['heap_force_kill', STORAGE],
  ['heap_force_freeze', STORAGE],
  ['pg_truncate_visibility_map', STORAGE],
]);

/** Name prefixes: whole families. */
export const DENIED_PREFIXES: ReadonlyArray<readonly [string, string]> = [
  ['pg_replication_origin_', REPLICATION],
  ['pg_logical_slot_', REPLICATION],
  ['pg_stat_reset', STATS],
  ['pg_advisory_', ADVISORY],
  ['pg_try_advisory_', ADVISORY],
  ['lo_', LARGE_OBJECTS],
  ['pg_ls_', FILES],
  ['pg_file_', FILES],
  ['dblink', REMOTE],
  ['postgres_fdw_disconnect', REMOTE],
  ['binary_upgrade_', CATALOG],
];

/**
 * Why a built-in deny-list function is refused, or undefined when it is not on
 * the list. Prefixes apply to call syntax only (`lo_whatever(...)`); for names
 * reached by attribute notation (`t.lo_bound`, usually a column) only exact
 * names count, so ordinary columns that share a prefix stay readable.
 */
export function builtinDenyReason(name: string, usePrefixes = true): string | undefined {
  const exact = DENIED_FUNCTIONS.get(name);
  if (exact !== undefined) return exact;
  if (!usePrefixes) return undefined;
  for (const [prefix, reason] of DENIED_PREFIXES) if (name.startsWith(prefix)) return reason;
  return undefined;
}
