//! Finding the files of a run: the paths given, and everything under the folders given,
//! sorted into images and reports by extension.
//!
//! Nothing is left out without a word. Symbolic links are followed (a linked tile is a
//! tile); a link to a missing target and a link back to a folder being read are failures
//! that name the link. A FIFO, device or socket is a failure that says what it is (reading
//! one could block forever). A file reached twice (through a link) is read once and said
//! so in the notes. Every file is kept under its canonical path, so the source stored for
//! an item does not depend on the folder `outpost analyze` was started from.

use super::{failure, FailureRecord};
use crate::infer::image as img;
use crate::infer::text;
use crate::infer::InputError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Inputs sorted by kind.
#[derive(Debug, Default)]
pub(super) struct Inputs {
    pub images: Vec<PathBuf>,
    pub texts: Vec<PathBuf>,
    pub failures: Vec<FailureRecord>,
    pub notes: Vec<String>,
    pub ignored: u64,
    /// Canonical path -> the path it was first reached by.
    seen: HashMap<PathBuf, PathBuf>,
}

impl Inputs {
    fn push(&mut self, p: PathBuf, explicit: bool) {
        let canon = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
        if let Some(first) = self.seen.get(&canon) {
            self.notes.push(format!(
                "{} is the same file as {} (reached twice through a link); read once",
                p.display(),
                first.display()
            ));
            return;
        }
        self.seen.insert(canon.clone(), p.clone());
        if img::is_image_path(&p) {
            self.images.push(canon);
        } else if text::is_text_path(&p) {
            self.texts.push(canon);
        } else if explicit {
            self.failures.push(failure(
                &p,
                None,
                &InputError::Unsupported(
                    "not an image (.jpg .jpeg .png .tif .tiff) or report (.txt .md .csv .jsonl)"
                        .into(),
                ),
            ));
        } else {
            self.ignored += 1;
        }
    }

    fn fail(&mut self, p: &Path, e: InputError) {
        self.failures.push(failure(p, None, &e));
    }
}

/// What kind of special file this is, in words.
fn special_kind(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "named pipe (FIFO)";
        }
        if ft.is_char_device() {
            return "character device";
        }
        if ft.is_block_device() {
            return "block device";
        }
        if ft.is_socket() {
            return "socket";
        }
    }
    let _ = ft;
    "special file"
}

/// Why `p` cannot be read, for a path whose metadata failed.
fn unreadable(p: &Path, e: std::io::Error) -> InputError {
    if let Ok(target) = std::fs::read_link(p) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return InputError::BrokenLink {
                target: target.display().to_string(),
            };
        }
    }
    if e.kind() == std::io::ErrorKind::NotFound {
        return InputError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file or folder",
        ));
    }
    InputError::Io(e)
}

/// Files of a run, from the paths given.
pub(super) fn collect(paths: &[PathBuf]) -> Inputs {
    let mut out = Inputs::default();
    for p in paths {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => walk(p, &mut out),
            Ok(m) if m.is_file() => out.push(p.clone(), true),
            Ok(m) => out.fail(p, InputError::NotAFile(special_kind(&m.file_type()))),
            Err(e) => out.fail(p, unreadable(p, e)),
        }
    }
    out
}

fn walk(root: &Path, out: &mut Inputs) {
    let walker = walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        match entry {
            Ok(e) if e.file_type().is_file() => out.push(e.into_path(), false),
            Ok(e) if e.file_type().is_dir() => {}
            Ok(e) => out.fail(e.path(), InputError::NotAFile(special_kind(&e.file_type()))),
            Err(e) => {
                let path = e
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| root.into());
                let ancestor = e.loop_ancestor().map(|a| a.display().to_string());
                let why = match ancestor {
                    Some(ancestor) => InputError::LinkLoop { ancestor },
                    None => {
                        let io = e
                            .into_io_error()
                            .unwrap_or_else(|| std::io::Error::other("cannot walk the folder"));
                        unreadable(&path, io)
                    }
                };
                out.fail(&path, why);
            }
        }
    }
}
