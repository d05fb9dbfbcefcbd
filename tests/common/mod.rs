//! Helpers shared by the integration tests.

use kiln::gpu::Gpu;

/// Runs `body` while another thread polls the device without pause, as a training loop or a
/// second test sharing the device does. Such a poll can take a finished map's callback and run
/// it a moment after our own wait returned.
#[allow(dead_code)]
pub fn with_another_thread_polling(gpu: &Gpu, body: impl FnOnce()) {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Stops the poller however `body` ends, a failed assertion included.
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = gpu.device.poll(wgpu::PollType::Poll);
            }
        });
        let _stop = Stop(&stop);
        body();
    });
}

/// Central differences, step `h`, of the scalar `output` of `graph`'s CPU reference run with
/// respect to every element of leaf `slot` of `leaves`: the oracle for a gradient the graph's
/// own backward computed.
#[allow(dead_code)]
pub fn reference_fd(graph: &kiln::graph::Graph, leaves: &[(kiln::graph::Tensor, Vec<f64>)], slot: usize, output: kiln::graph::Tensor, h: f64) -> Vec<f64> {
    let at = |i: usize, delta: f64| {
        let mut leaves = leaves.to_vec();
        leaves[slot].1[i] += delta;
        graph.evaluate_reference(&leaves).unwrap()[output.index()].as_ref().unwrap().1[0]
    };
    (0..leaves[slot].1.len()).map(|i| (at(i, h) - at(i, -h)) / (2.0 * h)).collect()
}

/// What one training step leaves: the logged values, then each parameter's gradient, by name
/// (the data shuffled with seed 3, the first batch of epoch 0).
#[allow(dead_code)]
pub fn one_step(gpu: &Gpu, trainer: &dyn kiln::train::run::Trainer, data: &kiln::train::data::GpuData) -> Vec<(String, Vec<f32>)> {
    data.shuffle(gpu, 3, 0).unwrap();
    trainer.prepare(gpu, data, 0, 0).unwrap();
    let index = gpu.submit("training step", &trainer.step_dispatches(), None).unwrap();
    gpu.wait(Some(index), "training step").unwrap();
    let logged = trainer.logged().into_iter().map(|(name, b)| (name.to_string(), gpu.read(&b).unwrap()));
    let store = trainer.store();
    let grads = store.param_names().map(|name| (format!("{name} gradient"), gpu.read(store.grad(name).unwrap()).unwrap()));
    logged.chain(grads).collect()
}
