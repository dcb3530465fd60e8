//! The collector commands: `tracker privacy-manifest` and `tracker journal replay`.

use std::fmt::Write as _;
use std::path::Path;

use super::cursor::{self, Position};
use super::project::manifest;
use super::source::ShardSource;
use crate::config::Config;
use crate::journal::{parse_shard_dir_name, segment_created_ns, shard_dir};

/// Per collector: its kind, destination options and, per attached event type, the fields that
/// leave the process (the envelope always does).
pub fn privacy_manifest(cfg: &Config) -> String {
    let mut out = String::new();
    write_privacy_step(cfg, &mut out);
    if cfg.collectors.is_empty() {
        out.push_str("no collectors: no event leaves the process (the journal stays on this host)\n");
        return out;
    }
    for c in &cfg.collectors {
        let _ = writeln!(out, "collector \"{}\" (kind {}):", c.name, c.kind);
        for (k, (_, v)) in &c.options.entries {
            if matches!(k.as_str(), "url" | "brokers" | "path" | "topic") {
                let _ = writeln!(out, "  destination {k} = {v}");
            }
        }
        let _ = writeln!(out, "  every event: type, id, ts, ts_ns, shard, seq");
        for (ty, fields) in manifest(&cfg.schema, &c.events, &c.fields) {
            let list = if fields.is_empty() { "(no fields)".to_string() } else { fields.join(", ") };
            let _ = writeln!(out, "  {ty}: {list}");
        }
    }
    out
}

/// What the privacy step (`enrich::privacy`) does to values before anything stores or sends
/// them: the journal and every collector see only its output.
fn write_privacy_step(cfg: &Config, out: &mut String) {
    use crate::enrich::privacy::{GdprMode, IpPolicy, RefererPolicy};
    let p = &cfg.privacy;
    out.push_str("values as stored (privacy step, before the journal and every collector):\n");
    let _ = match p.ip {
        IpPolicy::Truncate => {
            writeln!(out, "  ip fields: truncated to /{} (IPv4), /{} (IPv6)", p.ipv4_prefix_bits, p.ipv6_prefix_bits)
        }
        IpPolicy::Drop => writeln!(out, "  ip fields: dropped"),
        IpPolicy::Keep => writeln!(out, "  ip fields: kept whole"),
    };
    let _ = writeln!(
        out,
        "  referer fields: {}",
        match p.referer {
            RefererPolicy::Path => "scheme://host[:port]/path (no query, fragment or user info)",
            RefererPolicy::Origin => "scheme://host[:port] only",
            RefererPolicy::Full => "as received",
            RefererPolicy::Drop => "dropped",
        }
    );
    let hashed: Vec<String> = cfg
        .types
        .iter()
        .flat_map(|t| {
            let mask = p.user_id_fields.get(t.id as usize).copied().unwrap_or(0);
            t.fields
                .iter()
                .enumerate()
                .filter(move |(i, _)| mask & (1 << i) != 0)
                .map(move |(_, f)| format!("{}.{}", t.name, f.name))
        })
        .collect();
    if !hashed.is_empty() {
        let rotation = match p.hash_rotate_s {
            0 => "never rotated".to_string(),
            s => format!("rotated every {s} s"),
        };
        let _ = writeln!(out, "  user id fields, keyed hash {rotation}: {}", hashed.join(", "));
    }
    let mut signals = Vec::new();
    if p.honor_gpc {
        signals.push("Sec-GPC".to_string());
    }
    if p.honor_dnt {
        signals.push("DNT".to_string());
    }
    if !p.optout_cookie.is_empty() {
        signals.push(format!("cookie \"{}\"", p.optout_cookie));
    }
    if !signals.is_empty() {
        let _ = writeln!(out, "  opt-out ({}): user ids, ips and referers removed", signals.join(", "));
    }
    let gdpr_types: Vec<&str> = cfg
        .types
        .iter()
        .filter(|t| {
            // A type with only a consent field is judged too when an unsaid GDPR applies.
            let unknown = p.gdpr_unknown_applies && p.gdpr == GdprMode::Enforce;
            p.gdpr_fields.get(t.id as usize).is_some_and(|f| f.applies.is_some() || (unknown && f.consent.is_some()))
        })
        .map(|t| t.name.as_str())
        .collect();
    if gdpr_types.is_empty() {
        return;
    }
    let _ = match p.gdpr {
        GdprMode::Enforce => writeln!(
            out,
            "  gdpr consent (enforced; {}): with GDPR applying{} and no IAB TCF v2 consent to Purpose 1{}, user ids, ips and referers removed",
            gdpr_types.join(", "),
            if p.gdpr_unknown_applies { " (or not said)" } else { "" },
            p.tcf_vendor_id.map_or(String::new(), |v| format!(" and to vendor {v}"))
        ),
        GdprMode::Record => writeln!(out, "  gdpr consent (recorded, not enforced; {})", gdpr_types.join(", ")),
    };
}

