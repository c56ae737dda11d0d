//! Pipelines being prepared: loaded and checked, their transforms compiled
//! and instantiated. Preparing can take seconds (a Python or JavaScript
//! guest compiles for several), so the host lists them — on the status
//! page, in `GET /api/pipelines` and in `serve`'s progress line — instead
//! of showing nothing until they run.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One pipeline being prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preparing {
    /// The pipeline's name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// The pipeline file.
    pub file: PathBuf,
    /// The transforms being compiled, in order.
    pub transforms: Vec<String>,
    /// How long it has been prepared so far.
    pub elapsed: Duration,
}

#[derive(Debug)]
struct Item {
    id: u64,
    since: Instant,
    what: Preparing,
}

/// The pipelines being prepared now.
#[derive(Debug, Default, Clone)]
pub struct PreparingList {
    items: Arc<Mutex<(u64, Vec<Item>)>>,
}

impl PreparingList {
    /// Lists `what` until the returned guard is dropped (when the pipeline
    /// runs, or is refused).
    pub fn begin(&self, what: Preparing) -> PreparingGuard {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        items.0 += 1;
        let id = items.0;
        items.1.push(Item {
            id,
            since: Instant::now(),
            what,
        });
        PreparingGuard {
            list: self.clone(),
            id,
        }
    }

    /// What is being prepared, oldest first, with the time taken so far.
    pub fn list(&self) -> Vec<Preparing> {
        let items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        items
            .1
            .iter()
            .map(|i| Preparing {
                elapsed: i.since.elapsed(),
                ..i.what.clone()
            })
            .collect()
    }
}

/// Keeps a pipeline listed as being prepared while it lives.
#[derive(Debug)]
pub struct PreparingGuard {
    list: PreparingList,
    id: u64,
}

impl Drop for PreparingGuard {
    fn drop(&mut self) {
        let mut items = self.list.items.lock().unwrap_or_else(|e| e.into_inner());
        items.1.retain(|i| i.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Preparing {
        Preparing {
            name: name.into(),
            tenant: "t".into(),
            file: PathBuf::from(format!("{name}.toml")),
            transforms: vec!["map".into()],
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn a_pipeline_is_listed_while_its_guard_lives_and_only_then() {
        let list = PreparingList::default();
        assert!(list.list().is_empty());
        let a = list.begin(named("a"));
        let b = list.begin(named("b"));
        let names: Vec<String> = list.list().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["a", "b"]);
        drop(a);
        let left = list.list();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].name, "b");
        assert_eq!(left[0].transforms, ["map"]);
        drop(b);
        assert!(list.list().is_empty());
    }

    #[test]
    fn the_same_pipeline_twice_is_two_entries_each_removed_by_its_own_guard() {
        let list = PreparingList::default();
        let first = list.begin(named("a"));
        let second = list.begin(named("a"));
        drop(first);
        assert_eq!(list.list().len(), 1);
        drop(second);
        assert!(list.list().is_empty());
    }
}
