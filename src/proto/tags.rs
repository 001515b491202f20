//! Message type bytes, one module per direction. The same byte means different messages in the two
//! directions (`S` is Sync from a client and ParameterStatus from a server, `E` Execute and ErrorResponse,
//! `C` Close and CommandComplete, `D` Describe and DataRow), so a tag is always named by the side that sends it.

/// Messages a client (frontend) sends to pgveil, and pgveil to a backend.
pub mod frontend {
    /// Simple query.
    pub const QUERY: u8 = b'Q';
    /// Parse (extended protocol).
    pub const PARSE: u8 = b'P';
    /// Bind.
    pub const BIND: u8 = b'B';
    /// Describe.
    pub const DESCRIBE: u8 = b'D';
    /// Execute.
    pub const EXECUTE: u8 = b'E';
    /// Close (a statement or portal).
    pub const CLOSE: u8 = b'C';
    /// Flush.
    pub const FLUSH: u8 = b'H';
    /// Sync.
    pub const SYNC: u8 = b'S';
    /// Terminate.
    pub const TERMINATE: u8 = b'X';
    /// Fast-path function call.
    pub const FUNCTION_CALL: u8 = b'F';
    /// Password / SASL response.
    pub const PASSWORD: u8 = b'p';
    /// CopyData (both directions use `d`).
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone (both directions use `c`).
    pub const COPY_DONE: u8 = b'c';
    /// CopyFail.
    pub const COPY_FAIL: u8 = b'f';
}

/// Messages a backend (server) sends to pgveil, and pgveil to a client.
pub mod backend {
    /// ReadyForQuery (its byte is a [`crate::proto::TxnStatus`]).
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// ParameterStatus.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// CommandComplete.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// EmptyQueryResponse.
    pub const EMPTY_QUERY: u8 = b'I';
    /// PortalSuspended.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// ParseComplete.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// BindComplete.
    pub const BIND_COMPLETE: u8 = b'2';
    /// CloseComplete.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// Authentication request.
    pub const AUTHENTICATION: u8 = b'R';
    /// BackendKeyData.
    pub const BACKEND_KEY_DATA: u8 = b'K';
}
