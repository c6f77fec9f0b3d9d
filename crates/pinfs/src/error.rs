//! Errors of the core library and the errno each one stands for.
//!
//! Every error knows its errno ([`Error::errno`]); edges (CLI, daemon, FUSE)
//! translate that one number, in one place each. Messages follow the C
//! library's `strerror` text so that `pinfs io` prints `truncate: Text file busy`
//! exactly as `xfs_io` would.

use std::fmt;

/// A POSIX error number. Displayed as its `strerror` text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        impl Errno {
            $(
                #[allow(missing_docs)]
                pub const $name: Errno = Errno(libc::$name);
            )*
            /// The symbolic name (`"ETXTBSY"`), when known.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $(libc::$name => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

errnos!(
    EPERM,
    ENOENT,
    EINTR,
    EIO,
    ENXIO,
    EBADF,
    EAGAIN,
    ENOMEM,
    EACCES,
    EBUSY,
    EEXIST,
    EXDEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    ENFILE,
    EMFILE,
    ETXTBSY,
    EFBIG,
    ENOSPC,
    ESPIPE,
    EROFS,
    EMLINK,
    ERANGE,
    ENAMETOOLONG,
    ENOTEMPTY,
    ELOOP,
    ENOSYS,
    EOPNOTSUPP,
    ETIMEDOUT,
    EUCLEAN,
    EOVERFLOW,
    ENODEV,
    ESTALE,
    EFAULT,
    EPIPE,
    ENOTCONN,
    EPROTO,
    ECONNREFUSED,
    EMSGSIZE,
);

impl Errno {
    /// `EWOULDBLOCK` is `EAGAIN` on Linux; the name documents intent at call sites.
    pub const EWOULDBLOCK: Errno = Errno(libc::EWOULDBLOCK);

    /// The errno the last failed system call of this thread left.
    pub fn last() -> Errno {
        Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }

    /// The C library's message for this errno (`strerror`).
    pub fn message(self) -> String {
        std::io::Error::from_raw_os_error(self.0)
            .to_string()
            .split(" (os error")
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl std::error::Error for Errno {}

/// Errors of the core library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A POSIX condition of the file-system semantics (`ETXTBSY`, `ENOENT`, ...).
    #[error("{0}")]
    Errno(#[from] Errno),
    /// The pool does not hold a pinfs file system (bad magic, unknown version).
    #[error("not a pinfs pool: {what}")]
    Foreign {
        /// What gave it away.
        what: String,
    },
    /// The pool holds a damaged pinfs file system.
    #[error("damaged pool: {what}")]
    Corrupt {
        /// What is wrong, naming the structure.
        what: String,
    },
    /// The media failed (open, map, size, flush).
    #[error("media: {context}: {source}")]
    Media {
        /// What was being done.
        context: String,
        /// The system error.
        source: std::io::Error,
    },
}

impl Error {
    /// The errno this error reports at an edge.
    pub fn errno(&self) -> Errno {
        match self {
            Error::Errno(e) => *e,
            Error::Foreign { .. } => Errno::EINVAL,
            Error::Corrupt { .. } => Errno::EUCLEAN,
            Error::Media { source, .. } => Errno(source.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    /// Shorthand for a damaged-pool error.
    pub fn corrupt(what: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into() }
    }

    /// Shorthand for a media error with context.
    pub fn media(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Media {
            context: context.into(),
            source,
        }
    }
}

/// Result of the core library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strerror_text() {
        assert_eq!(Errno::ETXTBSY.to_string(), "Text file busy");
        assert_eq!(Errno::ENOENT.to_string(), "No such file or directory");
        assert_eq!(format!("{:?}", Errno::EPERM), "EPERM");
        assert_eq!(Error::from(Errno::EAGAIN).errno(), Errno::EAGAIN);
    }
}
