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
            .redirect(reqwest::redirect::Policy::custom(redirect_policy))
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
        if let Ok(parsed) = reqwest::Url::parse(url) {
            crate::firewall::open_to(&parsed);
        }
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
    let want = len.unwrap_or(u64::MAX).min(limit.saturating_add(1));
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

/// Most redirects one request may follow.
const MAX_REDIRECTS: usize = 5;

/// A mirror may redirect (CDNs do), but not onto this box itself: a mirror that is not on
/// loopback must not make the box send requests to its own loopback services.
fn redirect_policy(attempt: reqwest::redirect::Attempt) -> reqwest::redirect::Action {
    let local = |url: &reqwest::Url| {
        let Some(host) = url.host_str() else {
            return true;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => {
                ip.is_loopback() || ip.is_unspecified() || ip.is_link_local()
            }
            Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() || ip.is_unspecified(),
            Err(_) => {
                let name = host.trim_end_matches('.').to_ascii_lowercase();
                name == "localhost" || name.ends_with(".localhost")
            }
        }
    };
    let from_local = attempt.previous().first().is_some_and(local);
    if attempt.previous().len() > MAX_REDIRECTS {
        attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
    } else if local(attempt.url()) && !from_local {
        let target = attempt.url().to_string();
        attempt.error(format!(
            "the mirror redirected to {target}, an address of this box: refused"
        ))
    } else {
        crate::firewall::open_to(attempt.url());
        attempt.follow()
    }
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
        .take(limit.saturating_add(1))
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

#[cfg(test)]
mod redirect_tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A one-request HTTP server that answers with `reply` and reports whether it was asked.
    fn serve_once(listener: TcpListener, reply: String) -> std::thread::JoinHandle<bool> {
        std::thread::spawn(move || {
            listener.set_nonblocking(true).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let mut line = String::new();
                        BufReader::new(&stream).read_line(&mut line).unwrap();
                        stream.write_all(reply.as_bytes()).unwrap();
                        return true;
                    }
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => return false,
                }
            }
        })
    }

    fn lan_address() -> Option<std::net::IpAddr> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect("192.0.2.1:9").ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    }

    #[test]
    fn a_mirror_cannot_redirect_the_box_to_its_own_loopback_services() {
        let Some(lan) = lan_address() else {
            assert!(
                std::env::var_os("LLAMABOX_REQUIRE_LAN").is_none(),
                "LLAMABOX_REQUIRE_LAN is set but this machine has no non-loopback IPv4 address"
            );
            eprintln!("SKIPPED: no non-loopback IPv4 address here");
            return;
        };
        let inside = TcpListener::bind("127.0.0.1:0").unwrap();
        let inside_port = inside.local_addr().unwrap().port();
        let asked_inside = serve_once(
            inside,
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".into(),
        );
        let mirror = TcpListener::bind((lan, 0)).unwrap();
        let mirror_port = mirror.local_addr().unwrap().port();
        let _ = serve_once(
            mirror,
            format!("HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{inside_port}/v1/models\r\ncontent-length: 0\r\n\r\n"),
        );
        let fetcher = Fetcher::new(&[format!("http://{lan}:{mirror_port}/repo")]);
        let err = fetcher.get("timestamp.json", 1024).unwrap_err();
        assert!(err.to_string().contains("an address of this box"), "{err}");
        assert!(
            !asked_inside.join().unwrap(),
            "the loopback service was asked"
        );
    }
}
