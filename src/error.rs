//! One error type for the whole crate: every failure a user can cause (bad input, an adapter
//! without a feature, a buffer over a device limit) arrives here as a message that names the
//! thing, never as a panic.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// No adapter matched, or the device could not be created.
    NoAdapter(String),
    /// The GPU reported an error (validation, out of memory, lost device) while running `kernel`.
    Device { kernel: String, message: String },
    /// A tensor's shape does not fit the op it was given to.
    Shape(String),
    /// A request exceeds what the device can do (buffer size, workgroup count, missing feature).
    Limit(String),
    /// A malformed input file or argument.
    Invalid(String),
    Io { path: String, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoAdapter(m) => write!(f, "no usable GPU adapter: {m}"),
            Error::Device { kernel, message } => write!(f, "GPU error in {kernel}: {message}"),
            Error::Shape(m) => write!(f, "shape error: {m}"),
            Error::Limit(m) => write!(f, "device limit: {m}"),
            Error::Invalid(m) => write!(f, "{m}"),
            Error::Io { path, source } => write!(f, "{path}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

/// `bail!(Shape, "...")`-style early return with a formatted message.
#[macro_export]
macro_rules! bail {
    ($kind:ident, $($fmt:tt)+) => {
        return Err($crate::Error::$kind(format!($($fmt)+)))
    };
}
