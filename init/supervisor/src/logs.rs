//! Per-service logs: every line a service writes to stdout or stderr, stamped with the
//! time it arrived, appended to `<dir>/<service>.log`. When a file would grow past its
//! size bound it is rotated (`.log` → `.log.1` → … → `.log.<keep>`, the oldest dropped),
//! so the data partition never fills with logs. Lines are written as they arrive (no
//! user-space buffering), so nothing is lost when the supervisor or the box stops.
//! Logs are root's alone (directory 0700, files 0600): services log what they handle
//! (an unprovisioned box's setup code once was), and `llamabox logs` reads them through
//! the supervisor.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Opens a log file for appending, root's alone whether new or left by an older image.
fn open_private(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Longest line kept whole; longer output is split so one runaway line cannot hold
/// unbounded memory.
pub const MAX_LINE: usize = 16 * 1024;

pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: File,
    size: u64,
}

impl LogFile {
    pub fn open(dir: &Path, name: &str, max_bytes: u64, keep: usize) -> io::Result<LogFile> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
        let path = dir.join(format!("{name}.log"));
        let file = open_private(&path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path,
            max_bytes,
            keep: keep.max(1),
            file,
            size,
        })
    }

    /// Appends one line, stamped with the current time.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let stamp = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut record = Vec::with_capacity(stamp.len() + line.len() + 2);
        record.extend_from_slice(stamp.as_bytes());
        record.push(b' ');
        record.extend_from_slice(line);
        record.push(b'\n');
        if self.size > 0 && self.size + record.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&record)?;
        self.size += record.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = open_private(&self.path)?;
        self.size = 0;
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Splits a byte stream into lines, holding the unfinished tail.
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|b| *b == b'\n') {
            emit(&self.pending[start..start + pos]);
            start += pos + 1;
        }
        self.pending.drain(..start);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            emit(&self.pending);
            self.pending = rest;
        }
    }

    /// The unfinished last line, when the stream ends.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            emit(&self.pending);
            self.pending.clear();
        }
    }
}

/// The log's files, oldest first.
pub fn files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let base = dir.join(format!("{name}.log"));
    let mut numbered: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let n = file.strip_prefix(&format!("{name}.log."))?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    numbered.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    if base.exists() {
        out.push(base);
    }
    out
}

/// Every line of the log, oldest first.
pub fn read_lines(dir: &Path, name: &str) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    for path in files(dir, name) {
        for line in io::BufReader::new(File::open(path)?).lines() {
            lines.push(line?);
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_bounds_them() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        s.push(b"one\ntw", |l| got.push(l.to_vec()));
        s.push(b"o\n", |l| got.push(l.to_vec()));
        s.push(&vec![b'x'; MAX_LINE + 5], |l| got.push(l.to_vec()));
        s.finish(|l| got.push(l.to_vec()));
        assert_eq!(got[0], b"one");
        assert_eq!(got[1], b"two");
        assert_eq!(got[2].len(), MAX_LINE);
        assert_eq!(got[3].len(), 5);
    }

    #[test]
    fn logs_are_roots_alone_even_when_an_older_image_left_them_open() {
        let dir = std::env::temp_dir().join(format!("llamabox-log-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("old.log"), b"x\n").unwrap();
        std::fs::set_permissions(dir.join("old.log"), Permissions::from_mode(0o644)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

        let mut new = LogFile::open(&dir, "new", 100, 2).unwrap();
        LogFile::open(&dir, "old", 100, 2).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("new.log")), 0o600);
        assert_eq!(mode(&dir.join("old.log")), 0o600);
        // Rotated files, and the file started after a rotation, too.
        for i in 0..20 {
            new.write_line(format!("line {i:04}").as_bytes()).unwrap();
        }
        for f in files(&dir, "new") {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotates_at_the_bound_and_keeps_order() {
        let dir = std::env::temp_dir().join(format!("llamabox-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut log = LogFile::open(&dir, "svc", 1000, 3).unwrap();
        for i in 0..200 {
            log.write_line(format!("line {i:04}").as_bytes()).unwrap();
        }
        let files = files(&dir, "svc");
        assert_eq!(files.len(), 4, "{files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 1000);
        }
        let lines = read_lines(&dir, "svc").unwrap();
        assert!(lines.last().unwrap().ends_with("line 0199"));
        let numbers: Vec<u32> = lines
            .iter()
            .map(|l| l[l.len() - 4..].parse().unwrap())
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[1] == w[0] + 1),
            "lines out of order"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
