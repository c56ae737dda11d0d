//! `{{name}}`: a Sluice transform. Greets each person (`{"name": ...}`),
//! keeping the record's key and headers; VIPs also go to the `alerts` output.

use serde_json::{Map, Value};
use sluice_guest::{Config, Emit, Error, Record, Transform, export_transform};

struct Greeter {
    greeting: String,
}

impl Transform for Greeter {
    fn init(config: Config) -> Result<Self, String> {
        let greeting = match config.value().get("greeting") {
            None => "hello".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err("invalid configuration: `greeting` must be a string".into()),
        };
        Ok(Greeter { greeting })
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Emit<'_>) -> Result<(), Error> {
        let mut doc: Map<String, Value> = record.json()?;
        if doc.is_empty() {
            return Ok(()); // emitting nothing drops the record
        }
        let name = match doc.get("name") {
            Some(Value::String(n)) => n.clone(),
            _ => return Err(Error::missing_field("name")),
        };
        let vip = doc.get("vip") == Some(&Value::Bool(true));
        doc.insert(
            "greeting".into(),
            Value::String(format!("{}, {name}", self.greeting)),
        );
        out.json_from(record, &doc)?;
        if vip {
            out.to("alerts").json(&serde_json::json!({ "name": name }))?;
        }
        Ok(())
    }
}

export_transform!(Greeter);
