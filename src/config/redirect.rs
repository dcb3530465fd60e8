//! `[endpoint.redirect]` → [`RedirectRule`]: the landing-URL parameter, the allowlist, the
//! signing keys (inline hex or a key file, read here at load, never on the request path) and
//! which fields are signed. Errors name the file, line and key like the rest of validation.

use super::keys::{spec, REDIRECT_KEYS};
use super::raw::{RawEndpoint, RawKey, RawRedirect, S};
use super::{EventType, Method, ResponseKind, Source, Validator};
use crate::redirect::{Domain, Key, RedirectRule, Require};

/// Shortest signing secret accepted: 32 bytes, the HMAC-SHA256 block-size guidance of RFC 2104
/// (a shorter key is easier to brute-force from one signed URL).
const KEY_BYTES_MIN: usize = 32;
const KEY_BYTES_MAX: usize = 128;

impl Validator<'_> {
    pub(super) fn endpoint_redirect(
        &mut self,
        i: usize,
        r: &RawEndpoint,
        response: ResponseKind,
        method: Method,
        ty: Option<&EventType>,
    ) -> Option<Box<RedirectRule>> {
        let key = |k: &str| format!("endpoint[{i}].redirect.{k}");
        match (&r.redirect, response) {
            (None, ResponseKind::Redirect) => {
                let span = r.response.as_ref().map(|s| s.span()).unwrap_or(r.path.span());
                self.err(
                    span,
                    format!("endpoint[{i}].redirect"),
                    "response = \"redirect\" needs an [endpoint.redirect] table (param, require, allow_domains, keys)",
                );
                None
            }
            (Some(rr), ResponseKind::Redirect) => {
                if method != Method::Get {
                    let span = r.method.as_ref().map(|s| s.span()).unwrap_or(r.path.span());
                    self.err(span, format!("endpoint[{i}].method"), "a redirect endpoint must be GET");
                }
                Some(Box::new(self.redirect_rule(r.path.get_ref(), rr.get_ref(), rr.span(), ty, &key)))
            }
            (Some(rr), _) => {
                self.err(rr.span(), format!("endpoint[{i}].redirect"), "only for response = \"redirect\"");
                None
            }
            (None, _) => None,
        }
    }

    /// `path` is the endpoint's path as written in the file (already checked by the caller to
    /// hold no space or control byte): the signatures this rule verifies are bound to it.
    fn redirect_rule(
        &mut self,
        path: &str,
        r: &RawRedirect,
        span: std::ops::Range<usize>,
        ty: Option<&EventType>,
        key: &dyn Fn(&str) -> String,
    ) -> RedirectRule {
        let param = match &r.param {
            None => "url".to_string(),
            Some(p) => {
                let v = p.get_ref();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                    self.err_own(
                        p.span(),
                        key("param"),
                        format!("\"{v}\": expected a parameter name of letters, digits, '_' or '-'"),
                    );
                } else if crate::redirect::SIGNATURE_PARAMS.contains(&v.as_str()) {
                    self.err_own(
                        p.span(),
                        key("param"),
                        format!(
                            "\"{v}\" is a parameter of the signature (sig, exp, kid): choose another, e.g. \"url\""
                        ),
                    );
                }
                v.clone()
            }
        };
        let require = self.choice(
            &r.require,
            &key("require"),
            spec(REDIRECT_KEYS, "require"),
            &[
                ("allowlist", Require::Allowlist),
                ("signature", Require::Signature),
                ("either", Require::Either),
                ("both", Require::Both),
            ],
        );
        let mut allow = Vec::new();
        if let Some(list) = &r.allow_domains {
            for d in list.get_ref() {
                match Domain::parse(d.get_ref()) {
                    Ok(dom) => allow.push(dom),
                    Err(why) => self.err_own(d.span(), key("allow_domains"), why),
                }
            }
        }
        let keys: Vec<Key> = self.load_keys(&r.key, &key("key")).iter().map(|(id, s)| Key::new(id, s)).collect();
        if matches!(require, Require::Signature | Require::Either | Require::Both) && r.key.is_empty() {
            let span = r.require.as_ref().map(|s| s.span()).unwrap_or(span.clone());
            self.err(span, key("require"), "a signature is required but no [[endpoint.redirect.key]] is configured");
        }
        let mut signed = Vec::new();
        if let Some(ty) = ty {
            let names: Vec<(String, std::ops::Range<usize>)> = match &r.signed_fields {
                Some(list) => list.get_ref().iter().map(|n| (n.get_ref().clone(), n.span())).collect(),
                None => ty.identity.iter().map(|&f| (ty.fields[f].name.clone(), span.clone())).collect(),
            };
            for (n, sp) in names {
                match ty.fields.iter().find(|f| f.name == n) {
                    Some(f) => match &f.source {
                        Source::Query(p) if crate::redirect::SIGNATURE_PARAMS.contains(&p.as_str()) || *p == param => {
                            self.err(
                                sp,
                                key("signed_fields"),
                                format!(
                                    "\"{n}\" is read from query.{p}, a parameter of the signature or the landing URL: \
                                 read it from another parameter"
                                ),
                            )
                        }
                        Source::Query(p) => signed.push((n.clone(), p.clone())),
                        _ => self.err(
                            sp,
                            key("signed_fields"),
                            format!("\"{n}\" is not read from the query: only query fields can be signed"),
                        ),
                    },
                    None => self.err(sp, key("signed_fields"), format!("\"{n}\" is not a field of event.{}", ty.name)),
                }
            }
        }
        // A signature over the URL alone lets anyone rewrite the click's campaign or creative
        // and keep the signature: refuse that unless the file asks for it (signed_fields = []).
        if matches!(require, Require::Signature | Require::Either | Require::Both)
            && signed.is_empty()
            && r.signed_fields.is_none()
            && ty.is_some()
        {
            self.err(
                span.clone(),
                key("signed_fields"),
                "the signature would cover the landing URL only (the event type has no identity fields): list the query fields a signed click carries, e.g. signed_fields = [\"campaign_id\", \"creative_id\"], or signed_fields = [] to sign the URL alone",
            );
        }
        // A signed click's id comes from its identity fields (extract: never an `eid` the
        // signature does not cover). One left unsigned, anyone holding a signed URL could vary
        // it and mint clicks with ids of their choosing, each journaled.
        if let (Some(ty), Some(list), true) =
            (ty, &r.signed_fields, matches!(require, Require::Signature | Require::Either | Require::Both))
        {
            for &i in &ty.identity {
                let name = &ty.fields[i].name;
                if !signed.iter().any(|(n, _)| n == name) {
                    self.err(
                        list.span(),
                        key("signed_fields"),
                        format!(
                            "identity field \"{name}\" of event.{} is not signed: a signed click's id comes from its \
                             identity fields, so anyone holding one signed URL could vary it and mint clicks; add it to \
                             signed_fields, or take it out of the type's identity",
                            ty.name
                        ),
                    );
                }
            }
        }
        let ttl = self.int_at(
            &r.signature_ttl_max_s,
            &key("signature_ttl_max_s"),
            spec(REDIRECT_KEYS, "signature_ttl_max_s"),
        );
        let identity_params = ty
            .map(|t| {
                t.identity.iter().filter_map(|&i| match &t.fields[i].source {
                    Source::Query(p) => Some(p.clone()),
                    _ => None,
                })
            })
            .into_iter()
            .flatten()
            .collect();
        RedirectRule {
            path: path.to_string(),
            param,
            require,
            allow,
            keys,
            signed,
            identity_params,
            ttl_max_s: ttl as u64,
        }
    }
}

