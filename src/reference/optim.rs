//! torch.optim.Adam and torch.optim.SGD, one step at a time, in f64 (the single-tensor
//! `foreach=False` code paths of PyTorch 2.x, without amsgrad, maximize or capturable).

#[derive(Clone, Copy, Debug)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// exp_avg, exp_avg_sq and the step count, zero before the first step.
#[derive(Clone, Debug, Default)]
pub struct AdamState {
    pub m: Vec<f64>,
    pub v: Vec<f64>,
    pub t: u32,
}

impl AdamState {
    pub fn new(n: usize) -> AdamState {
        AdamState { m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }
}

/// Returns the updated parameters; advances `state`.
pub fn adam_step(h: &Adam, param: &[f64], grad: &[f64], state: &mut AdamState) -> Vec<f64> {
    state.t += 1;
    let bias1 = 1.0 - h.beta1.powi(state.t as i32);
    let bias2 = 1.0 - h.beta2.powi(state.t as i32);
    let mut out = param.to_vec();
    for i in 0..param.len() {
        let g = grad[i] + h.weight_decay * param[i];
        state.m[i] = h.beta1 * state.m[i] + (1.0 - h.beta1) * g;
        state.v[i] = h.beta2 * state.v[i] + (1.0 - h.beta2) * g * g;
        let denom = state.v[i].sqrt() / bias2.sqrt() + h.eps;
        out[i] -= h.lr / bias1 * state.m[i] / denom;
    }
    out
}

#[derive(Clone, Copy, Debug)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// torch's momentum_buffer: `None` until the first step sets it to the first gradient.
pub type SgdState = Option<Vec<f64>>;

/// Returns the updated parameters; advances `buffer`.
pub fn sgd_step(h: &Sgd, param: &[f64], grad: &[f64], buffer: &mut SgdState) -> Vec<f64> {
    let mut d: Vec<f64> = (0..param.len()).map(|i| grad[i] + h.weight_decay * param[i]).collect();
    if h.momentum != 0.0 {
        let buf = match buffer.take() {
            None => d.clone(),
            Some(b) => (0..d.len()).map(|i| h.momentum * b[i] + (1.0 - h.dampening) * d[i]).collect(),
        };
        for i in 0..d.len() {
            d[i] = if h.nesterov { d[i] + h.momentum * buf[i] } else { buf[i] };
        }
        *buffer = Some(buf);
    }
    (0..param.len()).map(|i| param[i] - h.lr * d[i]).collect()
}
