//! Fairness: the in-flight budget shared among the partitions being read,
//! and partitions holding more than their share paused alone.

use super::*;

/// A partition counts as read from (it shares the budget) this long after
/// its last record.
pub(super) const ACTIVE_WINDOW: Duration = Duration::from_secs(5);

/// Which partitions share the budget: those read from within
/// [`ACTIVE_WINDOW`] (or assigned, until they have been idle that long), and
/// those this source holds back. A partition the source paused is not idle:
/// however long it waits it keeps its share, or the others' shares would
/// grow over it and it would wait longer still (with slow acknowledgements,
/// two partitions of four once waited 16 s while the other two drained).
#[derive(Default)]
pub(super) struct Sharing {
    /// When each partition was last read from (or assigned, or resumed).
    pub(super) last_read: HashMap<Partition, Instant>,
    /// How many share the budget, and when that was counted.
    pub(super) count: usize,
    pub(super) counted: Option<Instant>,
}

impl Sharing {
    /// Notes a record of `p` read at `now`.
    pub(super) fn read(&mut self, p: &Partition, now: Instant) {
        match self.last_read.get_mut(p) {
            Some(t) => *t = now,
            None => {
                self.last_read.insert(p.clone(), now);
                self.counted = None;
            }
        }
    }

    /// How many partitions share the budget, counted again at most every
    /// 100 ms; `held` are the partitions this source holds back.
    pub(super) fn count(&mut self, held: &BTreeSet<Partition>, now: Instant) -> usize {
        if self
            .counted
            .is_none_or(|t| now.duration_since(t) > Duration::from_millis(100))
        {
            self.last_read
                .retain(|p, t| held.contains(p) || now.duration_since(*t) <= ACTIVE_WINDOW);
            self.count = self.last_read.len();
            self.counted = Some(now);
        }
        self.count
    }

    /// `p` was resumed at `now`: its wait does not count as idle.
    pub(super) fn resumed(&mut self, p: Partition, now: Instant) {
        self.last_read.insert(p, now);
    }

    /// The whole assignment was paused (budget spent) until `now`: the time
    /// paused does not count as idle for any partition that was sharing.
    pub(super) fn unpaused(&mut self, now: Instant) {
        for t in self.last_read.values_mut() {
            *t = now;
        }
        self.count = self.last_read.len();
        self.counted = Some(now);
    }

    /// A new assignment at `now`: partitions no longer assigned leave; a
    /// newly assigned one shares from the start (until it has been idle for
    /// the window), otherwise the first partition read would take all of it
    /// before the others' records are seen.
    pub(super) fn reassigned(&mut self, assignment: &[Partition], now: Instant) {
        self.last_read.retain(|p, _| assignment.contains(p));
        for p in assignment {
            self.last_read.entry(p.clone()).or_insert(now);
        }
        self.counted = None;
    }
}

/// Partitions paused one by one for holding more than their share of the
/// budget (see the module's notes on fairness).
#[derive(Default)]
pub(super) struct HeldBack {
    pub(super) partitions: BTreeSet<Partition>,
    /// Which partitions share the budget.
    pub(super) sharing: Sharing,
    /// When the held-back partitions were last looked at.
    pub(super) checked: Option<Instant>,
}

impl HeldBack {
    /// How many partitions share the budget now.
    pub(super) fn sharing(&mut self) -> usize {
        self.sharing.count(&self.partitions, Instant::now())
    }

    /// Notes a record of `p`, and pauses `p` if it holds its whole share of
    /// the budget.
    pub(super) fn check(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        ctx: &SourceContext,
        p: &Partition,
    ) {
        self.sharing.read(p, Instant::now());
        let sharing = self.sharing();
        if self.partitions.contains(p) || !ctx.budget.over_share(p, sharing, 4) {
            return;
        }
        match consumer.pause(&one_partition(p)) {
            Ok(()) => {
                tracing::debug!(partition = %p, in_flight = ctx.budget.in_flight_of(p), sharing, "partition over its share of the budget: paused");
                self.partitions.insert(p.clone());
            }
            Err(e) => tracing::warn!(%e, partition = %p, "cannot pause a partition"),
        }
    }

