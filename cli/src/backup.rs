//! `loyalty backup`: a copy of serve's database that is whole on its own, taken while serve
//! runs. A copy of the file alone is not: what was committed since the last checkpoint is in
//! its `-wal` file beside it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use loyalty_core::store::sqlite::refuse_unless_made;
use rusqlite::{Connection, OpenFlags};

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The database to copy (serve's).
    #[arg(long, default_value = "loyalty.db")]
    db: PathBuf,
    /// Where the copy goes: a file that does not exist yet.
    #[arg(long)]
    to: PathBuf,
}

pub fn run(args: &BackupArgs) -> Result<(), String> {
    if !args.db.exists() {
        return Err(format!("{} does not exist", args.db.display()));
    }
    if args.to.as_os_str().to_string_lossy().ends_with('/') || args.to.is_dir() {
        return Err(format!(
            "{} names a directory: name the file the copy goes to",
            args.to.display()
        ));
    }
    if args.to.exists() {
        return Err(format!(
            "{} exists already: name a new file (a backup never overwrites one)",
            args.to.display()
        ));
    }
    let to = args
        .to
        .to_str()
        .ok_or_else(|| format!("{} is not a UTF-8 path", args.to.display()))?;
    // Read-only: taking a backup changes nothing, and serve writes on meanwhile.
    let conn = Connection::open_with_flags(&args.db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot open {}: {e}", args.db.display()))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(|e| format!("cannot set a busy timeout: {e}"))?;
    refuse_unless_made(&conn, &args.db).map_err(|e| e.to_string())?;
    // One read transaction: the copy is the database as of its start, WAL included. SQLite
    // does not sync what VACUUM INTO wrote: the copy is synced here before it is called taken,
    // and a copy cut short (a full disk) is removed, so that the next attempt may make it.
    let written = conn
        .execute("VACUUM INTO ?1", [to])
        .map_err(|e| format!("cannot write {}: {e}", args.to.display()))
        .and_then(|_| sync(&args.to));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&args.to);
        return Err(e);
    }
    let size = std::fs::metadata(&args.to).map_or(0, |m| m.len());
    println!(
        "backup: {} ({size} bytes), everything {} had committed when it began; serve it, or audit it, as it is",
        args.to.display(),
        args.db.display()
    );
    Ok(())
}

/// Writes the copy, and its name in its directory, to the disk.
fn sync(path: &std::path::Path) -> Result<(), String> {
    let synced = |path: &std::path::Path| std::fs::File::open(path).and_then(|f| f.sync_all());
    synced(path).map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
    let dir = crate::files::dir_of(path);
    synced(&dir).map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}
