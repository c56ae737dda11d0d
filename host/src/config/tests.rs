use super::*;

const GOOD: &str = r#"
name = "toll"
[source.file]
path = "data/*.jsonl"
[[transforms]]
name = "map"
module = "map.wasm"
config = { mapping = { a = "$.a" } }
[outputs.default.local]
path = "lake"
[dead_letter.stdout]
"#;

#[test]
fn retry_policies_and_the_circuit_breaker_are_configurable_and_checked() {
    let c = PipelineConfig::parse(GOOD, Path::new("p.toml")).expect("valid");
    assert_eq!(c.outputs["default"].retry(), RetryConfig::default());
    assert_eq!(c.circuit_breaker, CircuitBreakerConfig::default());
    let custom = GOOD.replace(
        "path = \"lake\"",
        "path = \"lake\"\nretry = { attempts = 3, initial_backoff_ms = 50, max_backoff_ms = 200 }",
    ) + "[circuit_breaker]\nfailure_ratio = 0.9\n";
    let c = PipelineConfig::parse(&custom, Path::new("p.toml")).expect("valid");
    assert_eq!(c.outputs["default"].retry().attempts, 3);
    assert_eq!(c.circuit_breaker.failure_ratio, 0.9);
    let zero = custom.replace("attempts = 3", "attempts = 3, max_elapsed_ms = 0");
    let err = PipelineConfig::parse(&zero, Path::new("p.toml"))
        .expect_err("no time to retry in")
        .to_string();
    assert!(err.contains("outputs.default.retry"), "{err}");
    assert_eq!(
        RetryConfig::default().attempts,
        0,
        "bounded by time, not count"
    );
    let ratio = custom.replace("failure_ratio = 0.9", "failure_ratio = 1.5");
    let err = PipelineConfig::parse(&ratio, Path::new("p.toml"))
        .expect_err("ratio")
        .to_string();
    assert!(err.contains("circuit_breaker"), "{err}");
}

#[test]
fn parses_with_defaults() {
    let c = PipelineConfig::parse(GOOD, Path::new("p.toml")).expect("valid");
    assert_eq!(c.tenant, "default");
    assert_eq!(c.batch, BatchPolicy::default());
    assert_eq!(
        c.transforms[0].config,
        serde_json::json!({"mapping": {"a": "$.a"}})
    );
    assert_eq!(c.transforms[0].limits, Limits::default());
}

#[test]
fn unknown_field_names_line_and_field() {
    let bad = GOOD.replace(
        "[outputs.default.local]",
        "colour = 3\n[outputs.default.local]",
    );
    let err = PipelineConfig::parse(&bad, Path::new("p.toml"))
        .expect_err("refused")
        .to_string();
    assert!(err.contains("p.toml"), "{err}");
    assert!(err.contains("line 9"), "{err}");
    assert!(err.contains("colour"), "{err}");
    let bad = GOOD.replace(
        "path = \"data/*.jsonl\"",
        "path = \"data/*.jsonl\"\nformat = \"xml\"",
    );
    let err = PipelineConfig::parse(&bad, Path::new("p.toml"))
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("line 5") && err.contains("format") && err.contains("xml"),
        "{err}"
    );
    let bad = GOOD.replace("[dead_letter.stdout]", "[dead_letter.pulsar]");
    let err = PipelineConfig::parse(&bad, Path::new("p.toml"))
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("line 11") && err.contains("pulsar") && err.contains("local"),
        "{err}"
    );
}

#[test]
fn wrong_type_names_the_field() {
    let bad = GOOD.replace(
        "name = \"toll\"",
        "name = \"toll\"\n[batch]\nmax_records = \"lots\"",
    );
    let err = PipelineConfig::parse(&bad, Path::new("p.toml"))
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("max_records") || err.contains("line 4"),
        "{err}"
    );
    assert!(err.contains("line 4"), "{err}");
}

