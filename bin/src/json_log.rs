//! The JSON log format of `haseqd run`: tracing-subscriber's JSON lines, each with this node's
//! id (`node`), and its Raft term (`term`) and applied height (`height`) once they are known,
//! so that lines from several nodes gathered in one place (journald, a log shipper) can be
//! told apart and ordered by term without parsing messages.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// tracing-subscriber's JSON event format with the node's context in front.
pub(crate) struct NodeJson {
    inner: Format<Json>,
    node: Option<String>,
}

impl NodeJson {
    /// For node `node` (`None`: no `node` field, as before the configuration names it).
    pub(crate) fn new(node: Option<String>) -> NodeJson {
        NodeJson {
            inner: tracing_subscriber::fmt::format().json(),
            node,
        }
    }
}

/// The fields put in front of an event's own: `"node":…,"term":…,"height":…,`.
fn context(node: Option<&str>, term: u64, height: u64) -> String {
    let mut out = String::new();
    if let Some(n) = node {
        out.push_str(&format!("\"node\":{},", serde_json::Value::from(n)));
    }
    if term > 0 {
        out.push_str(&format!("\"term\":{term},"));
    }
    if height > 0 {
        out.push_str(&format!("\"height\":{height},"));
    }
    out
}

impl<S, N> FormatEvent<S, N> for NodeJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let (term, height) = haseq_actors::log_context::get();
        match line.strip_prefix('{') {
            Some(rest) => {
                writer.write_char('{')?;
                writer.write_str(&context(self.node.as_deref(), term, height))?;
                writer.write_str(rest)
            }
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_is_valid_json_in_front_of_the_event() {
        let line = format!("{{{}\"level\":\"INFO\"}}", context(Some("node-\"1"), 3, 42));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["node"], "node-\"1");
        assert_eq!(v["term"], 3);
        assert_eq!(v["height"], 42);
        assert_eq!(context(None, 0, 0), "");
    }
}
