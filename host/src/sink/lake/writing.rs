//! Records into segments, per source partition: a segment rolls at a count,
//! a size or an age, and is closed (written, then its marker) with at most
//! [`CLOSING`] at once.

use super::*;

impl Inner {
    pub(super) fn is_full(&self, seg: &Segment) -> bool {
        let roll = &self.config.roll;
        seg.size() as u64 >= roll.bytes || roll.records.is_some_and(|r| seg.records >= r)
    }

    /// Adds one partition's items (in order) to its segments; returns the
    /// receivers of every segment they went into.
    pub(super) async fn add(
        self: &Arc<Self>,
        source: &Partition,
        items: Vec<Item>,
    ) -> Result<Vec<oneshot::Receiver<Outcome>>, SinkError> {
        let part = self.part(source);
        let mut part = part.lock().await;
        let mut waits = Vec::new();
        // The source went back (a session restarted from its committed
        // offsets, the partition came back after a rebalance): what is open
        // will be read again, and segments written since the markers were
        // loaded must be found again.
        let first = items.first().map(|i| i.offset);
        if let (Some(f), Some(h)) = (first, part.high)
            && f <= h
        {
            if let Some(seg) = part.open.take() {
                let size = (seg.size() as u64).min(self.open_bytes.load(Ordering::Relaxed));
                self.open_bytes.fetch_sub(size, Ordering::Relaxed);
                let why: Outcome = Err((
                    format!(
                        "{source}: the source went back to offset {f}; these records are read again"
                    ),
                    true,
                ));
                for w in seg.waiters {
                    let _ = w.send(why.clone());
                }
            }
            part.recovered = None;
            tracing::debug!(sink = %self.writer.describe, source = %source, from = f, "the source replays: markers reloaded");
        }
        if let Some(last) = items.last() {
            part.high = Some(last.offset);
        }
        if part.recovered.is_none() {
            let from = items.first().map_or(0, |i| i.offset);
            let recovered = if source.stream.starts_with("_run-") {
                Vec::new()
            } else {
                self.writer
                    .recover(&part.name, from)
                    .await
                    .map_err(|e| self.store_error(e))?
            };
            if !recovered.is_empty() {
                tracing::info!(sink = %self.writer.describe, source = %source, segments = recovered.len(),
                    "segments written before the restart reach the replayed offsets; they are rebuilt as recorded");
            }
            part.recovered = Some(recovered);
        }
        let mut joined = false;
        let mut registered: Option<i64> = None;
        for item in items {
            let o = item.offset;
            // A recorded segment this offset lies in.
            let covering = part
                .recovered
                .as_ref()
                .and_then(|r| r.iter().find(|r| r.marker.first <= o && o <= r.marker.last))
                .cloned();
            // Leaving the segment being rebuilt, or entering a recorded one
            // while a fresh segment is open: close what is open.
            let leave = match (&part.open, &covering) {
                (Some(seg), _) if seg.rebuilds.as_ref().is_some_and(|r| o > r.marker.last) => true,
                (Some(seg), Some(c)) if seg.rebuilds.is_none() && o >= c.marker.first => true,
                _ => false,
            };
            if leave {
                self.close(&mut part).await?;
            }
            if part.open.is_none() {
                match covering {
                    Some(c) if c.marker.first == o => {
                        part.open = Some(Segment::new(o, Some(c)));
                    }
                    Some(c) => {
                        // The commit fell inside this recorded segment: its
                        // records from here on are in the lake already.
                        if !c.complete {
                            return Err(self.store_error((
                                format!(
                                    "{}: offset {o} lies inside the recorded segment {}..={} whose objects are not all written, but the replay did not start at its first offset {}: the transforms are not deterministic",
                                    source, c.marker.first, c.marker.last, c.marker.first
                                ),
                                false,
                            )));
                        }
                        if !joined {
                            tracing::debug!(sink = %self.writer.describe, source = %source, offset = o,
                                "replayed records already in the lake: acknowledged without a write");
                            joined = true;
                        }
                        continue;
                    }
                    None => part.open = Some(Segment::new(o, None)),
                }
            }
            let Some(seg) = part.open.as_mut() else {
                continue;
            };
            let before = seg.size();
            if seg.broken.is_none() {
                let entry = match seg.objects.entry(item.path) {
                    std::collections::btree_map::Entry::Occupied(e) => Some(e.into_mut()),
                    std::collections::btree_map::Entry::Vacant(v) => match self.new_encoder() {
                        Ok(enc) => Some(v.insert((enc, 0))),
                        Err(e) => {
                            seg.broken = Some(e);
                            None
                        }
                    },
                };
                if let Some((enc, n)) = entry {
                    match enc.push(&item.line) {
                        Ok(()) => *n += 1,
                        Err(e) => seg.broken = Some(format!("record {}: {e}", item.index)),
                    }
                }
            }
            seg.records += 1;
            seg.last = seg.last.max(o);
            if let Some(m) = item.module
                && !seg.modules.contains(&*m)
            {
                seg.modules.insert(m.to_string());
            }
            let grown = seg.size().saturating_sub(before) as u64;
            self.open_bytes.fetch_add(grown, Ordering::Relaxed);
            // One waiter per segment this submit adds to.
            if registered != Some(seg.first) {
                let (tx, rx) = oneshot::channel();
                seg.waiters.push(tx);
                waits.push(rx);
                registered = Some(seg.first);
            }
            // A fresh segment closes by the roll settings; a rebuilt one
            // once it holds the records its marker counts.
            let done = match &seg.rebuilds {
                None => self.is_full(seg),
                Some(r) => seg.records >= r.marker.records,
            };
            if done {
                self.close(&mut part).await?;
            }
        }
        Ok(waits)
    }