    /// Resumes the partitions back under three quarters of their share.
    pub(super) fn release(&mut self, consumer: &BaseConsumer<SourceContext>, ctx: &SourceContext) {
        if self.partitions.is_empty()
            || self
                .checked
                .is_some_and(|t| t.elapsed() < Duration::from_millis(5))
        {
            return;
        }
        self.checked = Some(Instant::now());
        let sharing = self.sharing();
        let ready: Vec<Partition> = self
            .partitions
            .iter()
            .filter(|p| !ctx.budget.over_share(p, sharing, 3))
            .cloned()
            .collect();
        for p in ready {
            match consumer.resume(&one_partition(&p)) {
                Ok(()) => {
                    tracing::debug!(partition = %p, "partition back within its share: resumed");
                    self.partitions.remove(&p);
                    self.sharing.resumed(p, Instant::now());
                }
                Err(e) => tracing::warn!(%e, partition = %p, "cannot resume a partition"),
            }
        }
    }

    /// After a rebalance: forgets partitions no longer assigned and pauses
    /// the others again (an assignment may reset their state).
    pub(super) fn reassigned(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        assignment: &[Partition],
    ) {
        self.partitions.retain(|p| assignment.contains(p));
        self.sharing.reassigned(assignment, Instant::now());
        for p in &self.partitions {
            if let Err(e) = consumer.pause(&one_partition(p)) {
                tracing::warn!(%e, partition = %p, "cannot pause a partition");
            }
        }
    }
}

pub(super) fn one_partition(p: &Partition) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&p.stream, p.partition);
    tpl
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(i: i32) -> Partition {
        Partition {
            stream: Arc::from("t"),
            partition: i,
        }
    }

    fn assigned(t0: Instant) -> Sharing {
        let mut s = Sharing::default();
        s.reassigned(&[part(0), part(1), part(2), part(3)], t0);
        s
    }

    #[test]
    fn a_partition_held_back_keeps_its_share_however_long_it_waits() {
        let t0 = Instant::now();
        let later = t0 + ACTIVE_WINDOW + Duration::from_secs(1);
        let mut s = assigned(t0);
        assert_eq!(s.count(&BTreeSet::new(), t0), 4);
        // Partitions 0 and 1 are read; 2 is held back, 3 is idle.
        s.read(&part(0), later);
        s.read(&part(1), later);
        let held: BTreeSet<Partition> = [part(2)].into();
        assert_eq!(
            s.count(&held, later),
            3,
            "0 and 1 read, 2 held back; 3 idle"
        );
        // The control: not held back, 2 is idle too.
        let mut s = assigned(t0);
        s.read(&part(0), later);
        s.read(&part(1), later);
        assert_eq!(s.count(&BTreeSet::new(), later), 2);
    }

    #[test]
    fn the_time_the_whole_assignment_was_paused_is_not_idle() {
        let t0 = Instant::now();
        let resumed = t0 + ACTIVE_WINDOW * 2;
        let mut s = assigned(t0);
        s.unpaused(resumed);
        s.read(&part(0), resumed + Duration::from_millis(200));
        assert_eq!(
            s.count(&BTreeSet::new(), resumed + Duration::from_millis(200)),
            4
        );
        // The control: without it, only the partition read still shares.
        let mut s = assigned(t0);
        s.read(&part(0), resumed + Duration::from_millis(200));
        assert_eq!(
            s.count(&BTreeSet::new(), resumed + Duration::from_millis(200)),
            1
        );
    }

    #[test]
    fn a_partition_shares_from_its_resume_until_idle_for_the_window() {
        let t0 = Instant::now();
        let mut s = assigned(t0);
        let resumed = t0 + ACTIVE_WINDOW * 2;
        s.resumed(part(3), resumed);
        assert_eq!(s.count(&BTreeSet::new(), resumed), 1);
        let idle = resumed + ACTIVE_WINDOW + Duration::from_secs(1);
        assert_eq!(s.count(&BTreeSet::new(), idle), 0);
        // A new assignment brings partitions back in, at once.
        s.reassigned(&[part(0), part(1)], idle);
        assert_eq!(s.count(&BTreeSet::new(), idle), 2);
    }
}
