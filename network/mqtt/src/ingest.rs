//! Topics and payloads: which database a PUBLISH writes to and the line protocol it carries.
//!
//! - `annals/<db>/write` — line protocol, nanosecond timestamps;
//! - `annals/<db>/write/<precision>` — line protocol, `ns`, `us`, `ms`, `s` or `auto`;
//! - `annals/<db>/json/<table>` — one JSON object `{"time": <ns>, "tags": {..}, "fields": {..}}`
//!   or an array of them; `time` is optional (arrival time), numbers become float fields,
//!   strings string fields, booleans boolean fields; tag values must be strings.

use annals_lp::Precision;
use serde_json::Value;

/// Most JSON objects in one message.
pub(crate) const JSON_ITEMS_MAX: usize = 100_000;

/// Where a PUBLISH goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) db: String,
    pub(crate) form: Form,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Form {
    Lp(Precision),
    Json { table: String },
}

/// Reads a topic; `Err` says what is wrong with it.
pub(crate) fn route(topic: &str) -> Result<Route, String> {
    let parts: Vec<&str> = topic.split('/').collect();
    let (db, form) = match parts.as_slice() {
        ["annals", db, "write"] => (*db, Form::Lp(Precision::Nanoseconds)),
        ["annals", db, "write", p] => {
            let p = match *p {
                "ns" => Precision::Nanoseconds,
                "us" => Precision::Microseconds,
                "ms" => Precision::Milliseconds,
                "s" => Precision::Seconds,
                "auto" => Precision::Auto,
                other => {
                    return Err(format!(
                        "unknown precision {other:?} in topic {topic:?}: use ns, us, ms, s or auto"
                    ))
                }
            };
            (*db, Form::Lp(p))
        }
        ["annals", db, "json", table] if !table.is_empty() => (
            *db,
            Form::Json {
                table: (*table).to_owned(),
            },
        ),
        _ => {
            return Err(format!(
                "topic {topic:?} is not annals/<db>/write[/<precision>] or annals/<db>/json/<table>"
            ))
        }
    };
    if db.is_empty() {
        return Err(format!("topic {topic:?} names no database"));
    }
    Ok(Route {
        db: db.to_owned(),
        form,
    })
}

/// Escapes a measurement, tag key/value or field key for line protocol.
fn escape(out: &mut String, s: &str, what: &str, measurement: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("empty {what}"));
    }
    for c in s.chars() {
        match c {
            '\n' | '\r' => return Err(format!("{what} {s:?} contains a line break")),
            ',' | ' ' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '=' if !measurement => out.push_str("\\="),
            c => out.push(c),
        }
    }
    Ok(())
}

fn item_to_lp(table: &str, item: &Value, out: &mut String) -> Result<(), String> {
    let obj = item
        .as_object()
        .ok_or("expected an object with \"fields\"")?;
    for k in obj.keys() {
        if !matches!(k.as_str(), "time" | "tags" | "fields") {
            return Err(format!(
                "unknown member {k:?}: use \"time\", \"tags\" and \"fields\""
            ));
        }
    }
    escape(out, table, "table name", true)?;
    if let Some(tags) = obj.get("tags") {
        let tags = tags.as_object().ok_or("\"tags\" must be an object")?;
        // Sorted, whatever order serde_json keeps: the same message gives the same rows.
        let mut tags: Vec<_> = tags.iter().collect();
        tags.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in tags {
            let v = v
                .as_str()
                .ok_or_else(|| format!("tag {k:?} must be a string"))?;
            out.push(',');
            escape(out, k, "tag key", false)?;
            out.push('=');
            escape(out, v, "tag value", false)?;
        }
    }
    let fields = obj
        .get("fields")
        .and_then(Value::as_object)
        .ok_or("\"fields\" must be an object with at least one field")?;
    if fields.is_empty() {
        return Err("\"fields\" must be an object with at least one field".into());
    }
    let mut fields: Vec<_> = fields.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let mut sep = ' ';
    for (k, v) in fields {
        out.push(sep);
        sep = ',';
        escape(out, k, "field key", false)?;
        out.push('=');
        match v {
            Value::Number(n) => {
                let f = n
                    .as_f64()
                    .ok_or_else(|| format!("field {k:?}: number out of range"))?;
                out.push_str(&format!("{f:?}"));
            }
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::String(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '\n' | '\r' => {
                            return Err(format!("field {k:?} contains a line break"));
                        }
                        '"' | '\\' => {
                            out.push('\\');
                            out.push(c);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            _ => return Err(format!("field {k:?} must be a number, string or boolean")),
        }
    }
    match obj.get("time") {
        None | Some(Value::Null) => {}
        Some(t) => {
            let t = t
                .as_i64()
                .ok_or("\"time\" must be an integer (nanoseconds since 1970)")?;
            out.push(' ');
            out.push_str(&t.to_string());
        }
    }
    out.push('\n');
    Ok(())
}

/// Line protocol for the JSON form; `Err` names the item (1-based) that is wrong.
pub(crate) fn json_to_lp(table: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?;
    let items: &[Value] = match &v {
        Value::Array(a) => a,
        other => std::slice::from_ref(other),
    };
    if items.len() > JSON_ITEMS_MAX {
        return Err(format!(
            "{} items in one message; at most {JSON_ITEMS_MAX}",
            items.len()
        ));
    }
    let mut out = String::with_capacity(payload.len());
    for (i, item) in items.iter().enumerate() {
        item_to_lp(table, item, &mut out).map_err(|e| format!("item {}: {e}", i + 1))?;
    }
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert_eq!(
            route("annals/farm/write").unwrap(),
            Route {
                db: "farm".into(),
                form: Form::Lp(Precision::Nanoseconds)
            }
        );
        assert_eq!(
            route("annals/farm/write/ms").unwrap().form,
            Form::Lp(Precision::Milliseconds)
        );
        assert_eq!(
            route("annals/farm/json/air").unwrap().form,
            Form::Json {
                table: "air".into()
            }
        );
        assert!(route("annals/farm/write/h")
            .unwrap_err()
            .contains("precision"));
        assert!(route("annals//write").is_err());
        assert!(route("other/farm/write").is_err());
        assert!(route("annals/farm/write/ns/x").is_err());
        assert!(route("annals/farm/json/").is_err());
    }

    #[test]
    fn json_becomes_escaped_line_protocol() {
        let lp = json_to_lp(
            "air quality",
            br#"[{"time": 5, "tags": {"room": "a,b=c d"}, "fields": {"t": 21, "ok": true, "note": "say \"hi\"\\"}},
                {"fields": {"t": 1.5}}]"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(lp).unwrap(),
            "air\\ quality,room=a\\,b\\=c\\ d note=\"say \\\"hi\\\"\\\\\",ok=true,t=21.0 5\nair\\ quality t=1.5\n"
        );
    }

    #[test]
    fn bad_json_names_the_item() {
        let e = json_to_lp("t", br#"[{"fields": {"a": 1}}, {"fields": {"a": [1]}}]"#).unwrap_err();
        assert!(e.starts_with("item 2:"), "{e}");
        assert!(json_to_lp("t", b"{").unwrap_err().contains("invalid JSON"));
        assert!(json_to_lp("t", br#"{"fields": {}}"#).is_err());
        assert!(json_to_lp("t", br#"{"fields": {"a": 1}, "x": 1}"#).is_err());
        assert!(json_to_lp("t", br#"{"tags": {"a": 1}, "fields": {"a": 1}}"#).is_err());
        assert!(json_to_lp("t", br#"{"fields": {"a": "x\ny"}}"#).is_err());
    }
}
