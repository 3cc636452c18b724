//! The one error type of the crate.

use std::panic::Location;
use std::path::PathBuf;

/// Everything that can go wrong in zmlx. Every message is one readable line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// MLX (the C++ library) rejected an operation: MLX's message, and where the failing call was made
    /// (the zmlx or mlx-rs source line, as mlx-rs's `Exception` records it).
    #[error("MLX: {msg}{}", at(location))]
    Mlx {
        /// MLX's message.
        msg: String,
        /// The caller of the failing operation.
        location: Option<&'static Location<'static>>,
    },
    /// A computation gave an unusable result (all-NaN logits, a sampler that returned nothing).
    #[error("numerical: {0}")]
    Numerical(String),
    /// An array's data could not be read as the asked type (dtype or layout).
    #[error("array conversion: {0}")]
    Conversion(String),
    /// MLX broke its own contract (an operation that reported success returned no result).
    #[error("internal: {0}")]
    Internal(String),
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
    /// Reading or writing a file failed. The OS error is part of the message, not a separate source,
    /// so that it is printed once.
    #[error("{}: {}", path.display(), io_message(err))]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        err: std::io::Error,
    },
    /// The tokenizer could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An OS error in words: a missing file "does not exist"; others as the OS says them.
fn io_message(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        "does not exist".to_string()
    } else {
        e.to_string()
    }
}

fn at(location: &Option<&'static Location<'static>>) -> String {
    location.map_or(String::new(), |l| format!(" (at {l})"))
}

impl Error {
    /// An MLX failure with the caller's location.
    #[track_caller]
    pub(crate) fn mlx(msg: impl Into<String>) -> Self {
        Error::Mlx {
            msg: msg.into(),
            location: Some(Location::caller()),
        }
    }
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
    /// A failed file operation on `path`.
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err,
        }
    }
}

impl From<mlx_rs::error::Exception> for Error {
    fn from(e: mlx_rs::error::Exception) -> Self {
        Error::Mlx {
            msg: e.what().to_string(),
            location: Some(e.location()),
        }
    }
}

impl From<mlx_rs::error::IoError> for Error {
    #[track_caller]
    fn from(e: mlx_rs::error::IoError) -> Self {
        Error::mlx(e.to_string())
    }
}
