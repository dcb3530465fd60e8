//! The public listener: one socket per shard on the same address with SO_REUSEPORT, so the
//! kernel spreads new connections across shards and a second process (zero-downtime restart)
//! can bind the same port while the first drains.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel queues per shard socket before accept.
pub const LISTEN_BACKLOG: i32 = 4096;

pub fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(s.into())
}

/// Binds one listener per shard. With port 0 the first socket picks the port and the others
/// join it, so all shards serve the same address.
pub fn bind_shards(addr: SocketAddr, shards: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_reuseport(addr)?;
    let actual = first.local_addr()?;
    let mut v = vec![first];
    for _ in 1..shards {
        v.push(bind_reuseport(actual)?);
    }
    Ok(v)
}
