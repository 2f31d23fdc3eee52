//! The library's error type: every message names what was wrong and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shape error: {0}")]
    Shape(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("backend {backend}: {message}")]
    Backend { backend: String, message: String },
    #[error("backend '{0}' is not in this build: {1}")]
    Unavailable(String, String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File { path: path.into(), message: message.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn backend(backend: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Backend { backend: backend.into(), message: message.to_string() }
    }
}
