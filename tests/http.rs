//! The tests' one HTTP client: plain HTTP/1.1 over a TCP stream, one
//! request per connection, so that what the host answers is seen byte for
//! byte (a `100 Continue` or a refusal before the body, a chunked upload).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long a request may wait for its answer.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    Ok(s)
}

/// The request line and headers, up to the blank line.
fn head(method: &str, addr: &str, path: &str, token: Option<&str>, extra: &str) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{extra}Connection: close\r\n\r\n")
}

/// The status code (0 when there is none) and the body, de-chunked.
fn answer(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // A `100 Continue` before the final answer.
    let (head, body) = match head.starts_with("HTTP/1.1 100") {
        true => body.split_once("\r\n\r\n").unwrap_or((body, "")),
        false => (head, body),
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    )
}

/// `{method} http://{addr}{path}` with `body`, with a bearer token when
/// given: the status code and the body.
pub fn request(
    method: &str,
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = connect(addr)?;
    let length = format!("Content-Length: {}\r\n", body.len());
    s.write_all(head(method, addr, path, token, &length).as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(answer(&raw))
}

/// `GET http://{addr}{path}`: the status code and the body.
pub fn get(addr: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    request("GET", addr, path, token, b"")
}

/// [`get`] from a blocking thread, so that a test's own runtime (serving
/// the host under test) keeps running.
pub async fn get_async(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let (a, p, t) = (
        addr.to_string(),
        path.to_string(),
        token.map(str::to_string),
    );
    tokio::task::spawn_blocking(move || get(&a, &p, t.as_deref()))
        .await
        .expect("join")
        .expect("http get")
}

/// A `POST` with `body`, its answer read as JSON (`null` when empty).
pub fn post_json(
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let (code, text) = request("POST", addr, path, token, body).expect("request");
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (code, json)
}

/// A `POST` that declares a `Content-Length` of `declared` bytes and asks
/// `Expect: 100-continue`, as curl does for large bodies, and sends no body:
/// the answer the host gives before it (a refusal of the size, or the token).
pub fn post_declaring(
    addr: &str,
    path: &str,
    token: Option<&str>,
    declared: u64,
) -> std::io::Result<(u16, String)> {
    let mut s = connect(addr)?;
    let extra = format!("Content-Length: {declared}\r\nExpect: 100-continue\r\n");
    s.write_all(head("POST", addr, path, token, &extra).as_bytes())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // The server may reset the connection after answering.
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
        if String::from_utf8_lossy(&raw).contains("\r\n\r\n") && raw.ends_with(b"}") {
            break;
        }
    }
    Ok(answer(&raw))
}

/// A chunked `POST` of `len` zero bytes (no `Content-Length`): the answer's
/// status, or 0 when the server closed the connection before answering.
pub fn post_chunked(addr: &str, path: &str, token: Option<&str>, len: usize) -> u16 {
    let Ok(mut s) = connect(addr) else {
        return 0;
    };
    let head = head("POST", addr, path, token, "Transfer-Encoding: chunked\r\n");
    if s.write_all(head.as_bytes()).is_err() {
        return 0;
    }
    let chunk = vec![0u8; 1 << 20];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        let ok = write!(s, "{n:x}\r\n")
            .and_then(|_| s.write_all(&chunk[..n]))
            .and_then(|_| s.write_all(b"\r\n"));
        if ok.is_err() {
            break;
        }
        sent += n;
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    answer(&raw).0
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let (Some(chunk), Some(after)) = (rest.get(..n), rest.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        body = after.trim_start_matches("\r\n");
    }
    out
}
