//! Counters, and histograms counted into their buckets when a value is recorded, kept
//! per thread, for the recorder of [`PrometheusExporter`](crate::PrometheusExporter).
//!
//! `metrics-exporter-prometheus` keeps every recorded value in a lock-free list until the
//! next upkeep or scrape folds it into buckets: ~33 ns a value here (an epoch pin and
//! three atomic read-modify-writes), and ~16 bytes a value held in between (measured:
//! 20 M values, 330 MB). The bus records two values per delivery, millions a second, so
//! that list costs a third of a synchronous publish and grows by hundreds of MB between
//! upkeeps. A Prometheus histogram needs only its bucket counts and sum, so these
//! histograms keep just that: one row of counters per recording thread (a
//! [`ThreadLocal`] entry, written by its thread alone, so no read-modify-write), summed
//! when rendered. Memory is fixed per (histogram, thread); a value costs a bucket
//! search and two plain stores. Counters get the same treatment: the exporter's counter
//! is two atomic read-modify-writes (its value and an idle-timeout generation), ~10 ns,
//! and the bus bumps two per delivery; a row per thread makes it a load and a store.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use crossbeam_utils::CachePadded;
use metrics::CounterFn;
use metrics::{HistogramFn, Key, SharedString};
use metrics_exporter_prometheus::formatting::{
    write_help_line, write_metric_line, write_type_line,
};
use metrics_exporter_prometheus::{LabelSet, Matcher};
use thread_local::ThreadLocal;

/// Adds `n` to a cell only this thread writes: a load and a store, no read-modify-write.
#[inline]
fn bump(cell: &AtomicU64, n: u64) {
    cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Counts of one thread: `counts[i]` values `<= bounds[i]` (and above `bounds[i - 1]`),
/// `counts[bounds.len()]` the rest (`+Inf`, and NaN); `sum` an `f64` in its bits. Padded
/// so that two threads' rows never share a cache line.
struct Row {
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Row {
    fn new(buckets: usize) -> CachePadded<Self> {
        CachePadded::new(Self {
            counts: (0..=buckets).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        })
    }
}

/// One histogram (a name and label set) with fixed bucket bounds.
pub(crate) struct BucketedHistogram {
    bounds: Arc<[f64]>,
    rows: ThreadLocal<CachePadded<Row>>,
}

/// What a histogram holds at one moment: non-cumulative bucket counts (the last one
/// `+Inf`), and the sum.
#[derive(Debug, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) counts: Vec<u64>,
    pub(crate) sum: f64,
}

impl BucketedHistogram {
    pub(crate) fn new(bounds: Arc<[f64]>) -> Self {
        Self {
            bounds,
            rows: ThreadLocal::new(),
        }
    }

    #[inline]
    fn add(&self, value: f64, count: u64) {
        let row = self.rows.get_or(|| Row::new(self.bounds.len()));
        // A scan from the smallest bound: the bus's values are mostly in the first few
        // buckets, where it beats a binary search. NaN is below no bound: `+Inf`.
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        // Only this thread writes its row (`ThreadLocal` gives each live thread its own;
        // a row outlives its thread and passes, with its counts, to a later one), so a
        // load and a store add without a read-modify-write; renders read them Relaxed.
        bump(&row.counts[bucket], count);
        let sum = f64::from_bits(row.sum.load(Relaxed)) + value * count as f64;
        row.sum.store(sum.to_bits(), Relaxed);
    }

    /// The counts of every thread, added up.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut counts = vec![0; self.bounds.len() + 1];
        let mut sum = 0.0;
        for row in self.rows.iter() {
            for (total, count) in counts.iter_mut().zip(row.counts.iter()) {
                *total += count.load(Relaxed);
            }
            sum += f64::from_bits(row.sum.load(Relaxed));
        }
        Snapshot { counts, sum }
    }
}

impl HistogramFn for BucketedHistogram {
    #[inline]
    fn record(&self, value: f64) {
        self.add(value, 1);
    }

    fn record_many(&self, value: f64, count: usize) {
        self.add(value, count as u64);
    }
}

/// A counter: a cell per thread, plus what [`absolute`](CounterFn::absolute) added.
pub(crate) struct LocalCounter {
    rows: ThreadLocal<CachePadded<AtomicU64>>,
    base: AtomicU64,
}

impl LocalCounter {
    fn new() -> Self {
        Self {
            rows: ThreadLocal::new(),
            base: AtomicU64::new(0),
        }
    }

    pub(crate) fn value(&self) -> u64 {
        self.rows
            .iter()
            .fold(self.base.load(Relaxed), |total, row| {
                total.wrapping_add(row.load(Relaxed))
            })
    }
}

impl CounterFn for LocalCounter {
    #[inline]
    fn increment(&self, value: u64) {
        bump(
            self.rows.get_or(|| CachePadded::new(AtomicU64::new(0))),
            value,
        );
    }

