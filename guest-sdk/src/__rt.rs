//! Glue called by [`export_transform!`](crate::export_transform) and by
//! native tests and benches. Not part of the public API.

use crate::__bindings::sluice::transform::types::{
    Batch as WireBatch, Outcomes as WireOutcomes, Source,
};
use crate::batch::{ABSENT, NO_TIMESTAMP};
use crate::{Batch, Config, Outcomes, Transform};

pub use crate::__bindings::sluice::transform::types::{
    Batch as Wire, OutcomeKind, Outcomes as WireOut,
};

/// Runs `init` for a transform type. In a component, also installs a panic
/// hook that logs the panic message at error level, so that the host can say
/// why a guest trapped.
pub fn init<T: Transform>(config: &str) -> Result<T, String> {
    #[cfg(target_arch = "wasm32")]
    {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                crate::log(crate::Level::Error, &format!("panic: {info}"));
            }))
        });
    }
    T::init(Config::from_json(config)?)
}

/// Runs one batch through a transform and checks the outcome count.
pub fn process<T: Transform>(transform: &mut T, batch: &WireBatch) -> Result<WireOutcomes, String> {
    let mut outcomes = Outcomes::with_capacity(batch.timestamps.len(), batch.arena.len());
    let batch = Batch::new(batch);
    transform.process_batch(&batch, &mut outcomes);
    if outcomes.len() != batch.len() {
        return Err(format!(
            "transform gave {} outcomes for {} records (process_batch must give exactly one per record)",
            outcomes.len(),
            batch.len()
        ));
    }
    Ok(outcomes.into_wire())
}

/// Builds a wire batch of value-only records (for native tests and benches).
pub fn batch_of_values<V: AsRef<[u8]>>(values: &[V]) -> WireBatch {
    let mut b = WireBatch {
        arena: Vec::new(),
        spans: Vec::with_capacity(values.len() * 4),
        timestamps: vec![NO_TIMESTAMP; values.len()],
        header_ends: vec![0; values.len()],
        header_spans: Vec::new(),
        sources: vec![Source {
            stream: "test".to_string(),
            partition: 0,
        }],
        source_index: vec![0; values.len()],
        offsets: (0..values.len() as i64).collect(),
    };
    for v in values {
        let v = v.as_ref();
        b.spans
            .extend_from_slice(&[0, ABSENT, b.arena.len() as u32, v.len() as u32]);
        b.arena.extend_from_slice(v);
    }
    b
}

/// The outputs of a wire outcome set as `(output name, value)` pairs, for
/// native tests.
pub fn output_values(out: &WireOutcomes) -> Vec<(String, Option<Vec<u8>>)> {
    (0..out.timestamps.len())
        .map(|i| {
            let name = out
                .output_index
                .get(i)
                .and_then(|&slot| out.output_names.get(slot as usize))
                .cloned()
                .unwrap_or_default();
            (
                name,
                crate::batch::span(&out.arena, &out.spans, i, 1).map(<[u8]>::to_vec),
            )
        })
        .collect()
}
