//! The Kafka collector over TLS, end to end: librdkafka (vendored OpenSSL) verifies a broker
//! certificate issued by a CA made here and delivers through a TLS-terminating proxy in front of
//! tansu, which serves plaintext only. tansu advertises the proxy's address, so every
//! connection the producer and the consumer make, bootstrap and broker alike, is TLS.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslMethod};
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

use crate::harness::*;
use crate::kafka::{consume_with, kafka_collector, send, Broker};

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn builder(cn: &str, serial: u32, key: &PKey<Private>) -> X509Builder {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap()).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
    b
}

/// A CA, and a certificate it issued for 127.0.0.1 (and localhost) with its key.
fn certificates() -> (X509, X509, PKey<Private>) {
    let ca_key = ec_key();
    let mut ca = builder("tracker test CA", 1, &ca_key);
    ca.set_issuer_name(
        X509NameBuilder::new()
            .map(|mut n| {
                n.append_entry_by_text("CN", "tracker test CA").unwrap();
                n.build()
            })
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    ca.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
    ca.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().unwrap()).unwrap();
    ca.sign(&ca_key, MessageDigest::sha256()).unwrap();
    let ca = ca.build();

    let key = ec_key();
    let mut leaf = builder("127.0.0.1", 2, &key);
    leaf.set_issuer_name(ca.subject_name()).unwrap();
    let san =
        SubjectAlternativeName::new().ip("127.0.0.1").dns("localhost").build(&leaf.x509v3_context(Some(&ca), None));
    leaf.append_extension(san.unwrap()).unwrap();
    leaf.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap()).unwrap();
    leaf.sign(&ca_key, MessageDigest::sha256()).unwrap();
    (ca, leaf.build(), key)
}

/// Terminates TLS on `port` and forwards the plaintext to 127.0.0.1:`upstream`.
struct TlsProxy {
    port: u16,
    handshakes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl TlsProxy {
    fn start(listener: TcpListener, upstream: u16, cert: &X509, key: &PKey<Private>, ca: &X509) -> TlsProxy {
        let mut a = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        a.set_private_key(key).unwrap();
        a.set_certificate(cert).unwrap();
        a.add_extra_chain_cert(ca.clone()).unwrap();
        let acceptor = Arc::new(a.build());
        let port = listener.local_addr().unwrap().port();
        let (handshakes, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (h, st) = (handshakes.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (acceptor, h, st) = (acceptor.clone(), h.clone(), st.clone());
                std::thread::spawn(move || {
                    let Ok(tls) = acceptor.accept(conn) else { return };
                    h.fetch_add(1, SeqCst);
                    pump(tls, upstream, &st);
                });
            }
        });
        TlsProxy { port, handshakes, stop }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies bytes both ways until either side closes. One thread per connection: short read
/// timeouts on both sockets take turns.
fn pump(mut tls: openssl::ssl::SslStream<TcpStream>, upstream: u16, stop: &AtomicBool) {
    let Ok(mut plain) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
    let tick = Some(std::time::Duration::from_millis(2));
    if tls.get_ref().set_read_timeout(tick).is_err() || plain.set_read_timeout(tick).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let idle = |e: &std::io::Error| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
    while !stop.load(SeqCst) {
        match tls.read(&mut buf) {
            Ok(0) => return,
            Ok(n) if plain.write_all(&buf[..n]).is_err() => return,
            Ok(_) => {}
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
        match plain.read(&mut buf) {
            Ok(0) => return,
            Ok(n) if tls.write_all(&buf[..n]).is_err() => return,
            Ok(_) => {}
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
    }
}

fn write_pem(path: &Path, cert: &X509) {
    std::fs::write(path, cert.to_pem().unwrap()).unwrap();
}

#[test]
fn events_reach_kafka_over_tls_verified_against_the_configured_ca() {
    let (ca, cert, key) = certificates();
    // The proxy's port first: tansu advertises it as the broker's address.
    let tls_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_port = tls_listener.local_addr().unwrap().port();
    let broker = Broker::start_advertising(tls_port);
    let proxy = TlsProxy::start(tls_listener, broker.port, &cert, &key, &ca);
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    write_pem(&ca_path, &ca);
    let tls = [("security.protocol", "ssl"), ("ssl.ca.location", ca_path.to_str().unwrap())];

    let properties: Vec<String> = tls.iter().map(|(k, v)| format!("\"{k}\" = \"{v}\"")).collect();
    let cfg = kafka_collector(tls_port, 30_000) + &format!("properties = {{ {} }}\n", properties.join(", "));
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    send(&s, 0..300);
    let got = consume_with(tls_port, 300, 300, &tls);
    assert_eq!(got.len(), 300, "distinct ids");
    assert!(got.values().all(|(n, _, _)| *n == 1));
    assert_eq!(s.stop(), 0);
    // Producer and consumer both came in through the proxy, in TLS.
    assert!(proxy.handshakes.load(SeqCst) >= 2, "{} TLS handshakes", proxy.handshakes.load(SeqCst));
}

#[test]
fn a_broker_certificate_from_another_ca_is_refused() {
    let (ca, cert, key) = certificates();
    let (other_ca, _, _) = certificates();
    let tls_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_port = tls_listener.local_addr().unwrap().port();
    let broker = Broker::start_advertising(tls_port);
    let proxy = TlsProxy::start(tls_listener, broker.port, &cert, &key, &ca);
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("other-ca.pem");
    write_pem(&ca_path, &other_ca);
    let cfg = kafka_collector(tls_port, 2_000)
        + &format!(
            "properties = {{ \"security.protocol\" = \"ssl\", \"ssl.ca.location\" = \"{}\" }}\n",
            ca_path.display()
        );
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    send(&s, 0..10);
    // librdkafka says why in the log: the certificate does not verify.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !seen.iter().any(|l: &String| l.contains("certificate verify failed")) {
        assert!(std::time::Instant::now() < deadline, "no verification failure logged: {seen:?}");
        seen.extend(s.stderr_lines());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(proxy.handshakes.load(SeqCst), 0);
    assert_eq!(s.stop(), 0);
}
