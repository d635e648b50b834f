//! `/docs`: the OpenAPI document as one browsable page, rendered on the server: every operation
//! with its description, parameters, request body and responses, then every schema with its
//! fields, their types (schemas linked by name), bounds and descriptions.
use std::fmt::Write;

use serde_json::Value;

/// The page for `spec` (the parsed OpenAPI document).
pub fn page(spec: &Value) -> String {
    let mut ops = String::new();
    let mut index = String::new();
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        let shared = item["parameters"].as_array().cloned().unwrap_or_default();
        for (method, op) in item.as_object().into_iter().flatten() {
            if !["get", "post", "delete", "put", "patch"].contains(&method.as_str()) {
                continue;
            }
            let anchor = format!("op-{}", op["operationId"].as_str().unwrap_or(path));
            let _ = write!(
                index,
                "<li><a href=\"#{anchor}\"><code>{} {}</code></a> {}</li>",
                method.to_uppercase(),
                esc(path),
                esc(op["summary"].as_str().unwrap_or(""))
            );
            ops.push_str(&operation(spec, &anchor, method, path, op, &shared));
        }
    }
    let mut schemas = String::new();
    for (name, s) in spec["components"]["schemas"].as_object().into_iter().flatten() {
        schemas.push_str(&schema_section(spec, name, s));
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>fpt API</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}}\
         table{{border-collapse:collapse;margin:.5rem 0 1rem}}td,th{{padding:.25rem .6rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}}\
         .d{{white-space:pre-line;color:#333}}h3{{margin-top:2rem}}code{{background:#f4f4f4;padding:0 .2rem}}</style></head>\
         <body><h1>fpt API</h1><p>The document itself: <a href=\"/openapi.json\">/openapi.json</a>.</p>\
         <h2>Operations</h2><ul>{index}</ul>{ops}<h2>Schemas</h2>{schemas}</body></html>"
    )
}

/// What a `$ref` points at within `spec`; anything else as it is.
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => spec.pointer(pointer).unwrap_or(v),
        None => v,
    }
}

fn operation(spec: &Value, anchor: &str, method: &str, path: &str, op: &Value, shared: &[Value]) -> String {
    let mut out = format!("<h3 id=\"{anchor}\"><code>{} {}</code></h3>", method.to_uppercase(), esc(path));
    let _ = write!(out, "<p>{}</p>", esc(op["summary"].as_str().unwrap_or("")));
    if let Some(d) = op["description"].as_str() {
        let _ = write!(out, "<p class=\"d\">{}</p>", esc(d));
    }
    let params: Vec<&Value> = shared.iter().chain(op["parameters"].as_array().into_iter().flatten()).map(|p| resolve(spec, p)).collect();
    if !params.is_empty() {
        out.push_str("<table><tr><th>parameter</th><th>in</th><th>type</th><th>description</th></tr>");
        for p in params {
            let required = if p["required"] == true { " (required)" } else { "" };
            let _ = write!(
                out,
                "<tr><td><code>{}</code>{required}</td><td>{}</td><td>{}</td><td class=\"d\">{}</td></tr>",
                esc(p["name"].as_str().unwrap_or("")),
                esc(p["in"].as_str().unwrap_or("")),
                type_of(&p["schema"]),
                esc(p["description"].as_str().unwrap_or(""))
            );
        }
        out.push_str("</table>");
    }
    let body = resolve(spec, &op["requestBody"]);
    for (media, content) in body["content"].as_object().into_iter().flatten() {
        let _ = write!(out, "<p>Request body ({}): {}</p>", esc(media), type_of(&content["schema"]));
    }
    if let Some(responses) = op["responses"].as_object() {
        out.push_str("<table><tr><th>status</th><th>description</th><th>body</th></tr>");
        for (status, r) in responses {
            let r = resolve(spec, r);
            let bodies: Vec<String> = r["content"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(media, c)| format!("{} ({})", type_of(&c["schema"]), esc(media)))
                .collect();
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"d\">{}</td><td>{}</td></tr>",
                esc(status),
                esc(r["description"].as_str().unwrap_or("")),
                bodies.join("<br>")
            );
        }
        out.push_str("</table>");
    }
    out
}

fn schema_section(spec: &Value, name: &str, s: &Value) -> String {
    let mut out = format!("<h3 id=\"schema-{0}\">{0}</h3>", esc(name));
    if let Some(d) = s["description"].as_str() {
        let _ = write!(out, "<p class=\"d\">{}</p>", esc(d));
    }
    let required: Vec<&str> = s["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    match s["properties"].as_object() {
        Some(props) => {
            out.push_str("<table><tr><th>field</th><th>type</th><th>description</th></tr>");
            for (field, p) in props {
                let mark = if required.contains(&field.as_str()) { " (required)" } else { "" };
                let _ = write!(
                    out,
                    "<tr><td><code>{}</code>{mark}</td><td>{}</td><td class=\"d\">{}</td></tr>",
                    esc(field),
                    type_of(p),
                    esc(resolve(spec, p)["description"].as_str().unwrap_or(""))
                );
            }
            out.push_str("</table>");
        }
        None => {
            let _ = write!(out, "<p>{}</p>", type_of(s));
        }
    }
    out
}

/// A schema in a few words: a linked name, a type with its bounds, a union, a constant, a list.
fn type_of(s: &Value) -> String {
    if let Some(r) = s["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#schema-{0}\">{0}</a>", esc(name));
    }
    for union in ["oneOf", "anyOf"] {
        if let Some(parts) = s[union].as_array() {
            return parts.iter().map(type_of).collect::<Vec<_>>().join(" | ");
        }
    }
    if !s["const"].is_null() {
        return format!("<code>{}</code>", esc(&s["const"].to_string()));
    }
    if let Some(values) = s["enum"].as_array() {
        return values.iter().map(|v| format!("<code>{}</code>", esc(&v.to_string()))).collect::<Vec<_>>().join(" | ");
    }
    let kind = match &s["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | "),
        _ => "any".to_string(),
    };
    let mut out = if kind.starts_with("array") { format!("array of {}", type_of(&s["items"])) } else { esc(&kind) };
    let bounds: Vec<String> = ["minimum", "maximum", "exclusiveMinimum", "minLength", "maxLength", "maxItems", "default"]
        .iter()
        .filter(|b| !s[**b].is_null())
        .map(|b| format!("{b} {}", esc(&s[*b].to_string())))
        .collect();
    if !bounds.is_empty() {
        let _ = write!(out, " <small>({})</small>", bounds.join(", "));
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