/// Unix ns from RFC 3339 UTC (`2026-11-26T08:00:00Z`, fractions allowed) or unix seconds.
pub fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs.saturating_mul(1_000_000_000));
    }
    let bad = || format!("\"{s}\": expected RFC 3339 UTC such as 2026-11-26T08:00:00Z, or unix seconds");
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b'T' && b[10] != b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok()).ok_or_else(bad);
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = &s[19..];
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let digits = r.bytes().take_while(|c| c.is_ascii_digit()).count();
            let mut ns = 0u64;
            for (i, c) in r[..digits].bytes().take(9).enumerate() {
                ns += (c - b'0') as u64 * 10u64.pow(8 - i as u32);
            }
            (ns, &r[digits..])
        }
        None => (0, rest),
    };
    if zone != "Z" || !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    if secs < 0 {
        return Err(bad());
    }
    // Past 2554 the nanoseconds do not fit a u64 (the unix-seconds form saturates alike).
    Ok((secs as u64).saturating_mul(1_000_000_000).saturating_add(frac))
}

/// Moves collector `name`'s cursor of every shard back to `--from-segment N` or to the start of
/// the last segment created at or before `--from-time T` (never forward). Refuses while the
/// collector runs. Returns what it did, one line per shard.
pub fn replay(
    journal: &Path,
    name: &str,
    from_time: Option<&str>,
    from_segment: Option<u64>,
) -> Result<String, String> {
    // Both checked before the lock, which creates <journal>/collectors/<name>/: a wrong
    // --journal-dir or a misspelt name must fail, not make that tree and report a replay that
    // moved nothing.
    let mut shards: Vec<u16> = std::fs::read_dir(journal)
        .map_err(|e| format!("read {}: {e}; give the journal root (journal.dir)", journal.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(parse_shard_dir_name))
        .collect();
    if shards.is_empty() {
        return Err(format!(
            "no shard-NNN directory under {}: not a journal root; give journal.dir",
            journal.display()
        ));
    }
    shards.sort_unstable();
    if !cursor::collector_dir(journal, name).is_dir() {
        let mut known: Vec<String> = std::fs::read_dir(journal.join("collectors"))
            .map(|d| {
                d.flatten().filter(|e| e.path().is_dir()).filter_map(|e| e.file_name().into_string().ok()).collect()
            })
            .unwrap_or_default();
        known.sort_unstable();
        return Err(format!(
            "collector \"{name}\" has never run on the journal {} (known: {}): no cursor to move back",
            journal.display(),
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        ));
    }
    let _lock = cursor::lock(journal, name).map_err(|e| e.to_string())?;
    let at_ns = from_time.map(parse_time).transpose()?;
    let mut out = String::new();
    for shard in shards {
        let source = ShardSource::new(journal, shard);
        let segments = source.segments().map_err(|e| e.to_string())?;
        // The segment asked for, which retention may have deleted.
        let asked = match (from_segment, at_ns) {
            (Some(n), _) => n,
            (None, Some(t)) => {
                let dir = shard_dir(journal, shard);
                // Before every segment left: the start of the journal was asked for.
                let mut chosen = 1;
                for &n in &segments {
                    if segment_created_ns(&dir, shard, n).is_some_and(|created| created <= t) {
                        chosen = n;
                    }
                }
                chosen
            }
            (None, None) => return Err("give --from-segment N or --from-time T".into()),
        };
        // Segments are numbered from 1.
        let asked = asked.max(1);
        // The collector starts at the first segment left; the line says so, and that the ones
        // before it are gone, rather than promising a delivery from a segment that is deleted.
        let first = segments.first().copied().unwrap_or(asked);
        let target = asked.max(first);
        let gone = if asked >= first {
            String::new()
        } else if first - asked == 1 {
            format!(" (segment {asked} is deleted: delivery starts at segment {first})")
        } else {
            format!(" (segments {asked}..={} are deleted: delivery starts at segment {first})", first - 1)
        };
        let dir = cursor::collector_shard_dir(journal, name, shard);
        let current = cursor::read_cursor(&dir).map_err(|e| e.to_string())?.unwrap_or_default();
        let new = Position { segment: target, index: 0 };
        if new >= current {
            let _ = writeln!(
                out,
                "shard {shard}: cursor {} {} is not after segment {target}; unchanged",
                current.segment, current.index
            );
            continue;
        }
        // Stamped like the runner's cursors, so that a wipe of this journal is noticed from it too.
        let created = segment_created_ns(&shard_dir(journal, shard), shard, target);
        cursor::write_cursor_stamped(&dir, new, created).map_err(|e| e.to_string())?;
        let _ = writeln!(out, "shard {shard}: cursor {} {} → {} 0{gone}", current.segment, current.index, target);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("0").unwrap(), 0);
        assert_eq!(parse_time("2000-02-29T00:00:00.000000001Z").unwrap(), 951_782_400_000_000_001);
        assert_eq!(parse_time("2026-11-26T07:42:02.5Z").unwrap(), 1_795_678_922_500_000_000);
        assert!(parse_time("2026-11-26T07:42:02+01:00").is_err());
        assert!(parse_time("yesterday").is_err());
        // Regression: a time past 2554 overflowed the nanoseconds (a panic in debug builds, a
        // wrap to an earlier time in release ones).
        assert_eq!(parse_time("2600-01-01T00:00:00Z").unwrap(), u64::MAX);
        assert_eq!(parse_time("2554-07-21T23:34:33.709551615Z").unwrap(), u64::MAX);
    }

    #[test]
    fn the_privacy_manifest_names_the_vendor_whose_consent_is_enforced() {
        let line = "with GDPR applying and no IAB TCF v2 consent to Purpose 1";
        let mut cfg = Config::embedded();
        let text = privacy_manifest(&cfg);
        assert!(text.contains(&format!("{line}, user ids, ips and referers removed\n")), "{text}");
        cfg.privacy.tcf_vendor_id = std::num::NonZeroU16::new(755);
        let text = privacy_manifest(&cfg);
        assert!(text.contains(&format!("{line} and to vendor 755, user ids, ips and referers removed\n")), "{text}");
    }

    #[test]
    fn the_privacy_manifest_says_when_an_unsaid_gdpr_applies_and_to_which_types() {
        let mut cfg = Config::embedded();
        let text = privacy_manifest(&cfg);
        assert!(text.contains("(enforced; click, conversion, impression): with GDPR applying and no"), "{text}");
        cfg.privacy.gdpr_unknown_applies = true;
        let text = privacy_manifest(&cfg);
        let line = "(enforced; click, conversion, impression, video): with GDPR applying (or not said) and no";
        assert!(text.contains(line), "{text}");
    }
}
