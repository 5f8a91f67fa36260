//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can stop a benchmark before or after it runs. Request failures during a run are
/// not errors of this type: they are counted in the report (`errors` by kind).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A URL or URL template that the generator cannot use.
    #[error("invalid URL `{url}`: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A `-H` argument that is not `Name: value`, or a header name or value HTTP does not allow.
    #[error("invalid header `{0}`: expected `Name: value` with a valid name and value")]
    Header(String),
    /// An option value or a combination of options that makes no sense.
    #[error("invalid arguments: {0}")]
    Args(String),
    /// A host name that did not resolve.
    #[error("cannot resolve `{host}`: {source}")]
    Resolve {
        /// `host:port` as in the URL.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// `--login` failed: connection, status or an answer without a `token`.
    #[error("login failed: {0}")]
    Login(String),
    /// A file could not be read or written.
    #[error("cannot access `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON report could not be parsed or written.
    #[error("bad JSON report `{path}`: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A worker thread of the generator could not be started.
    #[error("cannot start a generator thread: {0}")]
    Runtime(String),
    /// Drawing a chart failed.
    #[error("cannot draw chart `{chart}`: {message}")]
    Chart {
        /// Which chart.
        chart: &'static str,
        /// The drawing library's message.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