    /// Closes the open segment of `part` (if any): starts writing it once a
    /// closing slot is free. A rebuilt segment closed before its recorded
    /// end (flush, memory) is not written: its records are in the lake when
    /// the marker's objects all exist, and are read again otherwise.
    pub(super) async fn close(self: &Arc<Self>, part: &mut Part) -> Result<(), SinkError> {
        let Some(seg) = part.open.take() else {
            return Ok(());
        };
        self.open_bytes.fetch_sub(
            (seg.size() as u64).min(self.open_bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        if let Some(r) = &seg.rebuilds
            && seg.last < r.marker.last
        {
            let outcome: Outcome = if r.complete {
                Ok(())
            } else {
                Err((
                    format!(
                        "{}: the sink closed before the replay reached the end of the recorded segment {}..={}; its records are read again",
                        part.source, r.marker.first, r.marker.last
                    ),
                    true,
                ))
            };
            for w in seg.waiters {
                let _ = w.send(outcome.clone());
            }
            return Ok(());
        }
        let permit = self
            .closing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.store_error(("the sink is shutting down".into(), true)))?;
        let inner = self.clone();
        let source = part.source.clone();
        let name = part.name.clone();
        tokio::spawn(async move {
            let mut seg = seg;
            let waiters = std::mem::take(&mut seg.waiters);
            let outcome = inner.writer.write(&source, &name, seg).await;
            if let Err((message, _)) = &outcome {
                tracing::error!(sink = %inner.writer.describe, source = %source, error = %message, "a lake segment was not written");
            }
            for w in waiters {
                let _ = w.send(outcome.clone());
            }
            drop(permit);
        });
        Ok(())
    }

    /// Closes open segments: those older than `age` (`None`: all).
    pub(super) async fn close_all(
        self: &Arc<Self>,
        age: Option<Duration>,
    ) -> Result<(), SinkError> {
        let parts: Vec<_> = {
            let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
            parts.values().cloned().collect()
        };
        for p in parts {
            let mut part = p.lock().await;
            let due = part.open.as_ref().is_some_and(|s| match age {
                None => true,
                Some(age) => s.rebuilds.is_none() && s.opened.elapsed() >= age,
            });
            if due {
                self.close(&mut part).await?;
            }
        }
        Ok(())
    }

    /// When open segments hold more than allowed, closes the largest fresh
    /// one.
    pub(super) async fn relieve(self: &Arc<Self>) -> Result<(), SinkError> {
        while self.open_bytes.load(Ordering::Relaxed) > self.config.max_open_bytes {
            let parts: Vec<_> = {
                let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
                parts.values().cloned().collect()
            };
            let mut largest: Option<(usize, Arc<tokio::sync::Mutex<Part>>)> = None;
            for p in parts {
                let Ok(part) = p.try_lock() else { continue };
                // A segment being rebuilt closes at its recorded end only.
                let size = part
                    .open
                    .as_ref()
                    .filter(|s| s.rebuilds.is_none())
                    .map_or(0, Segment::size);
                if size > 0 && largest.as_ref().is_none_or(|(s, _)| size > *s) {
                    drop(part);
                    largest = Some((size, p));
                }
            }
            let Some((_, p)) = largest else {
                return Ok(());
            };
            let mut part = p.lock().await;
            self.close(&mut part).await?;
        }
        Ok(())
    }
}

/// Closes segments once they are `age` old.
pub(super) async fn by_age(inner: Weak<Inner>, age: Duration, tick: Duration) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(e) = inner.close_all(Some(age)).await {
            tracing::warn!(sink = %inner.writer.describe, error = %e, "closing lake segments by age failed");
        }
    }
}
