//! What commands print: JSON as it came, and listings read and printed a page at a time so a
//! listing of any length is never held in memory.

use serde_json::Value;

use super::client::ApiClient;

use super::call::{api_failure, fail, query};
use super::{outln, write_out, Failure, EXIT_FAILURE};

pub fn print_json(v: &Value) -> Result<(), Failure> {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default())
}

/// Prints a JSON array an element at a time, exactly as `print_json` prints the whole array,
/// so that a listing of any length is never held in memory.
#[derive(Default)]
struct JsonArrayOut {
    started: bool,
}

impl JsonArrayOut {
    fn item(&mut self, v: &Value) -> Result<(), Failure> {
        let piece = json_array_item(v, !self.started);
        self.started = true;
        write_out(format_args!("{piece}"))
    }

    fn finish(self) -> Result<(), Failure> {
        write_out(format_args!("{}", json_array_end(self.started)))
    }
}

/// One element of a pretty-printed array, with what precedes it (the opening bracket or the
/// comma after the previous element).
fn json_array_item(v: &Value, first: bool) -> String {
    let pretty = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut piece = String::from(if first { "[" } else { "," });
    // Pretty JSON escapes newlines inside strings, so every line break is structural.
    for line in pretty.lines() {
        piece.push_str("\n  ");
        piece.push_str(line);
    }
    piece
}

fn json_array_end(any_item: bool) -> &'static str {
    if any_item {
        "\n]\n"
    } else {
        "[]\n"
    }
}

/// Reads the listing at `path` a page at a time, following the node's `Link: rel="next"`
/// headers, and hands each entry to `each`, so memory on both ends stays at one page.
/// `filter` narrows the listing; `header` is printed before the first entry.
pub async fn for_each_listed(
    c: &ApiClient,
    path: &str,
    filter: &[(&str, Option<String>)],
    header: fn() -> Result<(), Failure>,
    mut each: impl FnMut(&Value) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let q = query(filter);
    let mut next = Some(if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{q}")
    });
    let mut header = Some(header);
    while let Some(page_path) = next.take() {
        let page = c.page(&page_path).await.map_err(fail)?;
        if !page.status.is_success() {
            return Err(api_failure(page.status, &page.body));
        }
        let Value::Array(items) = page.body else {
            return Err(Failure::new(
                EXIT_FAILURE,
                format!("{path}: the node did not answer with a list"),
            ));
        };
        // Printed once the node has answered, so a refusal leaves stdout empty.
        if let Some(header) = header.take() {
            header()?;
        }
        for item in &items {
            each(item)?;
        }
        next = page.next;
    }
    Ok(())
}

/// A whole listing as one JSON array, printed a page at a time.
pub async fn print_listing_json(
    c: &ApiClient,
    path: &str,
    filter: &[(&str, Option<String>)],
) -> Result<(), Failure> {
    let mut out = JsonArrayOut::default();
    for_each_listed(c, path, filter, no_header, |r| out.item(r)).await?;
    out.finish()
}

pub fn no_header() -> Result<(), Failure> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::{json_array_end, json_array_item};

    /// A listing streamed a page at a time prints what `print_json` printed for the whole
    /// array, so scripts reading `--json` see no difference.
    #[test]
    fn a_streamed_json_array_is_the_pretty_printed_array() {
        let items = [
            json!({"seq": 1, "event": "submitted", "reason": "line\nbreak", "ids": ["a", "b"]}),
            json!({"seq": 2, "nested": {"empty": [], "obj": {}}}),
            json!("text"),
        ];
        for n in 0..=items.len() {
            let some = &items[..n];
            let mut streamed: String = some
                .iter()
                .enumerate()
                .map(|(i, v)| json_array_item(v, i == 0))
                .collect();
            streamed.push_str(json_array_end(n > 0));
            let whole =
                serde_json::to_string_pretty(&Value::Array(some.to_vec())).expect("encode") + "\n";
            assert_eq!(streamed, whole, "{n} items");
        }
    }
}
