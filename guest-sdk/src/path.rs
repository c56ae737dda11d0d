//! Field paths: a JSONPath subset (RFC 9535 without filters and functions),
//! the same in the Python and JavaScript SDKs: `$`, `.name`, `['name']`,
//! `[0]`, `[-1]`, `[*]`, `.*`, `[1:3]`, `[a,b]` and descendants `..name`;
//! `a.b[0]` (without `$`) works too.

use crate::Error;
use serde_json::Value;

#[derive(Debug, Clone)]
enum Selector {
    Name(String),
    Wild,
    Index(i64),
    Slice(Option<i64>, Option<i64>, i64),
}

/// A compiled field path.
#[derive(Debug, Clone)]
pub struct JsonPath {
    expr: String,
    steps: Vec<(bool, Vec<Selector>)>,
}

impl JsonPath {
    /// Compiles `expr`; the error names the expression and what is wrong.
    pub fn parse(expr: &str) -> Result<Self, Error> {
        let bad =
            |why: String| Error::new("config", format!("`{expr}` is not valid JSONPath: {why}"));
        let s: Vec<char> = if expr.starts_with('$') {
            expr.chars().collect()
        } else if expr.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            format!("$.{expr}").chars().collect()
        } else {
            return Err(bad("it must start with `$`".into()));
        };
        let n = s.len();
        let mut i = 1;
        let mut steps = Vec::new();
        let name_char = |c: char| c.is_alphanumeric() || c == '_' || c == '-' || !c.is_ascii();
        while i < n {
            let mut c = s[i];
            let mut descend = false;
            if c == '.' {
                if i + 1 < n && s[i + 1] == '.' {
                    descend = true;
                    i += 2;
                } else {
                    i += 1;
                }
                if i < n && s[i] == '*' {
                    steps.push((descend, vec![Selector::Wild]));
                    i += 1;
                    continue;
                }
                if i < n && s[i] == '[' && descend {
                    c = '[';
                } else {
                    let mut k = i;
                    while k < n && name_char(s[k]) {
                        k += 1;
                    }
                    if k == i {
                        return Err(bad(format!("a name must follow `.` at position {i}")));
                    }
                    steps.push((descend, vec![Selector::Name(s[i..k].iter().collect())]));
                    i = k;
                    continue;
                }
            }
            if c != '[' {
                return Err(bad(format!("unexpected `{c}` at position {i}")));
            }
            i += 1;
            let mut selectors = Vec::new();
            loop {
                while i < n && s[i] == ' ' {
                    i += 1;
                }
                if i >= n {
                    return Err(bad("unclosed `[`".into()));
                }
                let ch = s[i];
                if ch == '?' {
                    return Err(bad(
                        "filter expressions are not supported in this SDK".into()
                    ));
                }
                if ch == '\'' || ch == '"' {
                    let mut k = i + 1;
                    let mut buf = String::new();
                    while k < n && s[k] != ch {
                        if s[k] == '\\' && k + 1 < n {
                            k += 1;
                        }
                        buf.push(s[k]);
                        k += 1;
                    }
                    if k >= n {
                        return Err(bad("unclosed string".into()));
                    }
                    selectors.push(Selector::Name(buf));
                    i = k + 1;
                } else if ch == '*' {
                    selectors.push(Selector::Wild);
                    i += 1;
                } else {
                    let mut k = i;
                    while k < n && (s[k].is_ascii_digit() || s[k] == '-' || s[k] == ':') {
                        k += 1;
                    }
                    let part: String = s[i..k].iter().collect();
                    if part.is_empty() {
                        return Err(bad(format!("unexpected `{ch}` at position {i}")));
                    }
                    let not_index = || bad(format!("`{part}` is not an index or a slice"));
                    let int = |b: &str| b.parse::<i64>().map_err(|_| not_index());
                    if part.contains(':') {
                        let bits: Vec<&str> = part.split(':').collect();
                        if bits.len() > 3 {
                            return Err(not_index());
                        }
                        let opt = |j: usize| -> Result<Option<i64>, Error> {
                            match bits.get(j) {
                                None | Some(&"") => Ok(None),
                                Some(b) => int(b).map(Some),
                            }
                        };
                        selectors.push(Selector::Slice(opt(0)?, opt(1)?, opt(2)?.unwrap_or(1)));
                    } else {
                        selectors.push(Selector::Index(int(&part)?));
                    }
                    i = k;
                }
                while i < n && s[i] == ' ' {
                    i += 1;
                }
                if i < n && s[i] == ',' {
                    i += 1;
                    continue;
                }
                if i < n && s[i] == ']' {
                    i += 1;
                    break;
                }
                return Err(bad(format!("expected `]` at position {i}")));
            }
            steps.push((descend, selectors));
        }
        Ok(JsonPath {
            expr: expr.to_string(),
            steps,
        })
    }

    /// The expression.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// Every node the path selects, in document order.
    pub fn query<'v>(&self, doc: &'v Value) -> Vec<&'v Value> {
        let mut nodes = vec![doc];
        for (descend, selectors) in &self.steps {
            if *descend {
                let mut all = Vec::new();
                for n in nodes {
                    let start = all.len();
                    all.push(n);
                    let mut j = start;
                    while j < all.len() {
                        match all[j] {
                            Value::Object(m) => all.extend(m.values()),
                            Value::Array(a) => all.extend(a.iter()),
                            _ => {}
                        }
                        j += 1;
                    }
                }
                nodes = all;
            }
            let mut next = Vec::new();
            for n in nodes {
                for s in selectors {
                    select(n, s, &mut next);
                }
            }
            nodes = next;
        }
        nodes
    }

    /// The first node the path selects.
    pub fn first<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        self.query(doc).into_iter().next()
    }
}

