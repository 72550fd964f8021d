//! The benchmark's one error type. A failed run says which step failed and
//! why; a missed performance target is not an error (it is reported).
//! Bad command-line arguments never get here: clap reports them.

/// Why a benchmark step failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A socket or file operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent bytes that are not RESP2, or closed the connection.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered a command with an error reply.
    #[error("{command} failed: {message}")]
    Server { command: String, message: String },
    /// The `redis` crate failed (client A/B only).
    #[error("redis crate: {0}")]
    Redis(#[from] redis::RedisError),
    /// The server answered, but not what the benchmark expects (a sanity
    /// check failed, e.g. an uncontended acquire was refused).
    #[error("unexpected reply to {command}: {reply}")]
    Unexpected { command: String, reply: String },
    /// A bounded wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The environment is not as needed (module not built, server missing).
    #[error("{0}")]
    Setup(String),
    /// Writing the JSON report failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A load task panicked or was cancelled.
    #[error("load task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Result with [`BenchError`].
pub type Result<T> = std::result::Result<T, BenchError>;

impl BenchError {
    /// An [`BenchError::Unexpected`] for `command`, with the reply shown
    /// (cut at 200 characters).
    pub fn unexpected(command: &str, reply: &impl std::fmt::Debug) -> BenchError {
        let mut reply = format!("{reply:?}");
        if let Some((cut, _)) = reply.char_indices().nth(200) {
            reply.truncate(cut);
            reply.push('…');
        }
        BenchError::Unexpected {
            command: command.to_string(),
            reply,
        }
    }
}
