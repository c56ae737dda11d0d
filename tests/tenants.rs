//! Many tenants in one host: 1,000 tenant transforms (two different modules,
//! each tenant with its own configuration, `Store`, instance and limits) are
//! loaded in one engine, and each processes a batch of its own. Prints the
//! instantiation time per tenant and the resident memory they take (figures
//! for the closing note and SECURITY.md; nothing timed is asserted).

use sluice::engine::{Engine, InstanceSpec, Limits, Outcome, RefTables, Runner};
use sluice::record::{Partition, Position, Record};
use sluice_e2e::module;
use std::sync::Arc;
use std::time::Instant;

const TENANTS: usize = 1000;
const MAPPING: &str = r#"{"mapping":{"customer":"$.customer","amount":"$.amount"}}"#;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_thousand_tenant_transforms_load_and_process_a_batch_each() {
    let engine = Engine::new().expect("engine");
    assert!(
        engine.pooled(),
        "instances come from the pooling allocator on this host"
    );
    let identity = engine
        .load_file(&module("transforms/identity"))
        .expect("identity");
    let json_map = engine
        .load_file(&module("transforms/json-map"))
        .expect("json-map");
    let before = rss_kib();
    let started = Instant::now();
    let mut tenants: Vec<Runner> = (0..TENANTS)
        .map(|i| {
            let (m, config) = if i % 2 == 0 {
                (identity.clone(), "{}")
            } else {
                (json_map.clone(), MAPPING)
            };
            let spec = InstanceSpec {
                name: Arc::from(format!("tenant-{i}").as_str()),
                config: config.to_string(),
                tables: RefTables::empty(),
                limits: Limits::default(),
                grants: Default::default(),
            };
            Runner::new(m, spec).unwrap_or_else(|e| panic!("tenant {i}: {e}"))
        })
        .collect();
    let instantiate = started.elapsed();
    let loaded = rss_kib();

    let partition = Partition {
        stream: Arc::from("tenants"),
        partition: 0,
    };
    let records: Vec<Record> = (0..100)
        .map(|j| {
            Record::from_value(
                format!("{{\"customer\":\"C-{j}\",\"amount\":{j}.5,\"plate\":\"X\"}}").into_bytes(),
            )
        })
        .collect();
    let positions: Vec<Position> = (0..100)
        .map(|j| Position {
            partition: partition.clone(),
            offset: j,
        })
        .collect();
    let inputs: Vec<(&Record, &Position)> = records.iter().zip(&positions).collect();
    let started = Instant::now();
    for (i, t) in tenants.iter_mut().enumerate() {
        let out = t
            .process(&inputs)
            .unwrap_or_else(|e| panic!("tenant {i}: {e}"));
        assert_eq!(out.outcomes.len(), 100, "tenant {i}");
        assert!(
            out.outcomes
                .iter()
                .all(|o| matches!(o, Outcome::Emit { start, end } if end - start == 1)),
            "tenant {i}: one output per record"
        );
        if i % 2 == 1 {
            let v: serde_json::Value =
                serde_json::from_slice(out.outputs[3].record.value.as_deref().unwrap_or_default())
                    .expect("json-map output is JSON");
            assert_eq!(
                v,
                serde_json::json!({"customer": "C-3", "amount": 3.5}),
                "tenant {i}"
            );
        }
    }
    let process = started.elapsed();
    let after = rss_kib();
    eprintln!(
        "{TENANTS} tenants: instantiate + init {:.1} µs per tenant; first batch of 100 records {:.1} µs per tenant; \
         resident memory {} MiB before, {} MiB loaded (+{:.0} KiB per tenant), {} MiB after a batch each (+{:.0} KiB per tenant)",
        instantiate.as_secs_f64() * 1e6 / TENANTS as f64,
        process.as_secs_f64() * 1e6 / TENANTS as f64,
        before / 1024,
        loaded / 1024,
        loaded.saturating_sub(before) as f64 / TENANTS as f64,
        after / 1024,
        after.saturating_sub(before) as f64 / TENANTS as f64,
    );
    // Every tenant kept the one instance it was created with: none failed
    // and was re-created, so none was disturbed by the 999 others.
    let recreated: Vec<usize> = tenants
        .iter()
        .enumerate()
        .filter(|(_, t)| t.instantiations() != 1)
        .map(|(i, _)| i)
        .collect();
    assert!(recreated.is_empty(), "tenants re-created: {recreated:?}");
}
