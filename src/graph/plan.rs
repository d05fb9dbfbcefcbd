//! The memory plan: intermediates whose lifetimes do not overlap share one pooled buffer.
//!
//! Lifetimes are closed intervals of step indices `[defined, last used]`. Closed, because a
//! dispatch may not read and write the same wgpu buffer: a tensor last read by step s and one
//! first written by step s are both live at s and never share.

/// One intermediate to place: live over `start..=end`, needing `bytes`.
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    pub start: usize,
    pub end: usize,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The pooled buffer each lifetime was given.
    pub slot_of: Vec<usize>,
    /// Each pooled buffer's size: the largest tensor it holds.
    pub slot_bytes: Vec<u64>,
}

impl Plan {
    pub fn planned_bytes(&self) -> u64 {
        self.slot_bytes.iter().sum()
    }
}

/// The one-buffer-per-tensor total the plan is measured against.
pub fn naive_bytes(lifetimes: &[Lifetime]) -> u64 {
    lifetimes.iter().map(|l| l.bytes).sum()
}

/// Greedy interval colouring in order of start: a tensor takes the free buffer that fits it
/// most tightly, else grows the largest free one (growing wastes less than a new buffer),
/// else opens a new one.
pub fn plan(lifetimes: &[Lifetime]) -> Plan {
    let mut order: Vec<usize> = (0..lifetimes.len()).collect();
    order.sort_by_key(|&i| (lifetimes[i].start, std::cmp::Reverse(lifetimes[i].bytes)));
    let mut plan = Plan { slot_of: vec![usize::MAX; lifetimes.len()], slot_bytes: Vec::new() };
    // The step after which each slot is free again.
    let mut busy_until: Vec<usize> = Vec::new();
    for i in order {
        let l = lifetimes[i];
        let free = (0..plan.slot_bytes.len()).filter(|&s| busy_until[s] < l.start);
        let fitting = free.clone().filter(|&s| plan.slot_bytes[s] >= l.bytes).min_by_key(|&s| plan.slot_bytes[s]);
        let slot = match fitting.or_else(|| free.max_by_key(|&s| plan.slot_bytes[s])) {
            Some(s) => s,
            None => {
                plan.slot_bytes.push(0);
                busy_until.push(0);
                plan.slot_bytes.len() - 1
            }
        };
        plan.slot_bytes[slot] = plan.slot_bytes[slot].max(l.bytes);
        busy_until[slot] = l.end;
        plan.slot_of[i] = slot;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(a: &Lifetime, b: &Lifetime) -> bool {
        a.start <= b.end && b.start <= a.end
    }

    #[test]
    fn the_plan_never_gives_one_buffer_to_two_live_tensors() {
        let mut state = 12345u64;
        let mut next = |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        for _ in 0..500 {
            let n = 1 + next(60) as usize;
            let lifetimes: Vec<Lifetime> = (0..n)
                .map(|_| {
                    let start = next(100) as usize;
                    Lifetime { start, end: start + next(20) as usize, bytes: 4 * (1 + next(1000)) }
                })
                .collect();
            let plan = plan(&lifetimes);
            for i in 0..n {
                let slot = plan.slot_of[i];
                assert!(plan.slot_bytes[slot] >= lifetimes[i].bytes, "buffer too small for tensor {i}");
                for j in i + 1..n {
                    if plan.slot_of[j] == slot {
                        assert!(!overlap(&lifetimes[i], &lifetimes[j]), "tensors {i} and {j} share a buffer while both live");
                    }
                }
            }
            assert!(plan.planned_bytes() <= naive_bytes(&lifetimes));
        }
    }

    #[test]
    fn a_chain_of_tensors_needs_two_buffers() {
        // x0 -> x1 -> x2 -> ...: each is live from its definition to the next step.
        let lifetimes: Vec<Lifetime> = (0..10).map(|i| Lifetime { start: i, end: i + 1, bytes: 100 }).collect();
        let plan = plan(&lifetimes);
        assert_eq!(plan.slot_bytes.len(), 2);
        assert_eq!(plan.planned_bytes(), 200);
        assert_eq!(naive_bytes(&lifetimes), 1000);
    }

    #[test]
    fn a_tensor_read_by_the_step_that_writes_another_does_not_share_with_it() {
        let lifetimes = [Lifetime { start: 0, end: 3, bytes: 8 }, Lifetime { start: 3, end: 5, bytes: 8 }];
        let plan = plan(&lifetimes);
        assert_ne!(plan.slot_of[0], plan.slot_of[1]);
    }
}
