//! How answers of the API are printed: tables and status lines.

/// Rows under a header, each column as wide as its widest cell.
pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub(super) fn pipeline_row(p: &serde_json::Value) -> Vec<String> {
    let digests: Vec<String> = p["transforms"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    let d = t["digest"].as_str().unwrap_or_default();
                    format!(
                        "{}={}",
                        t["name"].as_str().unwrap_or_default(),
                        d.get(..19).unwrap_or(d)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let outputs: Vec<String> = p["outputs"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| format!("{k}={v}")).collect())
        .unwrap_or_default();
    vec![
        p["name"].as_str().unwrap_or_default().to_string(),
        p["tenant"].as_str().unwrap_or_default().to_string(),
        p["state"].as_str().unwrap_or_default().to_string(),
        p["records_in"].to_string(),
        if outputs.is_empty() {
            p["records_out"].to_string()
        } else {
            outputs.join(" ")
        },
        p["dropped"].to_string(),
        p["dead_letter"].to_string(),
        digests.join(" "),
    ]
}

pub(super) const PIPELINE_HEADER: [&str; 8] = [
    "PIPELINE", "TENANT", "STATE", "IN", "OUT", "DROPPED", "DLQ", "MODULES",
];

/// Pipelines the host is still preparing, and files it refused.
pub(super) fn print_refused(json: &serde_json::Value) {
    for p in json["preparing"].as_array().into_iter().flatten() {
        println!(
            "preparing: {} (tenant {}, {}): compiling its transforms for {:.1} s",
            p["name"].as_str().unwrap_or_default(),
            p["tenant"].as_str().unwrap_or_default(),
            p["file"].as_str().unwrap_or_default(),
            p["elapsed_ms"].as_u64().unwrap_or_default() as f64 / 1000.0
        );
    }
    for r in json["refused"].as_array().into_iter().flatten() {
        println!(
            "refused: {}: {}",
            r["file"].as_str().unwrap_or_default(),
            r["error"].as_str().unwrap_or_default()
        );
    }
}

/// One pipeline's snapshot as a person reads it.
pub(super) fn print_status(p: &serde_json::Value) {
    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
    println!("{} (tenant {}): {}", s("name"), s("tenant"), s("state"));
    if let Some(reason) = p["reason"].as_str() {
        println!("  reason:   {reason}");
    }
    println!("  source:   {}", s("source"));
    for t in p["transforms"].as_array().into_iter().flatten() {
        println!(
            "  module:   {} {}",
            t["name"].as_str().unwrap_or_default(),
            t["digest"].as_str().unwrap_or_default()
        );
    }
    println!(
        "  in:       {} records ({:.0}/s)",
        p["records_in"],
        p["rate_in"].as_f64().unwrap_or_default()
    );
    for (name, n) in p["outputs"].as_object().into_iter().flatten() {
        println!("  out:      {name} {n} records");
    }
    println!("  dropped:  {}", p["dropped"]);
    println!("  dlq:      {}", p["dead_letter"]);
    for u in p["undeclared_outputs"].as_array().into_iter().flatten() {
        println!(
            "            {} of them sent by `{}` to undeclared output `{}`",
            u["records"],
            u["transform"].as_str().unwrap_or_default(),
            u["output"].as_str().unwrap_or_default()
        );
    }
    if let Some(lag) = p["lag"].as_i64() {
        println!("  lag:      {lag} records");
    }
    if let Some(e) = p["last_errors"].as_array().and_then(|a| a.last()) {
        println!(
            "  last error: {} {}",
            e["at"].as_str().unwrap_or_default(),
            e["message"].as_str().unwrap_or_default()
        );
    }
}
