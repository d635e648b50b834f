//! Query strings of the list endpoints, read as OpenAI's are: `after`, `limit` (each endpoint its
//! own default and range), `order`, `purpose`, `metadata[key]=value` and fpt's `stream`. Each
//! endpoint names the keys it takes; any other key, a repeated one or a bad value is a 400 naming
//! it, so that a typo is not silently an unfiltered list.
use super::error::ApiError;

/// Which way a list runs: newest first (`desc`, every list's default) or oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    Asc,
    #[default]
    Desc,
}

/// A list endpoint's query string, parsed.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub after: Option<String>,
    pub limit: i64,
    pub order: Order,
    pub purpose: Option<String>,
    /// `metadata[key]=value` pairs: objects whose metadata holds all of them.
    pub metadata: Vec<(String, String)>,
    pub stream: bool,
}

/// What one endpoint takes.
pub struct Accepts {
    pub keys: &'static [&'static str],
    pub default_limit: i64,
    pub max_limit: i64,
}

impl Accepts {
    /// Jobs, events and the organization's lists: OpenAI's default of 20.
    pub const PAGED: Accepts = Accepts { keys: &["after", "limit"], default_limit: 20, max_limit: 1000 };
    pub const JOBS: Accepts = Accepts { keys: &["after", "limit", "metadata"], default_limit: 20, max_limit: 1000 };
    pub const EVENTS: Accepts = Accepts { keys: &["after", "limit", "stream"], default_limit: 20, max_limit: 1000 };
    pub const CHECKPOINTS: Accepts = Accepts { keys: &["after", "limit"], default_limit: 10, max_limit: 1000 };
    /// OpenAI's files list: up to 10,000 at once, all of them by default.
    pub const FILES: Accepts = Accepts { keys: &["after", "limit", "order", "purpose"], default_limit: 10_000, max_limit: 10_000 };
}

/// Longest query string read; the SDK's longest (16 metadata pairs at their limits) is far below.
const MAX_QUERY_BYTES: usize = 16 << 10;

impl ListQuery {
    pub fn parse(query: Option<&str>, accepts: &Accepts) -> Result<Self, ApiError> {
        let query = query.unwrap_or("");
        if query.len() > MAX_QUERY_BYTES {
            return Err(ApiError::TooLarge { what: "query string", limit: MAX_QUERY_BYTES, unit: "bytes" });
        }
        let mut q = ListQuery { limit: accepts.default_limit, ..Default::default() };
        let mut seen: Vec<String> = Vec::new();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let name = match key.strip_prefix("metadata[").and_then(|k| k.strip_suffix(']')) {
                Some(k) if accepts.keys.contains(&"metadata") => {
                    if k.is_empty() || k.chars().count() > 64 {
                        return Err(bad(&key, "a metadata key is 1 to 64 characters"));
                    }
                    if q.metadata.iter().any(|(seen, _)| seen == k) {
                        return Err(bad(&key, "given twice"));
                    }
                    q.metadata.push((k.to_string(), value.into_owned()));
                    if q.metadata.len() > 16 {
                        return Err(bad("metadata", "at most 16 metadata filters"));
                    }
                    continue;
                }
                _ => key.to_string(),
            };
            if !accepts.keys.contains(&name.as_str()) || name == "metadata" {
                let takes = accepts.keys.iter().map(|k| if *k == "metadata" { "metadata[key]" } else { k }).collect::<Vec<_>>().join(", ");
                return Err(bad(&name, &format!("unknown query parameter `{name}` (this endpoint takes {takes})")));
            }
            if seen.contains(&name) {
                return Err(bad(&name, "given twice"));
            }
            seen.push(name.clone());
            match name.as_str() {
                "after" => q.after = Some(value.into_owned()).filter(|a| !a.is_empty()),
                "limit" => q.limit = limit(&value, accepts)?,
                "order" => {
                    q.order = match value.as_ref() {
                        "asc" => Order::Asc,
                        "desc" => Order::Desc,
                        other => return Err(bad("order", &format!("`{other}` is not asc or desc"))),
                    }
                }
                "purpose" => q.purpose = Some(value.into_owned()),
                "stream" => {
                    q.stream = match value.as_ref() {
                        "true" => true,
                        "false" => false,
                        other => return Err(bad("stream", &format!("`{other}` is not true or false"))),
                    }
                }
                _ => unreachable!("every accepted key is matched above"),
            }
        }
        Ok(q)
    }

    /// Only `limit`, for lists that take nothing else of this parse.
    pub fn limit_only(limit: Option<i64>) -> Result<i64, ApiError> {
        match limit {
            None => Ok(Accepts::PAGED.default_limit),
            Some(l) => within(l, &l.to_string(), &Accepts::PAGED),
        }
    }
}

