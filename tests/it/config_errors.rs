//! Config errors name the file, line and key; check-config exits non-zero and lists them all.

use crate::harness::{wait_child, BIN};
use std::io::Read;
use std::process::{Command, Stdio};

#[test]
fn check_config_reports_every_error_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[server]\nlisten = \"nowhere\"\nshards = -1\n\n[[endpoint]]\npath = \"/x\"\nevent = \"missing\"\n\
         ack = \"durable\"\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    let f = p.display().to_string();
    assert!(err.contains(&format!("{f}:2: server.listen: \"nowhere\" is not an address")), "{err}");
    assert!(err.contains(&format!("{f}:3: server.shards: -1 is out of range")), "{err}");
    assert!(err.contains(&format!("{f}:7: endpoint[0].event: \"missing\" is not a declared event type")), "{err}");
    assert!(err.contains(&format!("{f}:8: endpoint[0].ack: \"durable\" is not one of \"received\", \"logged\": the durable mode is \"logged\"")), "{err}");

    // A syntax error names its line too, and `serve` refuses to start on it.
    std::fs::write(&p, "[server]\nshards = 1\nlisten = [\n").unwrap();
    let out = Command::new(BIN).arg("serve").arg("--config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with(&format!("{f}:")), "{err}");

    // The shipped example is valid.
    let ok = Command::new(BIN)
        .arg("check-config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/tracker.toml"))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

/// Regression: errors in the file's shape (an unknown key, a value of the wrong TOML type) were
/// reported one per run, the first serde met, so a file with several typos took as many runs.
/// Every one is now listed, each with its line, full key, the value and what was expected.
#[test]
fn check_config_lists_every_unknown_key_and_wrong_type_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shape.toml");
    std::fs::write(
        &p,
        "[server]\nlisten = \"127.0.0.1:8080\"\nshardz = 2\nring_events = \"lots\"\n\n[journal]\nsync = 5\n\n\
         [[endpoint]]\npath = \"/i\"\nevent = \"x\"\n\n[[endpoint]]\npath = \"/c\"\nevent = \"x\"\nack = 1\nrespnse = \"gif\"\n\n\
         [event.x]\nfields = [\n  { name = \"a\", source = \"query.a\", type = \"u64\" },\n  \
         { name = \"b\", source = \"query.b\", type = \"u64\", requried = true },\n  \
         { name = \"c\", source = \"query.c\", type = \"string\", max_bytes = \"big\" },\n]\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    let f = p.display().to_string();
    for want in [
        "3: server.shardz: unknown field `shardz`, expected one of `listen`, `shards`,",
        "4: server.ring_events: invalid type: string \"lots\", expected i64",
        "7: journal.sync: invalid type: integer `5`, expected a string",
        "16: endpoint[1].ack: invalid type: integer `1`, expected a string",
        "17: endpoint[1].respnse: unknown field `respnse`, expected one of `path`, `method`,",
        "22: event.x.fields[1].requried: unknown field `requried`, expected one of `name`, `source`,",
        "23: event.x.fields[2].max_bytes: invalid type: string \"big\", expected i64",
    ] {
        assert!(err.contains(&format!("{f}:{want}")), "missing {want:?} in:\n{err}");
    }
    assert_eq!(err.lines().count(), 7, "one line per error, none twice:\n{err}");
    // A typo one or two edits from a known key is named as the one likely meant (the unit test
    // in src/config has the cases with no guess).
    for (key, guess) in [("requried", "required"), ("respnse", "response"), ("shardz", "shards")] {
        let line = err.lines().find(|l| l.contains(&format!("unknown field `{key}`"))).unwrap();
        assert!(line.ends_with(&format!("; did you mean `{guess}`?")), "{line}");
    }
}

