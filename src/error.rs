//! The library's error type: every message names what was wrong and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shape error: {0}")]
    Shape(String),
    /// Bad input; the message names the flag, file or node and what was expected.
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("backend {backend}: {message}")]
    Backend { backend: String, message: String },
    /// A backend declares (`Backend::capabilities`) that it lacks an op or a dtype.
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("backend '{0}' is not in this build: {1}")]
    Unavailable(String, String),
    /// The io error is part of the message, not a `source`, so that `{:#}` chains do not
    /// print it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File { path: path.into(), message: message.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), error: source }
    }

    pub fn backend(backend: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Backend { backend: backend.into(), message: message.to_string() }
    }
}
