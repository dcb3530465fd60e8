//! Attachment and projection: which records a collector gets, and which of their fields.
//!
//! Decided by the framework from the collector's `events` and `fields` keys and the schema of
//! the segment the record is in (so an old segment written under another config is projected
//! by what it holds). A collector only ever sees the [`CollectedEvent`] built here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::{CollectedEvent, Value};
use crate::config::{EventSelection, FieldSelection};
use crate::event::Event;
use crate::schema::{FieldKind, FieldSchema, Schema};

/// What to keep of each event type of one schema.
pub struct Projection {
    /// Indexed by type id: `None` = not attached.
    types: Vec<Option<TypePlan>>,
}

struct TypePlan {
    name: Arc<str>,
    fields: Vec<(Arc<str>, FieldSchema)>,
}

impl Projection {
    pub fn new(schema: &Schema, events: &EventSelection, fields: &FieldSelection) -> Projection {
        let len = schema.types.iter().map(|t| t.id as usize + 1).max().unwrap_or(0);
        let mut types: Vec<Option<TypePlan>> = (0..len).map(|_| None).collect();
        for t in &schema.types {
            if !events.admits(&t.name) {
                continue;
            }
            let kept = t
                .fields
                .iter()
                .filter(|f| fields.admits(&f.name))
                .map(|f| (Arc::<str>::from(f.name.as_str()), f.clone()))
                .collect();
            types[t.id as usize] = Some(TypePlan { name: Arc::from(t.name.as_str()), fields: kept });
        }
        Projection { types }
    }

    /// True when the collector is attached to the event's type.
    pub fn attached(&self, e: &Event) -> bool {
        self.types.get(e.type_id as usize).is_some_and(|t| t.is_some())
    }

    /// The event as the collector may see it, or `None` when it is not attached to its type.
    pub fn project(&self, e: &Event) -> Option<CollectedEvent> {
        let plan = self.types.get(e.type_id as usize)?.as_ref()?;
        let mut fields = Vec::with_capacity(plan.fields.len());
        for (name, f) in &plan.fields {
            let slot = f.slot as usize;
            if slot >= e.slots.len() || !e.has(slot) {
                continue;
            }
            let v = e.slots[slot];
            let value = match f.kind {
                FieldKind::U64 | FieldKind::U32 => Value::U64(v),
                FieldKind::I64 => Value::I64(v as i64),
                FieldKind::Money => Value::Money(v as i64),
                FieldKind::Str => {
                    let (o, m) = (f.offset as usize, f.max as usize);
                    if o + m > e.bytes.len() {
                        continue;
                    }
                    // Stored as received: not lossy, so different bytes stay different values.
                    let b = e.str_at(slot, o, m);
                    match std::str::from_utf8(b) {
                        Ok(s) => Value::Str(s.to_owned()),
                        Err(_) => Value::Bytes(b.to_vec()),
                    }
                }
                FieldKind::Ip => {
                    let o = f.offset as usize;
                    if o + 16 > e.bytes.len() {
                        continue;
                    }
                    let b = &e.bytes[o..o + 16];
                    Value::Ip(if v == 4 {
                        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                    } else {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        IpAddr::V6(Ipv6Addr::from(a))
                    })
                }
            };
            fields.push((name.clone(), value));
        }
        Some(CollectedEvent {
            id: e.id,
            event_type: plan.name.clone(),
            ts_ns: e.ts_ns,
            shard: e.shard,
            seq: e.seq,
            flags: e.flags,
            fields,
        })
    }
}

/// Per collector, per attached event type, the fields that leave the process: what
/// `tracker privacy-manifest` prints. The envelope (type, id, ts, ts_ns, shard, seq) always does.
pub fn manifest(schema: &Schema, events: &EventSelection, fields: &FieldSelection) -> Vec<(String, Vec<String>)> {
    schema
        .types
        .iter()
        .filter(|t| events.admits(&t.name))
        .map(|t| (t.name.clone(), t.fields.iter().filter(|f| fields.admits(&f.name)).map(|f| f.name.clone()).collect()))
        .collect()
}
