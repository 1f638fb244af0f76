//! One-way, private HTTP: GET only, no cookies, no query strings, no identifying
//! headers; every body bounded by a length known in advance.
//!
//! A mirror may also be a local directory (`/media/usb/repo` or `file:///…`): the
//! offline path (a USB stick, a bundle uploaded by the phone) gets the same bounds and
//! the same verification as the network.

use std::io::Read;
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;

/// Sent instead of reqwest's default: nothing about this box or its version.
const USER_AGENT: &str = "llamabox-update";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url}: the server sent more than the {limit} bytes expected (endless data)")]
    TooMuchData { url: String, limit: u64 },
    #[error("{url}: the server ignored the range request (status {status})")]
    NoRange { url: String, status: u16 },
    #[error("no mirror answered for `{path}`: {errors}")]
    AllMirrorsFailed { path: String, errors: String },
}

pub struct Fetcher {
    client: Client,
    mirrors: Vec<String>,
}

impl Fetcher {
    /// `mirrors` are base URLs (`http://host/repo`), tried in order.
    pub fn new(mirrors: &[String]) -> Fetcher {
        let client = Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(15))
            // A whole request (a range of up to 16 MiB) on a slow link; a stalled
            // transfer fails and resumes after its last verified chunk.
            .timeout(Duration::from_secs(600))
            .referer(false)
            .build()
            .expect("the HTTP client builds");
        Fetcher {
            client,
            mirrors: mirrors
                .iter()
                .map(|m| m.trim_end_matches('/').to_string())
                .collect(),
        }
    }

    fn url(mirror: &str, path: &str) -> String {
        format!("{mirror}/{path}")
    }

    /// The whole file, at most `limit` bytes; `None` when every mirror says 404.
    pub fn get(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchError> {
        let mut errors = Vec::new();
        let mut not_found = 0;
        for mirror in &self.mirrors {
            let url = Self::url(mirror, path);
            match self.get_one(&url, limit) {
                Ok(Some(bytes)) => return Ok(Some(bytes)),
                Ok(None) => not_found += 1,
                // More data than the signed length is an attack, not a flaky mirror.
                Err(e @ FetchError::TooMuchData { .. }) => return Err(e),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if not_found == self.mirrors.len() {
            return Ok(None);
        }
        Err(FetchError::AllMirrorsFailed {
            path: path.to_string(),
            errors: errors.join("; "),
        })
    }

    fn get_one(&self, url: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchError> {
        if let Some(path) = local_path(url) {
            return read_local(url, &path, 0, None, limit);
        }
        let response = self.send(url, None)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = ok_status(url, response, StatusCode::OK)?;
        read_bounded(url, response, limit).map(Some)
    }

    /// Bytes `start..start + len` of a file, handed to `sink` as they arrive. Returns
    /// how many bytes were delivered before an error, so the caller can resume.
    pub fn get_range(
        &self,
        mirror: usize,
        path: &str,
        start: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), crate::Error>,
    ) -> Result<(), crate::Error> {
        let url = Self::url(&self.mirrors[mirror % self.mirrors.len()], path);
        if let Some(local) = local_path(&url) {
            let bytes = read_local(&url, &local, start, Some(len), len)?
                .ok_or_else(|| http_error(&url, "no such file".into()))?;
            if (bytes.len() as u64) < len {
                return Err(http_error(
                    &url,
                    format!("the file ends after {} of {len} bytes", bytes.len()),
                )
                .into());
            }
            for piece in bytes.chunks(256 * 1024) {
                sink(piece)?;
            }
            return Ok(());
        }
        let range = format!("bytes={}-{}", start, start + len - 1);
        let response = self.send(&url, Some(range))?;
        let status = response.status();
        if status != StatusCode::PARTIAL_CONTENT {
            if status.is_success() {
                return Err(FetchError::NoRange {
                    url,
                    status: status.as_u16(),
                }
                .into());
            }
            return Err(http_error(&url, format!("status {status}")).into());
        }
        let mut body = response.take(len + 1);
        let mut buf = vec![0; 256 * 1024];
        let mut got = 0u64;
        loop {
            let n = body
                .read(&mut buf)
                .map_err(|e| http_error(&url, format!("reading the body: {e}")))?;
            if n == 0 {
                break;
            }
            got += n as u64;
            if got > len {
                return Err(FetchError::TooMuchData { url, limit: len }.into());
            }
            sink(&buf[..n])?;
        }
        if got < len {
            return Err(http_error(
                &url,
                format!("the connection ended after {got} of {len} bytes"),
            )
            .into());
        }
        Ok(())
    }

    pub fn mirror_count(&self) -> usize {
        self.mirrors.len()
    }

    fn send(&self, url: &str, range: Option<String>) -> Result<Response, FetchError> {
        let mut request = self.client.get(url);
        if let Some(range) = range {
            request = request.header(reqwest::header::RANGE, range);
        }
        request.send().map_err(|e| http_error(url, error_chain(&e)))
    }
}

/// `file:///dir/x` or `/dir/x`: a mirror on a local filesystem.
fn local_path(url: &str) -> Option<std::path::PathBuf> {
    if let Some(path) = url.strip_prefix("file://") {
        return Some(path.into());
    }
    url.starts_with('/').then(|| url.into())
}

/// Up to `limit` bytes of a local file from `start` (`len` of them, or to the end).
/// `None` if the file does not exist.
fn read_local(
    url: &str,
    path: &std::path::Path,
    start: u64,
    len: Option<u64>,
    limit: u64,
) -> Result<Option<Vec<u8>>, FetchError> {
    use std::io::{Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(http_error(url, e.to_string())),
    };
    file.seek(SeekFrom::Start(start))
        .map_err(|e| http_error(url, e.to_string()))?;
    let mut bytes = Vec::new();
    let want = len.unwrap_or(limit + 1).min(limit + 1);
    file.take(want)
        .read_to_end(&mut bytes)
        .map_err(|e| http_error(url, e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(FetchError::TooMuchData {
            url: url.to_string(),
            limit,
        });
    }
    Ok(Some(bytes))
}

fn ok_status(url: &str, response: Response, want: StatusCode) -> Result<Response, FetchError> {
    if response.status() != want {
        return Err(http_error(url, format!("status {}", response.status())));
    }
    Ok(response)
}

fn read_bounded(url: &str, response: Response, limit: u64) -> Result<Vec<u8>, FetchError> {
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(FetchError::TooMuchData {
            url: url.to_string(),
            limit,
        });
    }
    let mut bytes = Vec::new();
    response
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| http_error(url, format!("reading the body: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(FetchError::TooMuchData {
            url: url.to_string(),
            limit,
        });
    }
    Ok(bytes)
}

fn http_error(url: &str, reason: String) -> FetchError {
    FetchError::Http {
        url: url.to_string(),
        reason,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}
