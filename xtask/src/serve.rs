//! A static file server for update repositories: HTTP/1.1, GET with `Range`, one
//! thread per connection. `cargo xtask serve` runs it for development; the update tests
//! use its fault injection (bodies that never end, connections dropped mid-body) and
//! its request log (to check what a box reveals).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub enum Misbehaviour {
    #[default]
    None,
    /// Bodies of paths ending in this never end.
    Endless(String),
    /// The first `times` range requests send only half their bytes.
    DropHalfway { times: usize },
}

/// An HTTP/1.1 static file server with Range support, one thread per connection.
pub struct Server {
    port: u16,
    pub misbehaviour: Arc<Mutex<Misbehaviour>>,
    /// The request head (request line and headers) of every request.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Serves `root` on 127.0.0.1 at a port the OS picks.
    pub fn start(root: &Path) -> Server {
        Server::bind(root, "127.0.0.1:0").expect("binding a loopback port")
    }

    pub fn bind(root: &Path, addr: &str) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let port = listener.local_addr()?.port();
        let misbehaviour = Arc::new(Mutex::new(Misbehaviour::None));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (root, mis, reqs) = (root.to_path_buf(), misbehaviour.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, mis, reqs) = (root.clone(), mis.clone(), reqs.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &root, &mis, &reqs);
                });
            }
        });
        Ok(Server {
            port,
            misbehaviour,
            requests,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, misbehaviour: Misbehaviour) {
        *self.misbehaviour.lock().unwrap() = misbehaviour;
    }
}

fn serve(
    stream: TcpStream,
    root: &Path,
    misbehaviour: &Mutex<Misbehaviour>,
    requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head += &line;
    }
    requests.lock().unwrap().push(head.clone());
    let mut out = stream;
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let range = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        if !name.eq_ignore_ascii_case("range") {
            return None;
        }
        let (a, b) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
        Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
    });
    let file = root.join(path.trim_start_matches('/'));
    let Ok(bytes) = std::fs::read(&file) else {
        return out.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    };
    let mis = misbehaviour.lock().unwrap().clone();
    if let Misbehaviour::Endless(suffix) = &mis {
        if path.ends_with(suffix.as_str()) {
            // The honest bytes first, then more, forever.
            let (status, honest) = match range {
                Some((start, end)) => {
                    ("206 Partial Content", &bytes[start as usize..=end as usize])
                }
                None => ("200 OK", &bytes[..]),
            };
            out.write_all(format!("HTTP/1.1 {status}\r\nconnection: close\r\n\r\n").as_bytes())?;
            out.write_all(honest)?;
            let block = vec![b'x'; 64 << 10];
            loop {
                out.write_all(&block)?;
            }
        }
    }
    match range {
        None => {
            out.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    bytes.len()
                )
                .as_bytes(),
            )?;
            out.write_all(&bytes)
        }
        Some((start, end)) => {
            let part = &bytes[start as usize..=(end as usize).min(bytes.len() - 1)];
            out.write_all(
                format!(
                    "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{end}/{}\r\nconnection: close\r\n\r\n",
                    part.len(),
                    bytes.len()
                )
                .as_bytes(),
            )?;
            if let Misbehaviour::DropHalfway { times } = mis {
                if times > 0 {
                    *misbehaviour.lock().unwrap() = Misbehaviour::DropHalfway { times: times - 1 };
                    out.write_all(&part[..part.len() / 2])?;
                    return Ok(()); // closes the connection mid-body
                }
            }
            out.write_all(part)
        }
    }
}

/// `cargo xtask serve`: `repo` over HTTP until interrupted.
pub fn serve_forever(repo: &Path, listen: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let server =
        Server::bind(repo, listen).with_context(|| format!("cannot listen on {listen}"))?;
    println!("serving {} at {}", repo.display(), server.url());
    loop {
        std::thread::park();
    }
}
