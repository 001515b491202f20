//! The statement firewall's fixed knowledge: functions, relations and settings a masked role may never use,
//! whatever its statement kinds. Names are PostgreSQL's (lower case, as stored in the catalog).

/// Functions that execute SQL strings, read files or large objects, signal backends or expose other
/// sessions' statements (and so PII literals or pgveil's key material). Denied unless allow-listed.
const DENIED_FUNCTIONS: &[&str] = &[
    // SQL-string executors and whole-relation dumpers.
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    // Files.
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_import_system_collations",
    // Large objects.
    "lo_import",
    "lo_export",
    "lo_open",
    "lo_close",
    "lo_get",
    "lo_put",
    "lo_from_bytea",
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lo_truncate",
    "lo_truncate64",
    "lo_lseek",
    "lo_lseek64",
    "lo_tell",
    "lo_tell64",
    "loread",
    "lowrite",
    // Backend signalling and server control.
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_signal_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_log_backend_memory_contexts",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    // Other sessions' activity, and this session's own (rewritten) statement text.
    "pg_stat_get_activity",
    // Other tenants' databases (sizes; the catalogs listing them are filtered, see `per_database_filter`).
    "pg_database_size",
    "pg_tablespace_size",
    "pg_stat_get_backend_activity",
    "pg_stat_get_backend_userid",
    "current_query",
    "pg_prepared_statement",
    "pg_cursor",
    "pg_get_backend_memory_contexts",
    "pg_stat_statements",
    "pg_stat_statements_info",
    "pg_stat_statements_reset",
    // Replication and logical decoding.
    "pg_logical_emit_message",
    "pg_replication_origin_create",
];

/// Function name prefixes denied the same way.
const DENIED_FUNCTION_PREFIXES: &[&str] = &[
    "dblink",
    "postgres_fdw",
    "pg_ls_",
    "pg_stat_get_db_",
    "pg_logical_slot_",
    "pg_create_",
    "pg_drop_replication",
    "pg_replication_",
    "lo_",
];

/// Relations denied for masked roles in any schema (statistics hold raw sample values; activity views hold
/// other sessions' SQL text; prepared statements and cursors show this session's rewritten text).
const DENIED_RELATIONS: &[&str] = &[
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext_data",
    "pg_stat_activity",
    "pg_stat_statements",
    "pg_stat_statements_info",
    "pg_largeobject",
    "pg_largeobject_metadata",
    "pg_prepared_statements",
    "pg_cursors",
    "pg_authid",
    "pg_shadow",
    "pg_user_mappings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_file_settings",
    "pg_stat_replication",
    "pg_replication_slots",
    "pg_backend_memory_contexts",
];

/// Whether a function is denied (before allow-listing).
pub fn function_denied(name: &str) -> bool {
    DENIED_FUNCTIONS.contains(&name) || DENIED_FUNCTION_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// For cluster-wide catalogs with a row per database (a tenant's database shares its cluster with other
/// tenants'), the condition that keeps only the current database's rows; masked roles read them through it.
pub fn per_database_filter(schema: &str, name: &str) -> Option<&'static str> {
    if schema != "pg_catalog" {
        return None;
    }
    Some(match name {
        "pg_database" | "pg_stat_database" | "pg_stat_database_conflicts" => {
            "datname = pg_catalog.current_database()"
        }
        "pg_db_role_setting" => {
            "setdatabase = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())"
        }
        "pg_shdescription" | "pg_shseclabel" => {
            "(classoid <> 'pg_catalog.pg_database'::pg_catalog.regclass OR objoid = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()))"
        }
        _ => return None,
    })
}

/// Whether a relation (by name, any schema) is denied.
pub fn relation_denied(name: &str) -> bool {
    DENIED_RELATIONS.contains(&name)
}

/// Why setting `name` to `value` (when known) is refused, if it is ([`super::settings`]), on a database of
/// encoding `server_encoding` (when known).
pub fn setting_refusal(
    name: &str,
    value: Option<&str>,
    server_encoding: Option<&str>,
) -> Option<String> {
    super::settings::refusal(name, value, server_encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert!(function_denied("query_to_xml"));
        assert!(function_denied("dblink_exec"));
        assert!(function_denied("lo_import"));
        assert!(!function_denied("lower"));
        assert!(relation_denied("pg_stats"));
        assert!(!relation_denied("pg_class"));
        assert!(function_denied("pg_database_size"));
        assert!(function_denied("pg_stat_get_db_xact_commit"));
        assert!(per_database_filter("pg_catalog", "pg_database").is_some());
        assert!(per_database_filter("public", "pg_database").is_none());
        assert!(per_database_filter("pg_catalog", "pg_class").is_none());
        assert!(setting_refusal("Search_Path", None, Some("UTF8")).is_some());
        assert!(setting_refusal("client_encoding", Some("SJIS"), Some("UTF8")).is_some());
        assert!(setting_refusal("client_encoding", Some("utf-8"), Some("UTF8")).is_none());
        assert!(setting_refusal("client_encoding", Some("LATIN1"), Some("UTF8")).is_some());
        assert!(setting_refusal("client_encoding", Some("Shift_JIS"), Some("UTF8")).is_some());
        assert!(setting_refusal("client_encoding", Some("WIN-950"), Some("UTF8")).is_some());
        assert!(setting_refusal("application_name", Some("x"), Some("UTF8")).is_none());
    }
}