#[test]
fn kafka_pipelines_parse_and_exactly_once_is_checked() {
    let kafka = r#"
name = "k"
[source.kafka]
bootstrap = "127.0.0.1:9092"
topics = ["in", "^events\\..*"]
group = "g"
start = "2026-11-18T14:00:00Z"
properties = { "session.timeout.ms" = "6000", "sasl.password" = "hunter2" }
[delivery]
guarantee = "exactly-once"
[outputs.default.kafka]
topic = "out"
[dead_letter.kafka]
topic = "dlq"
"#;
    let c = PipelineConfig::parse(kafka, Path::new("k.toml")).expect("valid");
    let SourceConfig::Kafka(k) = &c.source else {
        panic!("kafka source")
    };
    assert_eq!(k.start, StartPosition::Timestamp(1_795_010_400_000));
    assert!(
        !format!("{k:?}").contains("hunter2"),
        "secrets are redacted"
    );
    let SinkConfig::Kafka(out) = &c.outputs["default"] else {
        panic!("kafka sink")
    };
    assert_eq!(c.sink_bootstrap(out), Some("127.0.0.1:9092"));

    let local_dlq = kafka.replace(
        "[dead_letter.kafka]\ntopic = \"dlq\"",
        "[dead_letter.local]\npath = \"e\"",
    );
    let err = PipelineConfig::parse(&local_dlq, Path::new("k.toml"))
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("dead_letter") && err.contains("exactly-once") && err.contains("local"),
        "{err}"
    );

    let bad_start = kafka.replace("2026-11-18T14:00:00Z", "yesterday");
    let err = PipelineConfig::parse(&bad_start, Path::new("k.toml"))
        .expect_err("refused")
        .to_string();
    assert!(err.contains("yesterday") && err.contains("line 7"), "{err}");

    let file_to_kafka = GOOD.replace(
        "[outputs.default.local]\npath = \"lake\"",
        "[outputs.default.kafka]\ntopic = \"t\"",
    );
    let err = PipelineConfig::parse(&file_to_kafka, Path::new("p.toml"))
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("outputs.default") && err.contains("bootstrap"),
        "{err}"
    );
}

#[test]
fn semantic_errors() {
    let no_default = GOOD.replace("[outputs.default.local]", "[outputs.other.local]");
    let err = PipelineConfig::parse(&no_default, Path::new("p.toml"))
        .expect_err("refused")
        .to_string();
    assert!(err.contains("outputs.default"), "{err}");
    let twice = GOOD.replace(
        "[outputs.default.local]",
        "[[transforms]]\nname = \"map\"\nmodule = \"m.wasm\"\n[outputs.default.local]",
    );
    let err = PipelineConfig::parse(&twice, Path::new("p.toml"))
        .expect_err("refused")
        .to_string();
    assert!(err.contains("used twice"), "{err}");
}

#[test]
fn a_kafka_output_keyed_by_a_field_is_checked() {
    let base = r#"
name = "k"
[source.kafka]
bootstrap = "127.0.0.1:9092"
topics = ["in"]
group = "g"
[[transforms]]
name = "map"
module = "map.wasm"
[outputs.default.kafka]
topic = "out"
key = "$.vehicle.plate"
[dead_letter.kafka]
topic = "dlq"
"#;
    let c = PipelineConfig::parse(base, Path::new("k.toml")).expect("valid");
    let SinkConfig::Kafka(out) = &c.outputs["default"] else {
        panic!("kafka sink")
    };
    assert_eq!(out.key.as_deref(), Some("$.vehicle.plate"));
    let bad = base.replace("$.vehicle.plate", "$.plates[0]");
    let err = PipelineConfig::parse(&bad, Path::new("k.toml"))
        .expect_err("an index is refused")
        .to_string();
    assert!(
        err.contains("outputs.default.kafka.key") && err.contains("not indexes"),
        "{err}"
    );
    let on_dlq = base.replace("topic = \"dlq\"", "topic = \"dlq\"\nkey = \"$.a\"");
    let err = PipelineConfig::parse(&on_dlq, Path::new("k.toml"))
        .expect_err("no key on the dead-letter queue")
        .to_string();
    assert!(err.contains("dead_letter.kafka.key"), "{err}");
}