    /// Raises the counter to `value` if it is below (racing with increments on other
    /// threads, it may overshoot by what they added meanwhile).
    fn absolute(&self, value: u64) {
        let current = self.value();
        if value > current {
            self.base.fetch_add(value - current, Relaxed);
        }
    }
}

/// The counters and bucketed histograms of a recorder: which histogram names have
/// buckets, and each series.
pub(crate) struct Local {
    /// First match wins.
    buckets: Vec<(Matcher, Arc<[f64]>)>,
    global_labels: indexmap::IndexMap<String, String>,
    counters: RwLock<HashMap<Key, Arc<LocalCounter>>>,
    histograms: RwLock<HashMap<Key, Arc<BucketedHistogram>>>,
    descriptions: RwLock<HashMap<String, SharedString>>,
}

impl Local {
    pub(crate) fn new(
        buckets: Vec<(Matcher, Arc<[f64]>)>,
        global_labels: indexmap::IndexMap<String, String>,
    ) -> Self {
        Self {
            buckets,
            global_labels,
            counters: RwLock::default(),
            histograms: RwLock::default(),
            descriptions: RwLock::default(),
        }
    }

    /// The bucket bounds for histograms called `name`, if they are bucketed here.
    pub(crate) fn bounds_for(&self, name: &str) -> Option<&Arc<[f64]>> {
        self.buckets
            .iter()
            .find(|(matcher, _)| matcher.matches(name))
            .map(|(_, bounds)| bounds)
    }

    /// The counter of `key`, created on first use.
    pub(crate) fn counter(&self, key: &Key) -> Arc<LocalCounter> {
        get_or_create(&self.counters, key, LocalCounter::new)
    }

    /// The histogram of `key` (created on first use), or `None` when its name is not
    /// bucketed here.
    pub(crate) fn histogram(&self, key: &Key) -> Option<Arc<BucketedHistogram>> {
        let bounds = self.bounds_for(key.name())?;
        Some(get_or_create(&self.histograms, key, || {
            BucketedHistogram::new(bounds.clone())
        }))
    }

    /// The help text of a counter or bucketed histogram.
    pub(crate) fn describe(&self, name: &str, description: SharedString) {
        let mut descriptions = self.descriptions.write().unwrap_or_else(|e| e.into_inner());
        descriptions.insert(name.to_owned(), description);
    }

    /// The text exposition of every counter and bucketed histogram (format 0.0.4, the
    /// lines `metrics-exporter-prometheus` writes), families sorted by name and series by
    /// labels.
    pub(crate) fn render(&self, out: &mut String) {
        let descriptions = read(&self.descriptions);
        let counters = read(&self.counters);
        for (name, series) in families(&counters, &self.global_labels) {
            header(out, name, "counter", &descriptions);
            for (labels, counter) in series {
                write_metric_line::<&str, u64>(
                    out,
                    name,
                    None,
                    &labels,
                    None,
                    counter.value(),
                    None,
                );
            }
            let _ = writeln!(out);
        }
        let histograms = read(&self.histograms);
        for (name, series) in families(&histograms, &self.global_labels) {
            header(out, name, "histogram", &descriptions);
            for (labels, histogram) in series {
                let snapshot = histogram.snapshot();
                let mut cumulative = 0;
                for (bound, count) in histogram.bounds.iter().zip(&snapshot.counts) {
                    cumulative += count;
                    write_metric_line(
                        out,
                        name,
                        Some("bucket"),
                        &labels,
                        Some(("le", bound)),
                        cumulative,
                        None,
                    );
                }
                let total: u64 = snapshot.counts.iter().sum();
                write_metric_line(
                    out,
                    name,
                    Some("bucket"),
                    &labels,
                    Some(("le", "+Inf")),
                    total,
                    None,
                );
                write_metric_line::<&str, f64>(
                    out,
                    name,
                    Some("sum"),
                    &labels,
                    None,
                    snapshot.sum,
                    None,
                );
                write_metric_line::<&str, u64>(
                    out,
                    name,
                    Some("count"),
                    &labels,
                    None,
                    total,
                    None,
                );
            }
            let _ = writeln!(out);
        }
    }
}

fn get_or_create<T>(
    map: &RwLock<HashMap<Key, Arc<T>>>,
    key: &Key,
    new: impl FnOnce() -> T,
) -> Arc<T> {
    if let Some(found) = read(map).get(key) {
        return found.clone();
    }
    let mut map = map.write().unwrap_or_else(|e| e.into_inner());
    map.entry(key.clone())
        .or_insert_with(|| Arc::new(new()))
        .clone()
}

/// The series of one metric name: each label set (global labels first) and its value.
type Series<'m, T> = Vec<(LabelSet, &'m Arc<T>)>;