/// Regression: value errors (a number out of its range, a string not among the allowed ones)
/// were checked only once the file's shape was right, so a file with an unknown key and an
/// out-of-range value took one run to learn of the first and another for the second. Every key
/// whose own shape is fine is now validated in the same run, collector options included; what
/// would only follow from a key taken out (an endpoint naming an event type that had a shape
/// error, an identity naming a field that had one) is not reported.
#[test]
fn check_config_lists_shape_and_value_errors_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("both.toml");
    let text = "[server]\nlisten = \"127.0.0.1:8080\"\nshardz = 2\nring_events = \"lots\"\nshards = 9999\n\n\
                [[endpoint]]\npath = \"/i\"\nevent = \"x\"\n\n[[endpoint]]\npath = \"/v\"\nevent = \"v\"\n\n\
                [[endpoint]]\npath = \"/z\"\nevent = \"z\"\n\n\
                [event]\nv = \"video\"\n\n\
                [event.x]\nidentity = [\"a\"]\nfields = [\n  { name = \"a\", source = 1, type = \"u64\" },\n]\n\n\
                [event.z]\nfields = [ { name = \"n\", source = \"query.n\", type = \"u64\" } ]\n\n\
                [[collector]]\nname = \"j\"\nkind = \"jsonl\"\nevents = [\"z\"]\nfields = []\n\
                [collector.options]\npath = \"\"\n";
    std::fs::write(&p, text).unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    let f = p.display().to_string();
    let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let want = [
        format!("{f}:3: server.shardz: unknown field `shardz`, expected one of `listen`, `shards`,"),
        format!("{f}:4: server.ring_events: invalid type: string \"lots\", expected i64"),
        format!("{f}:5: server.shards: 9999 is out of range: expected 0..=256"),
        format!("{f}:{}: event.v: invalid type: string \"video\", expected a table", line("v = \"video\"")),
        format!("{f}:{}: event.x.fields[0].source: invalid type: integer `1`, expected a string", line("source = 1")),
        format!("{f}:{}: collector[0].options.path: empty", line("path = \"\"")),
    ];
    let got: Vec<&str> = err.lines().collect();
    assert_eq!(got.len(), want.len(), "one line per error, no consequence of a key taken out:\n{err}");
    for (got, want) in got.iter().zip(&want) {
        assert!(got.starts_with(want.as_str()), "{got:?} is not {want:?} in:\n{err}");
    }
    assert!(!err.contains("is not a declared event type") && !err.contains("is not a field"), "{err}");

    // `serve` refuses the file with the same list, the collector's option error included (it
    // used to stop at the rest and name the collector's only once the rest was fixed).
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config"])
        .arg(&p)
        .arg("--journal-dir")
        .arg(dir.path().join("journal"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8(out.stderr).unwrap(), err, "serve and check-config list the same errors");
}