impl Validator<'_> {
    /// Signing keys (`[[...key]]`: id + secret_hex or file), read and checked: (id, secret).
    pub(super) fn load_keys(&mut self, list: &[S<RawKey>], key: &str) -> Vec<(String, Vec<u8>)> {
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        for (i, k) in list.iter().enumerate() {
            // `redirect.key[1].secret_hex`: which of the keys, as shape errors name it.
            let key = &format!("{key}[{i}]");
            let k = k.get_ref();
            let id = k.id.get_ref();
            if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                self.err_own(
                    k.id.span(),
                    format!("{key}.id"),
                    format!("\"{id}\": expected 1..=64 letters, digits, '-', '_' or '.'"),
                );
            }
            if keys.iter().any(|(o, _)| o == id) {
                self.err(k.id.span(), format!("{key}.id"), format!("\"{id}\" is listed twice"));
            }
            let hex = match (&k.secret_hex, &k.file) {
                (Some(h), None) => Some((h.get_ref().clone(), h.span(), "secret_hex")),
                (None, Some(f)) => match std::fs::read_to_string(f.get_ref()) {
                    Ok(text) => Some((text.trim().to_string(), f.span(), "file")),
                    Err(e) => {
                        self.err_own(
                            f.span(),
                            format!("{key}.file"),
                            format!("cannot read key file \"{}\": {e}", f.get_ref()),
                        );
                        None
                    }
                },
                _ => {
                    self.err(k.id.span(), key.to_string(), "give exactly one of secret_hex or file");
                    None
                }
            };
            if let Some((hex, span, which)) = hex {
                match decode_hex(&hex) {
                    Some(s) if (KEY_BYTES_MIN..=KEY_BYTES_MAX).contains(&s.len()) => keys.push((id.clone(), s)),
                    Some(s) => self.err_own(
                        span,
                        format!("{key}.{which}"),
                        format!("key \"{id}\" is {} bytes: expected {KEY_BYTES_MIN}..={KEY_BYTES_MAX} (generate one with `openssl rand -hex 32`)", s.len()),
                    ),
                    None => self.err_own(span, format!("{key}.{which}"), format!("key \"{id}\" is not hex digits")),
                }
            }
        }
        keys
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) || !b.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    (0..b.len())
        .step_by(2)
        .map(|i| std::str::from_utf8(&b[i..i + 2]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}
