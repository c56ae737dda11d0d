//! Checks of a parsed pipeline that its types cannot express: each part
//! checks itself (limits, grants, retry and batch policies, each plugin),
//! this file ties them together and checks how they combine.

use super::*;

impl PipelineConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("`name` must not be empty".into());
        }
        for (name, sink) in self
            .outputs
            .iter()
            .map(|(n, s)| (format!("outputs.{n}"), s))
            .chain(std::iter::once((
                "dead_letter".to_string(),
                &self.dead_letter,
            )))
        {
            sink.retry().check(&name)?;
        }
        self.circuit_breaker.check()?;
        if let Some(bad) = self
            .outputs
            .keys()
            .find(|n| !crate::engine::valid_output_name(n))
        {
            return Err(format!(
                "`outputs.{bad}`: an output name is 1 to {} ASCII letters, digits, `_`, `-` or `.`",
                crate::engine::MAX_OUTPUT_NAME
            ));
        }
        if !self.outputs.contains_key("default") {
            return Err(
                "`outputs.default` is missing: the last transform's default output needs a sink"
                    .into(),
            );
        }
        let dlq_format = self
            .dead_letter
            .plugin()
            .line_format()
            .unwrap_or(RecordFormat::Value);
        if dlq_format != RecordFormat::Value {
            return Err("`dead_letter`: `format` does not apply, dead-letter entries are always written as JSON envelopes".into());
        }
        self.validate_plugins()?;
        self.batch.check()?;
        let b = &self.batch;
        let d = &self.delivery;
        if d.workers == 0 || d.max_in_flight_records == 0 || d.max_in_flight_mb == 0 {
            return Err(
                "`delivery.workers`, `max_in_flight_records` and `max_in_flight_mb` must be at least 1"
                    .into(),
            );
        }
        if d.max_in_flight_records < b.max_records {
            return Err(format!(
                "`delivery.max_in_flight_records` ({}) must be at least `batch.max_records` ({})",
                d.max_in_flight_records, b.max_records
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.transforms.iter().enumerate() {
            if t.name.trim().is_empty() {
                return Err(format!("`transforms[{i}].name` must not be empty"));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(format!(
                    "`transforms[{i}].name`: the name `{}` is used twice",
                    t.name
                ));
            }
            t.limits.check(&format!("transforms[{i}].limits"))?;
            t.grants.check(&format!("transforms[{i}].grants"))?;
        }
        Ok(())
    }

    pub(super) fn validate_plugins(&self) -> Result<(), String> {
        self.source.plugin().check()?;
        for (name, sink) in self.sinks() {
            let base = self.origin.path.parent().unwrap_or(Path::new("."));
            sink.plugin()
                .check(&sink_path(name), &self.sink_scope(base))?;
        }
        if self.delivery.guarantee == Guarantee::ExactlyOnce {
            if self.source.plugin().transactional_cluster().is_none() {
                return Err("`delivery.guarantee = \"exactly-once\"` needs a Kafka source: offsets are committed in the same Kafka transaction as the outputs".into());
            }
            let scope = self.sink_scope(Path::new("."));
            for (name, sink) in self.sinks() {
                if let Err(why) = sink.plugin().joins_transactions(&scope) {
                    return Err(format!(
                        "`{}`: with exactly-once, every output and the dead-letter queue must be Kafka topics on the source's cluster ({why}); use at-least-once for pipelines that write elsewhere",
                        sink_path(name)
                    ));
                }
            }
        }
        Ok(())
    }
}

pub(super) fn sink_path(name: &str) -> String {
    if name == "dead-letter" {
        "dead_letter".to_string()
    } else {
        format!("outputs.{name}")
    }
}
