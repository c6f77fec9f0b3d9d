//! Every error the `pinfs` command reports, and the one place where an error
//! becomes the text a user reads.
//!
//! Two kinds exist. [`CliError`] ends a subcommand (`pinfs: POOL: <error>`,
//! exit status 1): a pool that is missing, foreign or damaged, an option that
//! is not supported yet. [`CmdError`] fails one `io` command (`CMD: MESSAGE`
//! on stderr) and the script goes on; its message is the `strerror` text of
//! the errno, as `xfs_io` prints it (CLI.md). Both translate a
//! [`pinfs::Error`] here and nowhere else.

use std::fmt;
use std::path::{Path, PathBuf};

use pinfs::{Errno, Error};

/// An error that ends a subcommand with exit status 1.
#[derive(Debug)]
pub enum CliError {
    /// The pool could not be created, opened, formatted or mounted.
    Pool {
        /// The pool as the user named it.
        path: PathBuf,
        /// What the library said.
        source: Error,
    },
    /// `mkfs` without `-f` on a pool that holds a file system.
    Exists {
        /// The pool.
        path: PathBuf,
        /// What it holds.
        what: String,
    },
    /// `fsck` found problems (each already printed on its own line).
    Inconsistent {
        /// The pool.
        path: PathBuf,
        /// How many problems.
        problems: usize,
    },
    /// A combination of options that is not supported.
    NotSupported {
        /// The option or form (`--socket`).
        what: &'static str,
    },
    /// The daemon's socket could not be reached (or went away).
    Socket {
        /// The socket as the user named it.
        path: PathBuf,
        /// What the client library said.
        source: Error,
    },
    /// A volatile pool (`io` without `--pool`, `demo`) could not be set up.
    Volatile(Error),
    /// A benchmark or the demo failed.
    Other(anyhow::Error),
}

impl CliError {
    /// A pool error; `path` is the pool as named on the command line.
    pub fn pool(path: &Path, source: Error) -> Self {
        CliError::Pool {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Pool { path, source } => {
                write!(f, "{}: {}", path.display(), describe(source, Some(path)))
            }
            CliError::Exists { path, what } => write!(
                f,
                "{}: holds {what}; use -f to overwrite it (its files are lost)",
                path.display()
            ),
            CliError::Inconsistent { path, problems } => write!(
                f,
                "{}: file system inconsistent ({problems} problem{})",
                path.display(),
                if *problems == 1 { "" } else { "s" }
            ),
            CliError::NotSupported { what } => write!(f, "{what}: not supported"),
            CliError::Socket { path, source } => {
                write!(f, "{}: {}", path.display(), describe(source, None))
            }
            CliError::Volatile(e) => write!(f, "volatile pool: {}", describe(e, None)),
            CliError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for CliError {}

/// The text of a library error for a one-line report.
///
/// Errno-style errors read as their `strerror` text; media errors keep their
/// context (what was being done) but drop the pool path when the line names
/// it already, and show the system error without Rust's `(os error N)`.
pub fn describe(err: &Error, pool: Option<&Path>) -> String {
    match err {
        Error::Media { context, .. } => {
            let mut context = context.clone();
            if let Some(p) = pool {
                let p = p.display().to_string();
                context = context
                    .replace(&format!("{p}: "), "")
                    .replace(&format!(" {p}"), "");
                if context == p {
                    context.clear();
                }
            }
            if context.is_empty() {
                err.errno().to_string()
            } else if err.errno() == Errno::EBUSY {
                // "Device or resource busy: pool is in use by pid 1234
                // (pinfs); share it ...": the hint reads last.
                format!("{}: {context}", err.errno())
            } else {
                format!("{context}: {}", err.errno())
            }
        }
        Error::Errno(e) => e.to_string(),
        // Foreign and damaged pools explain themselves ("not a pinfs pool: ...").
        other => other.to_string(),
    }
}

/// Why one `io` command failed.
#[derive(Debug)]
pub enum CmdError {
    /// A POSIX error, printed as its `strerror` text (`Text file busy`).
    Errno(Errno),
    /// The command line of the command is malformed.
    Usage {
        /// The command's synopsis.
        usage: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// No command set knows this command.
    Unknown,
    /// A limit on something that grows from the script was reached.
    Limit {
        /// What is limited.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The actor's thread is gone (it panicked: a bug, reported above).
    ActorLost,
    /// A load or store through a mapping would have raised this signal
    /// (`mwrite: SIGBUS`); the actor survives it.
    Signal(&'static str),
    /// A failure that explains itself: a device's completion status other
    /// than `ok` (`dma-write: protection-error`), a device that could not be
    /// set up (the kernel's error, with why).
    Detail(String),
}

impl CmdError {
    /// A usage error.
    pub fn usage(usage: &'static str, problem: impl Into<String>) -> Self {
        CmdError::Usage {
            usage,
            problem: problem.into(),
        }
    }
}

impl From<Errno> for CmdError {
    fn from(e: Errno) -> Self {
        CmdError::Errno(e)
    }
}

impl From<Error> for CmdError {
    fn from(e: Error) -> Self {
        CmdError::Errno(e.errno())
    }
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdError::Errno(e) => write!(f, "{e}"),
            CmdError::Usage { usage, problem } => write!(f, "{problem}; usage: {usage}"),
            CmdError::Unknown => f.write_str("unknown command"),
            CmdError::Limit { what, limit } => write!(f, "too many {what} (limit {limit})"),
            CmdError::ActorLost => f.write_str("the actor's thread died (a bug; see above)"),
            CmdError::Signal(name) => f.write_str(name),
            CmdError::Detail(text) => f.write_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_errors_read_as_strerror() {
        assert_eq!(CmdError::from(Errno::ETXTBSY).to_string(), "Text file busy");
        assert_eq!(
            CmdError::from(Error::from(Errno::EBADF)).to_string(),
            "Bad file descriptor"
        );
        assert_eq!(CmdError::Unknown.to_string(), "unknown command");
    }

    #[test]
    fn pool_errors_do_not_repeat_the_path() {
        let p = Path::new("/tmp/pool");
        let e = Error::media(
            "open /tmp/pool",
            std::io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(
            CliError::pool(p, e).to_string(),
            "/tmp/pool: open: No such file or directory"
        );
        let e = Error::Foreign {
            what: "bad magic".into(),
        };
        assert_eq!(
            CliError::pool(p, e).to_string(),
            "/tmp/pool: not a pinfs pool: bad magic"
        );
    }
}
