//! Chrome trace JSON: one complete ("X") event per dispatch, µs on the GPU's clock, which
//! Perfetto and chrome://tracing open.

use super::{Profile, Site, TraceEvent};
use serde_json::{json, Value};

/// Lays the profiled steps on one timeline. Steps keep their GPU timestamps; should a step's
/// clock start before the previous step ended (timestamps from different submits are not
/// promised to share an origin), it is shifted to follow it, so start times never go back.
pub(super) fn events(sites: &[Site], times: &[Vec<(f64, f64)>], wall_ms: &[f64]) -> Vec<TraceEvent> {
    let mut events = Vec::new();
    let mut floor = 0.0f64;
    if times.is_empty() {
        for (step, ms) in wall_ms.iter().enumerate() {
            events.push(TraceEvent { step, kernel: None, layer: String::new(), start_us: floor, dur_us: ms * 1e3 });
            floor += ms * 1e3;
        }
        return events;
    }
    for (step, ticks) in times.iter().enumerate() {
        let first = ticks.iter().map(|t| t.0).fold(f64::INFINITY, f64::min) / 1e3;
        let shift = (floor - first).max(0.0);
        for (site, &(begin, end)) in sites.iter().zip(ticks) {
            let start_us = begin / 1e3 + shift;
            let dur_us = (end - begin).max(0.0) / 1e3;
            floor = floor.max(start_us + dur_us);
            events.push(TraceEvent {
                step,
                kernel: Some(site.kernel.to_string()),
                layer: site.label.clone(),
                start_us,
                dur_us,
            });
        }
    }
    events.sort_by(|a, b| a.start_us.total_cmp(&b.start_us));
    events
}

impl Profile {
    /// `{"traceEvents": [...]}`: dispatches on one track named for the adapter; under
    /// `WallClock`, whole steps instead, since there are no per-dispatch times.
    pub fn trace_json(&self) -> Value {
        let mut events = vec![
            json!({"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": format!("kiln: {}", self.adapter)}}),
            json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": self.timing.describe()}}),
        ];
        events.extend(self.events.iter().map(|e| {
            let name = match (&e.kernel, e.layer.is_empty()) {
                (None, _) => format!("step {}", e.step),
                (Some(k), true) => k.clone(),
                (Some(k), false) => format!("{k} [{}]", e.layer),
            };
            json!({
                "ph": "X", "pid": 1, "tid": 1, "name": name,
                "cat": if e.kernel.is_some() { "dispatch" } else { "step" },
                "ts": e.start_us, "dur": e.dur_us,
                "args": {"step": e.step, "kernel": e.kernel, "layer": e.layer},
            })
        }));
        json!({"traceEvents": events, "displayTimeUnit": "ms"})
    }
}
