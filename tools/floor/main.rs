//! `floor`: the cheapest HTTP/1.1 server the tracker's stack can be, for perf/vs-nginx.sh to
//! measure beside nginx and the tracker in the same run: what the kernel's TCP path, io_uring
//! and monoio cost per request before the tracker does any work of its own.
//!
//! One monoio io_uring runtime on the calling thread with the tracker's ring flags
//! (COOP_TASKRUN | TASKRUN_FLAG), one reused read and write buffer per connection, a request
//! counted at each blank line ending a head, and one fixed `204 No Content` per request (the same
//! headers nginx sends for `return 204`). No parsing, no routing, no events, no journal: a floor
//! to read the other two against, not a server to run. It answers anything, so it binds
//! loopback by default.
//!
//! ```text
//! floor [ADDR]        default 127.0.0.1:0; prints "listening on ADDR" once it accepts
//! ```
//! Exit codes: 0 never (it serves until killed), 1 the address or io_uring could not be set up.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

/// Read buffer per connection: several pipelined browser heads.
const READ_BYTES: usize = 16 * 1024;
/// What nginx answers to `return 204;` (its Date header's length, a fixed date).
const RESPONSE: &[u8] =
    b"HTTP/1.1 204 No Content\r\nServer: floor\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nConnection: keep-alive\r\n\r\n";

fn main() -> ExitCode {
    let addr: SocketAddr = match std::env::args().nth(1).as_deref().unwrap_or("127.0.0.1:0").parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("floor: bad address: {e} (expected IP:PORT)");
            return ExitCode::from(1);
        }
    };
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun().setup_taskrun_flag();
    let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().with_entries(1024).uring_builder(urb).build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floor: io_uring runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("floor: bind {addr}: {e}");
                return ExitCode::from(1);
            }
        };
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        println!("listening on {local}");
        let _ = std::io::stdout().flush();
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                monoio::spawn(serve(stream));
            }
        }
    })
}

async fn serve(mut stream: TcpStream) {
    let mut rbuf = Vec::with_capacity(READ_BYTES);
    let mut wbuf: Vec<u8> = Vec::with_capacity(RESPONSE.len() * 16);
    loop {
        let len = rbuf.len();
        let (res, slice) = stream.read(rbuf.slice_mut(len..READ_BYTES)).await;
        rbuf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // One response per complete head, in order, written whenever the buffer is full and
        // after the last; a partial head stays at the front of the read buffer.
        let mut consumed = 0;
        while let Some(end) = find_head_end(&rbuf[consumed..]) {
            if wbuf.len() + RESPONSE.len() > wbuf.capacity() {
                let Some(b) = flush(&mut stream, wbuf).await else { return };
                wbuf = b;
            }
            wbuf.extend_from_slice(RESPONSE);
            consumed += end;
        }
        rbuf.drain(..consumed);
        if rbuf.len() == READ_BYTES {
            return;
        }
        if !wbuf.is_empty() {
            let Some(b) = flush(&mut stream, wbuf).await else { return };
            wbuf = b;
        }
    }
}

/// Writes all of `wbuf` and hands it back empty; None when the connection failed.
async fn flush(stream: &mut TcpStream, wbuf: Vec<u8>) -> Option<Vec<u8>> {
    let (res, mut b) = stream.write_all(wbuf).await;
    b.clear();
    res.ok().map(|_| b)
}

/// Offset just past the first `\r\n\r\n` in `b` (SIMD search: the floor should not pay for a
/// byte-at-a-time scan the tracker does not do either).
fn find_head_end(b: &[u8]) -> Option<usize> {
    memchr::memmem::find(b, b"\r\n\r\n").map(|i| i + 4)
}