/// Kafka settings librdkafka refuses are config errors, never an endless retry of the producer.
/// Regression (second half): librdkafka checks some settings only when a client is made
/// (`rd_kafka_new`), not when its configuration is: `max.in.flight` above 5 with the idempotent
/// producer, or a `producer_linger_ms` not below `timeout_ms`. check-config passed them, and the
/// collector then retried "create producer" forever while the events waited.
#[test]
fn kafka_settings_librdkafka_refuses_are_config_errors_not_an_endless_retry() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.toml");
    let cfg = tracker::config::DEFAULT_TOML.to_string()
        + "\n[[collector]]\nname = \"k\"\nkind = \"kafka\"\nevents = \"all\"\nfields = []\n\
           [collector.options]\nbrokers = \"127.0.0.1:9092\"\n@OPTIONS@\n";
    // check-config on the collector with `option` (lines): exit code, stderr, `file:line: ` of
    // the option's last line.
    let check = |option: &str| {
        let text = cfg.replace("@OPTIONS@", option);
        std::fs::write(&p, &text).unwrap();
        let line = text.lines().position(|l| l == option.lines().last().unwrap()).unwrap() + 1;
        let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap(), format!("{}:{line}: ", p.display()))
    };
    let (code, err, at) = check("properties = { \"no.such.prop\" = \"1\" }");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{at}collector[0].options.properties: librdkafka refuses")), "{err}");
    assert!(err.contains("no.such.prop"), "{err}");
    // A property the collector sets from its own keys is refused, not silently overridden.
    let (_, err, _) = check("properties = { \"linger.ms\" = \"100\" }");
    assert!(err.contains("\"linger.ms\" is set by the collector"), "{err}");
    // So is one under another name librdkafka gives the same setting.
    for alias in ["queue.buffering.max.ms", "request.required.acks", "metadata.broker.list", "delivery.timeout.ms"] {
        let (code, err, _) = check(&format!("properties = {{ \"{alias}\" = \"1\" }}"));
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(&format!("\"{alias}\" is set by the collector")), "{err}");
    }
    // TLS and SASL are built in: a managed cluster's settings pass librdkafka's own check.
    let (code, err, _) = check(
        "compression = \"zstd\"\nproperties = { \"security.protocol\" = \"sasl_ssl\", \"sasl.mechanisms\" = \
         \"SCRAM-SHA-512\", \"sasl.username\" = \"tracker\", \"sasl.password\" = \"secret\", \
         \"ssl.endpoint.identification.algorithm\" = \"https\" }",
    );
    assert_eq!(code, Some(0), "{err}");
    // Checked only when a producer is made.
    let (code, err, at) = check("properties = { \"max.in.flight\" = \"10\" }");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{at}collector[0].options.properties: librdkafka refuses")), "{err}");
    assert!(err.contains("max.in.flight"), "{err}");
    let (code, err, at) = check("timeout_ms = 1000\nproducer_linger_ms = 1000");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{at}collector[0].options.producer_linger_ms: 1000")), "{err}");
    assert!(err.contains("timeout_ms"), "{err}");
    // Still fine: TLS settings naming files of the host the tracker runs on are not read here.
    let (code, err, _) = check(
        "properties = { \"security.protocol\" = \"ssl\", \"ssl.ca.location\" = \"/nonexistent/ca.pem\", \
         \"max.in.flight\" = \"5\" }",
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_shards_flag_out_of_bounds_is_refused_like_the_key() {
    let out = std::process::Command::new(BIN).args(["serve", "--shards", "5000"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shards") && err.contains("0..=256"), "{err}");
}

/// Regression: a field's `default` is stored for every request that lacks the field, yet it was
/// not held to the field's own `one_of` or `min`/`max`: check-config passed and the journal got
/// values the field refuses from any client (a currency of "GBP" where only USD and EUR are
/// allowed, a negative price under `min = 0`).
#[test]
fn a_default_the_field_would_refuse_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.toml");
    std::fs::write(
        &p,
        "[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n\n[event.x]\nfields = [\n\
         \x20 { name = \"cur\", source = \"query.cur\", type = \"string\", max_bytes = 3, one_of = [\"USD\", \"EUR\"], default = \"GBP\" },\n\
         \x20 { name = \"price\", source = \"query.p\", type = \"money\", min = 0, default = \"-1.5\" },\n\
         \x20 { name = \"n\", source = \"query.n\", type = \"u32\", min = 10, max = 20, default = 21 },\n\
         \x20 { name = \"ok\", source = \"query.ok\", type = \"i64\", min = -5, max = 5, default = -5 },\n]\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    let f = p.display().to_string();
    assert!(err.contains(&format!("{f}:7: event.x.fields[0].default: \"GBP\" is not one of")), "{err}");
    assert!(err.contains(&format!("{f}:8: event.x.fields[1].default: \"-1.5\" is outside min..max")), "{err}");
    assert!(err.contains(&format!("{f}:9: event.x.fields[2].default: \"21\" is outside min..max")), "{err}");
    assert_eq!(err.lines().count(), 3, "a default at a bound is allowed: {err}");
}

/// Regression: a schema too large for `journal.segment_bytes` passed check-config, then `serve`
/// failed at the journal's open with exit 1 and no file or line: a config error that only a
/// start found.
#[test]
fn a_schema_that_does_not_fit_a_segment_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.toml");
    let mut text = String::from("[journal]\nsegment_bytes = 65536\n\n[[endpoint]]\npath = \"/x\"\nevent = \"t0\"\n");
    // 120 types of 10 fields: ~90 KB of schema JSON, more than a 64 KiB segment holds.
    for t in 0..120 {
        text.push_str(&format!("[event.t{t}]\nfields = [\n"));
        for f in 0..10 {
            text.push_str(&format!(
                "  {{ name = \"a_long_field_name_{f}\", source = \"query.f{f}\", type = \"u64\" }},\n"
            ));
        }
        text.push_str("]\n");
    }
    std::fs::write(&p, &text).unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{}:2: journal.segment_bytes: 65536 cannot hold", p.display())), "{err}");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--journal-dir"])
        .arg(dir.path().join("j"))
        .arg("--config")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    // With room for it, the same types are fine.
    std::fs::write(&p, text.replace("segment_bytes = 65536", "segment_bytes = 1048576")).unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_config_file_without_endpoints_is_refused_not_served_as_404s() {
    // A file replaces the embedded default whole; one that only tunes a section used to pass
    // check-config and then answer every request 404.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("partial.toml");
    std::fs::write(&p, "[server]\nshards = 1\n").unwrap();
    let f = p.display().to_string();
    let want = format!("{f}:1: endpoint: no [[endpoint]] table: every request would get 404");
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(&want), "{err}");
    let mut serve = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--journal-dir"])
        .arg(dir.path().join("journal"))
        .arg("--config")
        .arg(&p)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a server that started anyway would never exit on its own.
    let status = wait_child(&mut serve, "on a config without endpoints");
    assert_eq!(status.code(), Some(2));
    let mut err = String::new();
    serve.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains(&want), "{err}");
}

