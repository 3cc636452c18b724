//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong in zmlx. Every message is one readable line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// MLX (the C++ library) rejected an operation; the text is MLX's message.
    #[error("MLX: {0}")]
    Mlx(String),
    /// A caller passed something that cannot work (shape, dtype, mode, option).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A model configuration (`config.json` or a preset) is unusable.
    #[error("config: {0}")]
    Config(String),
    /// A checkpoint file or tensor is missing or malformed.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The tokenizer could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<mlx_rs::error::Exception> for Error {
    fn from(e: mlx_rs::error::Exception) -> Self {
        Error::Mlx(e.what().to_string())
    }
}

impl From<mlx_rs::error::IoError> for Error {
    fn from(e: mlx_rs::error::IoError) -> Self {
        Error::Mlx(e.to_string())
    }
}
