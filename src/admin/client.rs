//! The client side of the admin listener, for `tracker stats`: one blocking GET, no dependencies.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Connect, read and write timeout of the admin client.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /stats` from a running tracker's admin address, rendered as the percentile table.
pub fn stats_table(admin: SocketAddr) -> Result<String, String> {
    let body = get(admin, "/stats").map_err(|e| {
        format!("cannot read http://{admin}/stats: {e} (is a tracker running with admin.listen = \"{admin}\"? pass --admin ADDR)")
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("http://{admin}/stats did not return stats JSON: {e}"))?;
    Ok(super::render::stats_table(&v))
}

/// A one-shot HTTP/1.1 GET with `Connection: close`; the body of a 200, else an error with the
/// status and body.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or_else(|| io::Error::other("malformed response"))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        return Err(io::Error::other(format!("status {status}: {}", body.trim())));
    }
    Ok(body.to_string())
}
