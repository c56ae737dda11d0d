//! Native tests of the SDK's batch loop and outcome encoding.

use crate::__rt::{OutcomeKind, batch_of_values, output_values, process};
use crate::{Batch, Config, Emit, Error, Outcomes, Output, Record, Transform};

/// Emits per the value: "two" → two outputs (one to `alerts`), "drop" →
/// nothing, "half" → one output then fails, else echo.
struct Script;

impl Transform for Script {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Script)
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Emit<'_>) -> Result<(), Error> {
        match record.value_str()? {
            "two" => {
                out.value(b"a");
                out.to("alerts")
                    .json(&serde_json::json!({"n": record.offset()}))?;
                Ok(())
            }
            "drop" => Ok(()),
            "half" => {
                out.value(b"partial");
                Err(Error::new("half", "failed after emitting"))
            }
            _ => {
                out.emit(&Output::from_record(record).key(b"k").header("h", b"v"));
                Ok(())
            }
        }
    }
}

#[test]
fn outcomes_line_up_with_inputs_and_failures_roll_back() {
    let wire = batch_of_values(&["two", "drop", "half", "echo"]);
    let out = process(&mut Script, &wire).expect("one outcome per input");
    assert_eq!(
        out.kinds,
        vec![
            OutcomeKind::Emit,
            OutcomeKind::Drop,
            OutcomeKind::Fail,
            OutcomeKind::Emit
        ]
    );
    assert_eq!(
        out.output_ends,
        vec![2, 2, 2, 3],
        "the failed record's partial output is rolled back"
    );
    assert_eq!(out.failures.len(), 1);
    assert_eq!(out.failures[0].kind, "half");
    let values = output_values(&out);
    assert_eq!(values[0], (String::new(), Some(b"a".to_vec())));
    assert_eq!(
        values[1],
        ("alerts".to_string(), Some(br#"{"n":0}"#.to_vec()))
    );
    assert_eq!(values[2], (String::new(), Some(b"echo".to_vec())));
    assert_eq!(
        out.arena.windows(7).filter(|w| w == b"partial").count(),
        0,
        "rolled-back bytes are gone"
    );
    assert_eq!(out.header_ends, vec![0, 0, 1]);
}

struct ShortBatch;

impl Transform for ShortBatch {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(ShortBatch)
    }
    fn process(&mut self, _: &Record<'_>, _: &mut Emit<'_>) -> Result<(), Error> {
        Ok(())
    }
    fn process_batch(&mut self, batch: &Batch<'_>, out: &mut Outcomes) {
        // Forgets the last record.
        for _ in 1..batch.len() {
            out.drop_record();
        }
    }
}

#[test]
fn a_batch_transform_that_skips_records_fails_the_batch() {
    let wire = batch_of_values(&["a", "b"]);
    let err = process(&mut ShortBatch, &wire).expect_err("mismatch is reported");
    assert!(err.contains("1 outcomes for 2 records"), "{err}");
}

#[test]
fn records_read_their_columns() {
    let wire = batch_of_values(&["{\"x\": 1}", "not json"]);
    let batch = Batch::new(&wire);
    let first = batch.get(0).expect("record 0");
    assert_eq!(first.json::<serde_json::Value>().expect("json")["x"], 1);
    assert_eq!(first.key(), None);
    assert_eq!(first.timestamp(), None);
    assert_eq!(first.stream(), Some("test"));
    assert_eq!(first.offset(), Some(0));
    let err = batch
        .get(1)
        .expect("record 1")
        .json::<serde_json::Value>()
        .expect_err("not json");
    assert_eq!(err.kind(), "invalid-input");
    assert!(batch.get(2).is_none());
}

#[test]
fn config_errors_name_the_field() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct S {
        mapping: String,
    }
    let err = Config::from_json("{}")
        .expect("valid json")
        .parse::<S>()
        .expect_err("missing");
    assert!(err.contains("missing field `mapping`"), "{err}");
    assert!(Config::from_json("{").is_err());
    assert!(
        Config::from_json("")
            .expect("empty is {}")
            .value()
            .is_object()
    );
}
