//! Engine call metrics: latency and errors per trait method, for both implementations.

use std::future::Future;
use std::time::Instant;

use crate::error::EngineError;

/// Histogram of engine call latency in seconds, labelled `method` (a trait method name).
pub const CALL_SECONDS: &str = "haseq_engine_call_seconds";
/// Counter of failed engine calls, labelled `method`. An `Invalid` payload status is an
/// answer, not a failure, and is not counted here.
pub const ERRORS_TOTAL: &str = "haseq_engine_errors_total";

/// The `method` label values: every method of [`crate::ExecutionEngine`] that records a call
/// (an implementation that keeps a trait default, like the HTTP client's
/// `import_and_set_head`, records its inner calls instead and leaves that series at 0).
pub(crate) const METHODS: [&str; 7] = [
    "build_payload",
    "get_payload",
    "new_payload",
    "set_head",
    "import_and_set_head",
    "head",
    "block_hash_at",
];

/// Registers the help lines of this crate's metrics with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_histogram!(
        CALL_SECONDS,
        metrics::Unit::Seconds,
        "Latency of execution engine calls, by trait method"
    );
    metrics::describe_counter!(
        ERRORS_TOTAL,
        "Execution engine calls that failed (transport, auth, rejection, fault), by trait method"
    );
}

/// Creates this crate's series for every method at 0 (no call yet), so that an alert on their
/// increase sees the first error of a node that never had one.
pub fn zero_metrics() {
    for method in METHODS {
        metrics::counter!(ERRORS_TOTAL, "method" => method).increment(0);
        let _ = metrics::histogram!(CALL_SECONDS, "method" => method);
    }
}

/// Runs `fut`, recording its latency and, if it fails, an error, under `method`.
pub(crate) async fn instrument<T>(
    method: &'static str,
    fut: impl Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    debug_assert!(METHODS.contains(&method), "{method} missing from METHODS");
    let start = Instant::now();
    let res = fut.await;
    metrics::histogram!(CALL_SECONDS, "method" => method).record(start.elapsed().as_secs_f64());
    if let Err(e) = &res {
        metrics::counter!(ERRORS_TOTAL, "method" => method).increment(1);
        tracing::debug!(method, error = %e, "engine call failed");
    }
    res
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
        SharedString, Unit,
    };

    use super::*;

    /// Counts what is recorded, by metric name and labels.
    #[derive(Default)]
    struct Tally(Mutex<HashMap<String, f64>>);

    struct Slot(Arc<Tally>, String);

    impl CounterFn for Slot {
        fn increment(&self, value: u64) {
            *self
                .0
                .0
                .lock()
                .expect("lock")
                .entry(self.1.clone())
                .or_default() += value as f64;
        }
        fn absolute(&self, value: u64) {
            self.0
                .0
                .lock()
                .expect("lock")
                .insert(self.1.clone(), value as f64);
        }
    }

    impl HistogramFn for Slot {
        fn record(&self, _value: f64) {
            *self
                .0
                .0
                .lock()
                .expect("lock")
                .entry(self.1.clone())
                .or_default() += 1.0;
        }
    }

    struct TallyRecorder(Arc<Tally>);

    fn name(key: &Key) -> String {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    impl Recorder for TallyRecorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(Slot(self.0.clone(), name(key))))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(Slot(self.0.clone(), name(key))))
        }
    }

    #[test]
    fn calls_and_errors_are_recorded_per_method() {
        let tally = Arc::new(Tally::default());
        let recorder = TallyRecorder(tally.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        metrics::with_local_recorder(&recorder, || {
            describe_metrics();
            rt.block_on(async {
                let ok = instrument("head", async { Ok::<_, EngineError>(()) }).await;
                assert!(ok.is_ok());
                let err = instrument("head", async {
                    Err::<(), _>(EngineError::Fault { method: "head" })
                })
                .await;
                assert!(err.is_err());
            });
        });
        let t = tally.0.lock().expect("lock");
        assert_eq!(
            t.get("haseq_engine_call_seconds{method=head}"),
            Some(&2.0),
            "{t:?}"
        );
        assert_eq!(
            t.get("haseq_engine_errors_total{method=head}"),
            Some(&1.0),
            "{t:?}"
        );
    }
}
