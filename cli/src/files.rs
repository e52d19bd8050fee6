//! Files the commands write for later use (error files to import again, exports): whole or not
//! at all, so that a run stopped halfway never leaves a cut file under the name it is read by.

use std::path::{Path, PathBuf};

/// The directory a path names its file in: its parent, or `.` for a bare name.
pub fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Where a file is written before it is complete: beside it, renamed over it at the end.
pub fn partial_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Writes `path` through `write`: into its partial file, renamed over `path` once `write` has
/// finished; on a failure the partial file is removed and `path` is as it was.
pub fn write_whole(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<(), String>,
) -> Result<(), String> {
    let partial = partial_of(path);
    let cannot = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let written = std::fs::File::create(&partial)
        .map_err(|e| cannot(&e))
        .and_then(|mut file| {
            write(&mut file).map_err(|e| cannot(&e))?;
            file.sync_all().map_err(|e| cannot(&e))
        });
    match written {
        Ok(()) => std::fs::rename(&partial, path).map_err(|e| cannot(&e)),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}
