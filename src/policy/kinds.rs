//! Statement kinds a role may be allowed to run, as named in policy files.

use std::collections::HashSet;

/// A kind of statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    /// SELECT, VALUES, TABLE.
    Select,
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// MERGE.
    Merge,
    /// COPY ... TO STDOUT.
    CopyTo,
    /// COPY ... FROM STDIN.
    CopyFrom,
    /// EXPLAIN (incl. ANALYZE).
    Explain,
    /// SET / RESET of ordinary settings (protected settings are refused regardless).
    Set,
    /// SHOW.
    Show,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...
    Transaction,
    /// DECLARE, FETCH, MOVE, CLOSE.
    Cursor,
    /// PREPARE, EXECUTE, DEALLOCATE.
    Prepare,
    /// LISTEN, NOTIFY, UNLISTEN.
    Listen,
    /// DISCARD.
    Discard,
    /// LOCK.
    Lock,
    /// VACUUM, ANALYZE, CLUSTER, REINDEX, CHECKPOINT, REFRESH MATERIALIZED VIEW.
    Maintenance,
    /// CREATE/ALTER/DROP/GRANT/COMMENT/... and SELECT INTO.
    Ddl,
    /// DO blocks.
    Do,
    /// CALL.
    Call,
    /// SET ROLE, SET SESSION AUTHORIZATION.
    SetRole,
}

impl StatementKind {
    /// Names accepted in policy files (plus `read` = the masked default and `all`).
    pub const ALL_NAMES: &'static [&'static str] = &[
        "select",
        "insert",
        "update",
        "delete",
        "merge",
        "copy_to",
        "copy_from",
        "explain",
        "set",
        "show",
        "transaction",
        "cursor",
        "prepare",
        "listen",
        "discard",
        "lock",
        "maintenance",
        "ddl",
        "do",
        "call",
        "set_role",
        "read",
        "write",
        "all",
    ];

    /// Parses a policy name into the kinds it stands for.
    pub fn parse(name: &str) -> Option<Vec<StatementKind>> {
        use StatementKind::*;
        Some(match name {
            "select" => vec![Select],
            "insert" => vec![Insert],
            "update" => vec![Update],
            "delete" => vec![Delete],
            "merge" => vec![Merge],
            "copy_to" => vec![CopyTo],
            "copy_from" => vec![CopyFrom],
            "explain" => vec![Explain],
            "set" => vec![Set],
            "show" => vec![Show],
            "transaction" => vec![Transaction],
            "cursor" => vec![Cursor],
            "prepare" => vec![Prepare],
            "listen" => vec![Listen],
            "discard" => vec![Discard],
            "lock" => vec![Lock],
            "maintenance" => vec![Maintenance],
            "ddl" => vec![Ddl],
            "do" => vec![Do],
            "call" => vec![Call],
            "set_role" => vec![SetRole],
            "read" => StatementKind::masked_default().into_iter().collect(),
            "write" => vec![Insert, Update, Delete, Merge, CopyFrom],
            "all" => vec![
                Select,
                Insert,
                Update,
                Delete,
                Merge,
                CopyTo,
                CopyFrom,
                Explain,
                Set,
                Show,
                Transaction,
                Cursor,
                Prepare,
                Listen,
                Discard,
                Lock,
                Maintenance,
                Ddl,
                Do,
                Call,
                SetRole,
            ],
            _ => return None,
        })
    }

    /// What masked roles may run by default (DESIGN.md): reads, SHOW, SET, transactions, cursors,
    /// PREPARE/EXECUTE, COPY TO STDOUT, EXPLAIN, DISCARD.
    pub fn masked_default() -> HashSet<StatementKind> {
        use StatementKind::*;
        [
            Select,
            CopyTo,
            Explain,
            Set,
            Show,
            Transaction,
            Cursor,
            Prepare,
            Discard,
        ]
        .into_iter()
        .collect()
    }

    /// The policy name of this kind.
    pub fn name(self) -> &'static str {
        use StatementKind::*;
        match self {
            Select => "select",
            Insert => "insert",
            Update => "update",
            Delete => "delete",
            Merge => "merge",
            CopyTo => "copy_to",
            CopyFrom => "copy_from",
            Explain => "explain",
            Set => "set",
            Show => "show",
            Transaction => "transaction",
            Cursor => "cursor",
            Prepare => "prepare",
            Listen => "listen",
            Discard => "discard",
            Lock => "lock",
            Maintenance => "maintenance",
            Ddl => "ddl",
            Do => "do",
            Call => "call",
            SetRole => "set_role",
        }
    }
}