fn select<'v>(node: &'v Value, sel: &Selector, out: &mut Vec<&'v Value>) {
    match (sel, node) {
        (Selector::Name(k), Value::Object(m)) => out.extend(m.get(k)),
        (Selector::Wild, Value::Object(m)) => out.extend(m.values()),
        (Selector::Wild, Value::Array(a)) => out.extend(a.iter()),
        (Selector::Index(i), Value::Array(a)) => {
            let len = a.len() as i64;
            let i = if *i < 0 { i + len } else { *i };
            if (0..len).contains(&i) {
                out.push(&a[i as usize]);
            }
        }
        (Selector::Slice(start, end, step), Value::Array(a)) => {
            let len = a.len() as i64;
            let step = *step;
            if step == 0 {
                return;
            }
            let norm = |v: i64| if v < 0 { (v + len).max(0) } else { v.min(len) };
            if step > 0 {
                let (mut i, end) = (norm(start.unwrap_or(0)), norm(end.unwrap_or(len)));
                while i < end {
                    out.push(&a[i as usize]);
                    i += step;
                }
            } else {
                let mut i = match start {
                    Some(s) if *s < 0 => s + len,
                    Some(s) => (*s).min(len - 1),
                    None => len - 1,
                };
                let end = match end {
                    Some(e) if *e < 0 => (e + len).max(-1),
                    Some(e) => *e,
                    None => -1,
                };
                while i > end && i >= 0 {
                    if i < len {
                        out.push(&a[i as usize]);
                    }
                    i += step;
                }
            }
        }
        _ => {}
    }
}

/// The first node `path` selects in `doc` (`Ok(None)`: nothing matches);
/// an invalid path is an error naming it.
pub fn get<'v>(doc: &'v Value, path: &str) -> Result<Option<&'v Value>, Error> {
    Ok(JsonPath::parse(path)?.first(doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_like_the_python_and_javascript_sdks() {
        let d = json!({"a": {"b": [1, 2, {"c": 3}]}, "items": [{"id": 1}, {"id": 2}], "x y": 5});
        let q = |p: &str| -> Vec<Value> {
            JsonPath::parse(p)
                .expect("valid")
                .query(&d)
                .into_iter()
                .cloned()
                .collect()
        };
        assert_eq!(q("$.a.b[0]"), vec![json!(1)]);
        assert_eq!(q("$.a.b[-1].c"), vec![json!(3)]);
        assert_eq!(q("$.items[*].id"), vec![json!(1), json!(2)]);
        assert_eq!(q("$..id"), vec![json!(1), json!(2)]);
        assert_eq!(q("$[\"x y\"]"), vec![json!(5)]);
        assert_eq!(q("a.b[1:]"), vec![json!(2), json!({"c": 3})]);
        assert_eq!(q("$.a.b[0,2]"), vec![json!(1), json!({"c": 3})]);
        assert_eq!(q("$.a.b[::-1]"), vec![json!({"c": 3}), json!(2), json!(1)]);
        assert_eq!(q("$.nope"), Vec::<Value>::new());
        assert_eq!(get(&d, "a.b[1]").expect("valid"), Some(&json!(2)));
        for bad in ["$[?", "$.", "x[", "$[a]", "1"] {
            let e = JsonPath::parse(bad).expect_err(bad);
            assert!(
                e.message().contains("is not valid JSONPath"),
                "{}",
                e.message()
            );
        }
    }
}