fn limit(value: &str, accepts: &Accepts) -> Result<i64, ApiError> {
    within(value.parse::<i64>().unwrap_or(0), value, accepts)
}

/// `l` (as the client wrote it: `value`) if it is within the endpoint's range.
fn within(l: i64, value: &str, accepts: &Accepts) -> Result<i64, ApiError> {
    if (1..=accepts.max_limit).contains(&l) {
        Ok(l)
    } else {
        Err(bad("limit", &format!("limit must be an integer within 1..={}, found `{value}`", accepts.max_limit)))
    }
}

fn bad(param: &str, message: &str) -> ApiError {
    ApiError::BadRequest { message: message.to_string(), param: Some(param.to_string()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(r: Result<ListQuery, ApiError>) -> String {
        match r.unwrap_err() {
            ApiError::BadRequest { param, .. } => param.unwrap_or_default(),
            ApiError::TooLarge { what, .. } => what.to_string(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn openai_lists_parse_as_the_sdk_sends_them() {
        let q = ListQuery::parse(Some("after=ftjob-1&limit=2&metadata%5Bteam%5D=a%20b&metadata[x]="), &Accepts::JOBS).unwrap();
        assert_eq!((q.after.as_deref(), q.limit), (Some("ftjob-1"), 2));
        assert_eq!(q.metadata, vec![("team".to_string(), "a b".to_string()), ("x".to_string(), String::new())]);
        let f = ListQuery::parse(Some("purpose=fine-tune&order=asc"), &Accepts::FILES).unwrap();
        assert_eq!((f.purpose.as_deref(), f.order, f.limit), (Some("fine-tune"), Order::Asc, 10_000));
        assert_eq!(ListQuery::parse(None, &Accepts::CHECKPOINTS).unwrap().limit, 10);
        assert!(ListQuery::parse(Some("stream=true"), &Accepts::EVENTS).unwrap().stream);
    }

    #[test]
    fn every_bad_query_names_its_parameter() {
        assert_eq!(param(ListQuery::parse(Some("limt=3"), &Accepts::JOBS)), "limt");
        assert_eq!(param(ListQuery::parse(Some("limit=0"), &Accepts::JOBS)), "limit");
        assert_eq!(param(ListQuery::parse(Some("limit=10001"), &Accepts::FILES)), "limit");
        assert_eq!(param(ListQuery::parse(Some("limit=x"), &Accepts::JOBS)), "limit");
        assert_eq!(param(ListQuery::parse(Some("limit=1&limit=2"), &Accepts::JOBS)), "limit");
        assert_eq!(param(ListQuery::parse(Some("order=up"), &Accepts::FILES)), "order");
        assert_eq!(param(ListQuery::parse(Some("metadata[a]=1"), &Accepts::FILES)), "metadata[a]");
        assert_eq!(param(ListQuery::parse(Some("metadata[]=1"), &Accepts::JOBS)), "metadata[]");
        assert_eq!(param(ListQuery::parse(Some("metadata=1"), &Accepts::JOBS)), "metadata");
        assert_eq!(param(ListQuery::parse(Some("stream=yes"), &Accepts::EVENTS)), "stream");
        let many: Vec<String> = (0..17).map(|i| format!("metadata[k{i}]=v")).collect();
        assert_eq!(param(ListQuery::parse(Some(&many.join("&")), &Accepts::JOBS)), "metadata");
        assert_eq!(param(ListQuery::parse(Some(&"a".repeat(20_000)), &Accepts::JOBS)), "query string");
    }
}
