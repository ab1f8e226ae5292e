//! The data dir's redb files as a start opens them: `state.redb`, `raft.redb` and
//! `images/tags.redb`. One that is not a database, or whose pages do not hold together
//! (a failing disk, a torn copy), stops the start with one line naming it and how to
//! recover, and a non-zero exit, not a panic.
//!
//! redb returns most corruption as errors, but some of its checks are assertions: a
//! page of a type it does not know is `unreachable!()`, and builds with debug
//! assertions (the tests') assert more. Garbage past a file's header panics inside
//! `Database::create`. So each file is opened, and read as far as the start reads it,
//! under `catch_unwind`, with the panic hook told to keep quiet for it: such a panic is
//! an answer about the file, not a crash of the node to report.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;

use skiff_image::ImageError;

use crate::state::StateError;

/// A redb file of the data dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataFile {
    /// `state.redb`: apps, `skiff run` containers and the replicated desired state.
    State,
    /// `raft.redb`: the Raft log and vote.
    Raft,
    /// `images/tags.redb`: image tags.
    Tags,
}

impl DataFile {
    fn name(self) -> &'static str {
        match self {
            Self::State => "state.redb",
            Self::Raft => "raft.redb",
            Self::Tags => "tags.redb",
        }
    }

    /// The directory it is in, under the data dir `data`.
    fn dir(self, data: &Path) -> PathBuf {
        match self {
            Self::Tags => data.join("images"),
            Self::State | Self::Raft => data.to_path_buf(),
        }
    }

    /// What to do about it.
    fn recovery(self) -> &'static str {
        match self {
            Self::State => {
                "move it away to rebuild it from the Raft log and the cluster's peers (the containers of `skiff run` are not rebuilt), or restore a backup"
            }
            Self::Raft => {
                "restore a backup, or move the data dir away and join the cluster again as a new node"
            }
            Self::Tags => {
                "move it away to start with no tags (the images stay: tag them again), or restore a backup"
            }
        }
    }
}

thread_local! {
    /// Set while this thread opens a data file: its panics are caught and reported
    /// as the file's corruption.
    static OPENING: Cell<bool> = const { Cell::new(false) };
}

/// Puts a panic hook in front of the one in place that keeps quiet on a thread that is
/// opening a data file (once per process).
fn quiet_while_opening() {
    static HOOKED: Once = Once::new();
    HOOKED.call_once(|| {
        let report = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !OPENING.with(Cell::get) {
                report(info);
            }
        }));
    });
}

/// Runs `read`, which opens `file` of the data dir `data` and reads what the start
/// needs from it. A panic in it, or an error that says the file is corrupt, becomes
/// `<file> in <dir> is corrupt (redb: <why>): <what to do>`; other errors pass.
pub(crate) fn open<T>(
    file: DataFile,
    data: &Path,
    read: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    quiet_while_opening();
    let was = OPENING.with(|o| o.replace(true));
    let outcome = panic::catch_unwind(AssertUnwindSafe(read));
    OPENING.with(|o| o.set(was));
    let why = match outcome {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(e)) => match e.chain().find_map(corruption_in) {
            Some(why) => why,
            None => return Err(e),
        },
        Err(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "it panicked".into()),
    };
    anyhow::bail!(
        "{} in {} is corrupt (redb: {}): {}",
        file.name(),
        file.dir(data).display(),
        why.lines().next().unwrap_or(""),
        file.recovery()
    )
}

/// The corruption an error of the chain reports, if it is one.
fn corruption_in(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(StateError::Corrupt { message }) = cause.downcast_ref() {
        return Some(message.clone());
    }
    if let Some(ImageError::Corrupt { message, .. }) = cause.downcast_ref() {
        return Some(message.clone());
    }
    cause
        .downcast_ref::<redb::Error>()
        .and_then(crate::state::corruption)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_and_corruption_are_one_line_naming_the_file_other_errors_pass() {
        let data = Path::new("/data");
        let err = open(DataFile::State, data, || -> anyhow::Result<()> {
            panic!("internal error: entered unreachable code")
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "state.redb in /data is corrupt (redb: internal error: entered unreachable code): move it away"
            ),
            "{err}"
        );
        let err = open(DataFile::Tags, data, || -> anyhow::Result<()> {
            Err(
                anyhow::Error::new(redb::Error::Corrupted("bad page".into()))
                    .context("failed to open the image store"),
            )
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("tags.redb in /data/images is corrupt (redb: DB corrupted: bad page)"),
            "{err}"
        );
        let err = open(DataFile::Raft, data, || -> anyhow::Result<()> {
            Err(anyhow::Error::new(redb::Error::Io(std::io::Error::from(
                std::io::ErrorKind::PermissionDenied,
            ))))
        })
        .unwrap_err()
        .to_string();
        assert!(!err.contains("corrupt"), "{err}");
        assert_eq!(open(DataFile::Raft, data, || Ok(7)).unwrap(), 7);
    }
}
