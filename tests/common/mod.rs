//! Helpers shared by the integration tests.

use kiln::gpu::Gpu;

/// Runs `body` while another thread polls the device without pause, as a training loop or a
/// second test sharing the device does. Such a poll can take a finished map's callback and run
/// it a moment after our own wait returned.
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
