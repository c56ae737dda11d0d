//! The single-threaded native baselines of `scripts/bench-pipeline`: read a
//! JSON Lines file, map each line to the six toll fields, write JSON Lines.
//!
//! ```text
//! cargo run --release -p sluice-host --example native-map -- json-map IN OUT
//! cargo run --release -p sluice-host --example native-map -- hand IN OUT
//! ```
//! `json-map` runs the `json-map` transform's own code (`JsonMap::map_bytes`,
//! RFC 9535 JSONPath) compiled natively; `hand` is a hand-written program
//! picking the same fields with `serde_json`. Both write the same lines the
//! pipeline writes. Prints `records seconds`.

use std::io::{BufRead, BufReader, BufWriter, Write};

const FIELDS: [(&str, &str); 6] = [
    ("transaction", "txn_id"),
    ("customer", "customer_id"),
    ("booth", "booth_id"),
    ("vehicle_class", "vehicle_class"),
    ("amount", "amount"),
    ("event_time", "ts"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, input, output] = args.as_slice() else {
        return Err("usage: native-map json-map|hand IN OUT".into());
    };
    let start = std::time::Instant::now();
    let reader = BufReader::with_capacity(1 << 20, std::fs::File::open(input)?);
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(output)?);
    let mapping: serde_json::Map<String, serde_json::Value> = FIELDS
        .iter()
        .map(|(to, from)| (to.to_string(), serde_json::Value::from(format!("$.{from}"))))
        .collect();
    let map = sluice_json_map::JsonMap::from_config(&serde_json::json!({ "mapping": mapping }))?;
    let mut n = 0u64;
    for line in reader.lines() {
        let line = line?;
        let mapped = match mode.as_str() {
            "json-map" => map
                .map_bytes(Some(line.as_bytes()))
                .map_err(|e| format!("line {}: {e:?}", n + 1))?,
            "hand" => {
                let doc: serde_json::Value = serde_json::from_str(&line)?;
                let mut m = serde_json::Map::with_capacity(FIELDS.len());
                for (to, from) in FIELDS {
                    if let Some(v) = doc.get(from) {
                        m.insert(to.to_string(), v.clone());
                    }
                }
                Some(serde_json::Value::Object(m))
            }
            other => return Err(format!("unknown mode `{other}`").into()),
        };
        if let Some(v) = mapped {
            serde_json::to_writer(&mut out, &v)?;
            out.write_all(b"\n")?;
        }
        n += 1;
    }
    out.flush()?;
    println!("{n} {:.3}", start.elapsed().as_secs_f64());
    Ok(())
}