/// Regression: the admin listener and the public one both bind with SO_REUSEPORT, so giving them
/// the same address (or one the other's wildcard covers) was accepted by check-config and by
/// serve, and the kernel split connections between them: pixels answered 404 by the admin
/// listener (events never taken), readiness probes answered 404 by the shards. It is now a
/// config error, and `serve` refuses the same clash made by its flags before binding anything.
#[test]
fn an_admin_address_that_shares_the_public_listener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("clash.toml");
    let text = tracker::config::DEFAULT_TOML.replace("listen = \"127.0.0.1:9090\"", "listen = \"127.0.0.1:8080\"");
    assert!(text.contains("listen = \"0.0.0.0:8080\""), "config/tracker.toml's listen lines changed; update this test");
    let line = text.lines().position(|l| l == "listen = \"127.0.0.1:8080\"").unwrap() + 1;
    std::fs::write(&p, &text).unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{}:{line}: admin.listen: \"127.0.0.1:8080\"", p.display())), "{err}");
    assert!(err.contains("server.listen \"0.0.0.0:8080\""), "{err}");

    // The flags: a port this test holds (without SO_REUSEPORT), so nothing else can be hit.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let mut serve = Command::new(BIN)
        .args(["serve", "--shards", "1", "--listen", &addr, "--admin-listen", &addr, "--journal-dir"])
        .arg(dir.path().join("journal"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = wait_child(&mut serve, "of a clashing --admin-listen").code();
    let mut err = String::new();
    serve.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("admin.listen / --admin-listen {addr}")), "{err}");
    assert!(!dir.path().join("journal").exists(), "serve went on to open the journal");
}