/// The series of `map` grouped by name (sorted), each with its label set (sorted).
fn families<'m, T>(
    map: &'m HashMap<Key, Arc<T>>,
    global_labels: &indexmap::IndexMap<String, String>,
) -> Vec<(&'m str, Series<'m, T>)> {
    let mut families: HashMap<&str, Series<'m, T>> = HashMap::new();
    for (key, value) in map {
        let labels = LabelSet::from_key_and_global(key, global_labels);
        families
            .entry(key.name())
            .or_default()
            .push((labels, value));
    }
    let mut families: Vec<_> = families.into_iter().collect();
    families.sort_unstable_by_key(|(name, _)| *name);
    for (_, series) in &mut families {
        series.sort_by_cached_key(|(labels, _)| labels.to_strings().collect::<Vec<_>>());
    }
    families
}

fn header(out: &mut String, name: &str, kind: &str, descriptions: &HashMap<String, SharedString>) {
    if let Some(description) = descriptions.get(name) {
        write_help_line(out, name, None, None, description);
    }
    write_type_line(out, name, None, None, kind);
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram() -> BucketedHistogram {
        BucketedHistogram::new(Arc::from(&[1.0, 2.0, 5.0][..]))
    }

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_is_not_below_them() {
        let h = histogram();
        for value in [0.5, 1.0, 1.5, 2.0, 4.9, 5.0, 5.1, 1e9, f64::NAN, -3.0] {
            h.record(value);
        }
        h.record_many(1.2, 3);
        let s = h.snapshot();
        // <= 1: 0.5, 1.0, -3.0; <= 2: 1.5, 2.0, 1.2 x3; <= 5: 4.9, 5.0; +Inf: 5.1, 1e9, NaN.
        assert_eq!(s.counts, vec![3, 5, 2, 3]);
        assert!(
            s.sum.is_nan(),
            "a NaN value makes the sum NaN, as Prometheus would"
        );
    }

    #[test]
    fn every_threads_counts_are_added_up() {
        let h = Arc::new(histogram());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        h.record(f64::from((i + t) % 4)); // 0, 1, 2, 3
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let s = h.snapshot();
        assert_eq!(s.counts, vec![20_000, 10_000, 10_000, 0]);
        assert_eq!(s.sum, 60_000.0);
    }

    #[test]
    fn a_counter_adds_every_threads_increments_and_absolute_raises_it() {
        let c = Arc::new(LocalCounter::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| c.increment(2)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(c.value(), 80_000);
        c.absolute(50); // below: no change
        assert_eq!(c.value(), 80_000);
        c.absolute(100_000);
        c.increment(1);
        assert_eq!(c.value(), 100_001);
    }

    #[test]
    fn renders_counters_and_cumulative_buckets_with_global_labels_first() {
        let mut globals = indexmap::IndexMap::new();
        globals.insert("service".to_owned(), "shop".to_owned());
        let local = Local::new(
            vec![(
                Matcher::Suffix("_seconds".into()),
                Arc::from(&[0.1, 1.0][..]),
            )],
            globals,
        );
        assert!(local.histogram(&Key::from_name("eda_batch_size")).is_none());
        let key = Key::from_parts("x_seconds", vec![metrics::Label::new("group", "g\"1")]);
        local.describe("x_seconds", "How long.".into());
        let h = local.histogram(&key).unwrap();
        h.record(0.0625);
        h.record(0.5);
        h.record(3.0);
        // The same key gives the same histogram.
        local.histogram(&key).unwrap().record(0.0625);
        let label = |v: &'static str| vec![metrics::Label::new("topic", v)];
        local
            .counter(&Key::from_parts("y_total", label("b")))
            .increment(2);
        local
            .counter(&Key::from_parts("y_total", label("a")))
            .increment(1);
        local
            .counter(&Key::from_parts("y_total", label("b")))
            .increment(3);
        let mut text = String::new();
        local.render(&mut text);
        assert_eq!(
            text,
            "# TYPE y_total counter\n\
             y_total{service=\"shop\",topic=\"a\"} 1\n\
             y_total{service=\"shop\",topic=\"b\"} 5\n\n\
             # HELP x_seconds How long.\n\
             # TYPE x_seconds histogram\n\
             x_seconds_bucket{service=\"shop\",group=\"g\\\"1\",le=\"0.1\"} 2\n\
             x_seconds_bucket{service=\"shop\",group=\"g\\\"1\",le=\"1\"} 3\n\
             x_seconds_bucket{service=\"shop\",group=\"g\\\"1\",le=\"+Inf\"} 4\n\
             x_seconds_sum{service=\"shop\",group=\"g\\\"1\"} 3.625\n\
             x_seconds_count{service=\"shop\",group=\"g\\\"1\"} 4\n\n"
        );
    }
}
