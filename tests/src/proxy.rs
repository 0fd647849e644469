//! A fault-injecting HTTP/1.1 proxy in front of a real registry.
//!
//! Each connection carries one request (the proxy answers `Connection: close`), which
//! keeps the parsing trivial and makes "drop the connection" precise. Requests are
//! forwarded with their `Host` header unchanged, so the registry builds upload URLs
//! pointing back at the proxy. Every request is recorded, including whether it carried
//! `Authorization`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What to do to a matching request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an empty body, without forwarding.
    Status(u16),
    /// Close the connection without answering.
    Drop,
    /// Forward, then send the headers and only the first half of the body, and close.
    Truncate,
    /// Forward, and flip the bits of one byte in the middle of the body.
    CorruptByte,
    /// Remove the `Range` header before forwarding (a registry that ignores Range).
    StripRange,
    /// As [`Fault::StripRange`], and send the answer slowly: this long after each
    /// 64 KiB (a cold pull-through cache streaming a blob it is still fetching).
    StripRangeSlowly(std::time::Duration),
    /// Answer `307` with `Location: <base><path>` (e.g. `http://127.0.0.1:P`).
    Redirect(String),
    /// Hold the request this long without answering, then close (a registry that hangs).
    Stall(std::time::Duration),
}

/// When a fault applies.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Only this method (`GET`, `HEAD`…), or any.
    pub method: Option<String>,
    /// Only paths containing this (e.g. `/blobs/`, `/manifests/`).
    pub path_contains: String,
    /// The fault.
    pub fault: Fault,
    /// How many more times it applies (`None`: always).
    pub times: Option<usize>,
}

impl Rule {
    /// `fault` on every request whose path contains `path_contains`, `times` times
    /// (`None`: always).
    pub fn new(path_contains: &str, fault: Fault, times: Option<usize>) -> Rule {
        Rule {
            method: None,
            path_contains: path_contains.into(),
            fault,
            times,
        }
    }

    /// Restricts the rule to one method.
    pub fn method(mut self, m: &str) -> Rule {
        self.method = Some(m.into());
        self
    }
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `User-Agent` header, if any (tells containerd's requests from Skiff's).
    pub user_agent: Option<String>,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    seen: Vec<Recorded>,
}

/// The proxy; stops on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = Arc::clone(&st);
                std::thread::spawn(move || {
                    let _ = handle(conn, upstream, &st);
                });
            }
        });
        FaultProxy {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, to use as the registry part of references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT` (for [`Fault::Redirect`] to this proxy).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a rule (rules are tried in order).
    pub fn add_rule(&self, rule: Rule) {
        self.lock().rules.push(rule);
    }

    /// Removes all rules.
    pub fn clear_rules(&self) {
        self.lock().rules.clear();
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().seen.clone()
    }

    /// Requests seen with `method` (or any) and a path containing `path_contains`.
    pub fn count(&self, method: Option<&str>, path_contains: &str) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|r| method.is_none_or(|m| r.method == m) && r.path.contains(path_contains))
            .count()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.lock().seen.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request: head (until CRLFCRLF) and body (Content-Length or chunked).
/// Request line, headers, body.
type Request = (String, Vec<(String, String)>, Vec<u8>);

fn read_request(conn: &mut TcpStream) -> io::Result<Request> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = conn.read(&mut tmp)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = conn.read(&mut tmp)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&tmp[..n]);
        }
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while find(&body, b"0\r\n\r\n").is_none() {
            let n = conn.read(&mut tmp)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&tmp[..n]);
        }
    }
    Ok((request_line, headers, body))
}

fn handle(mut conn: TcpStream, upstream: SocketAddr, state: &Mutex<State>) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let (request_line, mut headers, body) = read_request(&mut conn)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let header = |hs: &[(String, String)], name: &str| {
        hs.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let fault = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let fault = st
            .rules
            .iter_mut()
            .find(|r| {
                r.method.as_deref().is_none_or(|m| m == method)
                    && path.contains(&r.path_contains)
                    && r.times != Some(0)
            })
            .map(|r| {
                if let Some(t) = r.times.as_mut() {
                    *t -= 1;
                }
                r.fault.clone()
            });
        st.seen.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            authorization: header(&headers, "authorization"),
            range: header(&headers, "range"),
            user_agent: header(&headers, "user-agent"),
            fault: fault.clone(),
        });
        fault
    };
    match &fault {
        Some(Fault::Status(code)) => {
            let resp = format!(
                "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            conn.write_all(resp.as_bytes())?;
            return Ok(());
        }
        Some(Fault::Drop) => {
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
        Some(Fault::Redirect(base)) => {
            let resp = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {base}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            conn.write_all(resp.as_bytes())?;
            return Ok(());
        }
        Some(Fault::Stall(d)) => {
            std::thread::sleep(*d);
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
        Some(Fault::StripRange | Fault::StripRangeSlowly(_)) => {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("range"))
        }
        _ => {}
    }
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case("connection"));
    let mut out = format!("{request_line}\r\n");
    for (k, v) in &headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(out.as_bytes())?;
    up.write_all(&body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let Some(head_end) = find(&resp, b"\r\n\r\n") else {
        conn.write_all(&resp)?;
        return Ok(());
    };
    let body_start = head_end + 4;
    match fault {
        Some(Fault::CorruptByte) if resp.len() > body_start => {
            let mid = body_start + (resp.len() - body_start) / 2;
            resp[mid] ^= 0xff;
            conn.write_all(&resp)?;
        }
        Some(Fault::Truncate) => {
            let cut = body_start + (resp.len() - body_start) / 2;
            conn.write_all(&resp[..cut])?;
            conn.flush()?;
            let _ = conn.shutdown(Shutdown::Both);
        }
        Some(Fault::StripRangeSlowly(pause)) => {
            for piece in resp.chunks(64 << 10) {
                conn.write_all(piece)?;
                conn.flush()?;
                std::thread::sleep(pause);
            }
        }
        _ => conn.write_all(&resp)?,
    }
    Ok(())
}