/// `privacy.referer` takes one of its four modes.
#[test]
fn privacy_referer_is_one_of_its_modes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.toml");
    std::fs::write(&p, "[privacy]\nip = \"keep\"\nreferer = \"query\"\n\n[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\nfields = []\n").unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    let f = p.display().to_string();
    assert!(
        err.contains(&format!(
            "{f}:3: privacy.referer: \"query\" is not one of \"path\", \"origin\", \"full\", \"drop\""
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// A referer field may not hold what `privacy.referer` would not store: a `default` it would
/// rewrite (the journal would get a value no request can give), or an id read from the Referer
/// (an unkeyed hash of the whole URL, query included, kept even on an opt-out).
#[test]
fn a_referer_fields_default_and_id_source_keep_to_privacy_referer() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.toml");
    let f = p.display().to_string();
    let event = "[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n\n[event.x]\nid_from = [\"query.eid\", \"header.Referer\"]\nfields = [\n\
                 \x20 { name = \"r\", source = \"request.referer\", type = \"string\", max_bytes = 64, default = \"https://a.example/b\" },\n]\n";
    let check = |text: &str| {
        std::fs::write(&p, text).unwrap();
        let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{err}");
        err
    };
    let err = check(&format!("[privacy]\nreferer = \"origin\"\n{event}"));
    assert!(err.contains(&format!("{f}:8: event.x.id_from: \"header.Referer\" reads the Referer")), "{err}");
    assert!(
        err.contains(&format!(
            "{f}:10: event.x.fields[0].default: \"https://a.example/b\" would be stored as \"https://a.example\" under privacy.referer = \"origin\""
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 2, "{err}");
    // Under the default (path) that default is stored as written; the id source is refused
    // whatever the mode.
    let err = check(&event.replace("\"query.eid\", ", ""));
    assert!(err.contains(&format!("{f}:6: event.x.id_from: \"header.Referer\" reads the Referer")), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `privacy.tcf_vendor_id` is a GVL vendor id (1..=65535) or 0; anything else is named with
/// file, line and key.
#[test]
fn privacy_tcf_vendor_id_is_a_vendor_id_or_0() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.toml");
    let f = p.display().to_string();
    for (value, why) in [
        ("65536", "65536 is out of range: expected 0..=65535"),
        ("-755", "-755 is out of range: expected 0..=65535"),
        ("\"755\"", "invalid type: string \"755\", expected i64"),
    ] {
        std::fs::write(
            &p,
            format!("[privacy]\ngdpr = \"enforce\"\ntcf_vendor_id = {value}\n\n[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\nfields = [\n  {{ name = \"gdpr\", source = \"query.gdpr\", type = \"u32\" }},\n  {{ name = \"gdpr_consent\", source = \"query.gdpr_consent\", type = \"string\", max_bytes = 256 }},\n]\n"),
        )
        .unwrap();
        let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{value}: {err}");
        assert!(err.contains(&format!("{f}:3: privacy.tcf_vendor_id: {why}")), "{value}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    std::fs::write(&p, std::fs::read_to_string(&p).unwrap().replace("tcf_vendor_id = \"755\"", "tcf_vendor_id = 755"))
        .unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `privacy.gdpr_unknown` is one of its two words, "applies" only where something acts on it
/// (gdpr = "enforce", a consent field in some type); each error names file, line and key.
#[test]
fn privacy_gdpr_unknown_applies_only_where_it_can_act() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("u.toml");
    let f = p.display().to_string();
    let fields = "  { name = \"gdpr\", source = \"query.gdpr\", type = \"u32\" },\n  { name = \"gdpr_consent\", source = \"query.gdpr_consent\", type = \"string\", max_bytes = 256 },\n";
    let config = |privacy: &str, fields: &str| {
        format!(
            "[privacy]\n{privacy}\n\n[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\nfields = [\n{fields}]\n"
        )
    };
    for (privacy, fields, why) in [
        ("gdpr = \"enforce\"\ngdpr_unknown = \"yes\"", fields, "\"yes\" is not one of \"not_applicable\", \"applies\""),
        (
            "gdpr = \"record\"\ngdpr_unknown = \"applies\"",
            fields,
            "\"applies\" acts only with privacy.gdpr = \"enforce\" (here \"record\": nothing is enforced)",
        ),
        (
            "gdpr = \"record\"\ngdpr_unknown = \"applies\"",
            "  { name = \"n\", source = \"query.n\", type = \"u32\" },\n",
            "\"applies\" acts only with privacy.gdpr = \"enforce\" (here \"record\": nothing is enforced)",
        ),
    ] {
        std::fs::write(&p, config(privacy, fields)).unwrap();
        let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{privacy}: {err}");
        assert!(err.contains(&format!("{f}:3: privacy.gdpr_unknown: {why}")), "{privacy}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // gdpr = "enforce" by default; with no consent field anywhere "applies" could act on nothing.
    std::fs::write(
        &p,
        config("gdpr_unknown = \"applies\"", "  { name = \"n\", source = \"query.n\", type = \"u32\" },\n"),
    )
    .unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{f}:2: privacy.gdpr_consent_field: \"gdpr_consent\" is not a field of any event type")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // Only the consent field is needed: a VAST-like type without a gdpr field is judged by it.
    let consent_only =
        "  { name = \"gdpr_consent\", source = \"query.gdpr_consent\", type = \"string\", max_bytes = 256 },\n";
    std::fs::write(&p, config("gdpr_unknown = \"applies\"", consent_only)).unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Regression: with no shape error, value errors came out in validation order (event types
/// before `[privacy]`), not in the order of their lines as README promises.
#[test]
fn check_config_lists_value_errors_in_the_order_of_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.toml");
    let referer = "\nreferer = \"path\"\n";
    let campaign = "{ name = \"campaign_id\",   source = \"query.c\",   type = \"u64\", required = true },";
    let base = tracker::config::DEFAULT_TOML;
    assert!(base.contains(referer) && base.contains(campaign));
    let text =
        base.replace(referer, "\nreferer = \"query\"\n").replacen(campaign, &campaign.replace("u64", "float"), 1);
    std::fs::write(&p, &text).unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<usize> = err
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{}:", p.display()))?.split(':').next()?.parse().ok())
        .collect();
    assert!(lines.len() >= 2, "{err}");
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}\n{err}");
    assert!(err.contains("privacy.referer") && err.contains("float"), "{err}");
}
