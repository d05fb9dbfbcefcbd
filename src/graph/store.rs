//! Persistent tensors by name: parameters (in per-group arenas, with a gradient arena of the
//! same layout, so one optimizer dispatch updates a whole group), running statistics and
//! inputs. Programs that share a store share these buffers: a GAN's training step and its
//! sampler are two programs over one store.

use crate::gpu::{Buffer, Dispatch, Gpu};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};

/// A group of parameters laid out in one buffer, and their gradients in another.
pub struct ParamGroup {
    pub name: String,
    pub params: Buffer,
    pub grads: Buffer,
    /// (parameter name, first element, length), in order.
    pub layout: Vec<(String, usize, usize)>,
}

pub struct Stored {
    pub shape: Vec<usize>,
    pub buffer: Buffer,
}

#[derive(Default)]
pub struct Store {
    pub groups: Vec<ParamGroup>,
    params: BTreeMap<String, (Stored, usize)>,
    grads: BTreeMap<String, Buffer>,
    states: BTreeMap<String, Stored>,
    inputs: BTreeMap<String, Stored>,
    /// The parameters whose gradients each compiled dispatch writes or reads, the dispatch
    /// known by its uniform buffer (its own): see [`gradient_uses`](Self::gradient_uses).
    gradient_users: HashMap<wgpu::Buffer, Vec<String>>,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// Registers parameters `(name, shape, initial values)` as one group: one buffer holds
    /// them all, each at an offset aligned for binding, and a second holds their gradients.
    pub fn add_group(&mut self, gpu: &Gpu, group: &str, params: Vec<(String, Vec<usize>, Vec<f32>)>) -> Result<()> {
        let align = (gpu.limits.min_storage_buffer_offset_alignment as usize / 4).max(1);
        let mut layout = Vec::new();
        let mut total = 0;
        for (name, shape, data) in &params {
            let n: usize = shape.iter().product();
            if data.len() != n {
                return Err(Error::Shape(format!("parameter {name:?}: shape {shape:?} but {} initial values", data.len())));
            }
            if self.params.contains_key(name) {
                return Err(Error::Invalid(format!("parameter {name:?} registered twice")));
            }
            layout.push((name.clone(), total, n));
            total += n.next_multiple_of(align);
        }
        // A multiple of 4, so that the optimizers update the arena with vec4 loads.
        let total = total.next_multiple_of(4);
        let mut host = vec![0f32; total];
        for ((_, start, n), (_, _, data)) in layout.iter().zip(&params) {
            host[*start..start + n].copy_from_slice(data);
        }
        let param_buf = gpu.upload(&format!("{group}.params"), &host)?;
        let grad_buf = gpu.zeros(&format!("{group}.grads"), total)?;
        let index = self.groups.len();
        for ((name, start, n), (_, shape, _)) in layout.iter().zip(&params) {
            let buffer = param_buf.view(name, *start, *n)?;
            self.params.insert(name.clone(), (Stored { shape: shape.clone(), buffer }, index));
            self.grads.insert(name.clone(), grad_buf.view(&format!("{name}.grad"), *start, *n)?);
        }
        self.groups.push(ParamGroup { name: group.to_string(), params: param_buf, grads: grad_buf, layout });
        Ok(())
    }

    pub fn param(&self, name: &str) -> Option<&Stored> {
        self.params.get(name).map(|(s, _)| s)
    }

    pub fn grad(&self, name: &str) -> Option<&Buffer> {
        self.grads.get(name)
    }

    pub fn group_of(&self, param: &str) -> Option<&ParamGroup> {
        self.params.get(param).map(|(_, g)| &self.groups[*g])
    }

    pub fn param_names(&self) -> impl Iterator<Item = &String> {
        self.params.keys()
    }

    /// Notes that `dispatch` writes or reads the gradient of `param` (Program::compile).
    pub fn note_gradient_use(&mut self, dispatch: &Dispatch, param: &str) {
        let users = self.gradient_users.entry(dispatch.params.clone()).or_default();
        if !users.iter().any(|p| p == param) {
            users.push(param.to_string());
        }
    }

    /// The parameters whose gradients `dispatch` writes or reads: a data-parallel step
    /// (train::dist) all-reduces a bucket of a gradient arena once the last dispatch touching
    /// it has run, while the GPU goes on with the rest of the backward.
    pub fn gradient_uses(&self, dispatch: &Dispatch) -> &[String] {
        self.gradient_users.get(&dispatch.params).map_or(&[], Vec::as_slice)
    }

    /// Registers a state tensor (running statistics) with its initial values.
    pub fn add_state(&mut self, gpu: &Gpu, name: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::Shape(format!("state {name:?}: shape {shape:?} but {} initial values", data.len())));
        }
        if self.states.contains_key(name) {
            return Err(Error::Invalid(format!("state {name:?} registered twice")));
        }
        let buffer = gpu.upload(name, data)?;
        self.states.insert(name.to_string(), Stored { shape: shape.to_vec(), buffer });
        Ok(())
    }

    /// A state tensor by name, created zero-filled on first use.
    pub fn state(&mut self, gpu: &Gpu, name: &str, shape: &[usize]) -> Result<&Stored> {
        Self::get_or_create(&mut self.states, gpu, "state", name, shape)
    }

    pub fn states(&self) -> impl Iterator<Item = (&String, &Stored)> {
        self.states.iter()
    }

    /// An input tensor by name, created on first use and shared by every program.
    pub fn input(&mut self, gpu: &Gpu, name: &str, shape: &[usize]) -> Result<&Stored> {
        Self::get_or_create(&mut self.inputs, gpu, "input", name, shape)
    }

    pub fn input_buffer(&self, name: &str) -> Option<&Stored> {
        self.inputs.get(name)
    }

    fn get_or_create<'a>(map: &'a mut BTreeMap<String, Stored>, gpu: &Gpu, kind: &str, name: &str, shape: &[usize]) -> Result<&'a Stored> {
        if !map.contains_key(name) {
            let buffer = gpu.zeros(name, shape.iter().product())?;
            map.insert(name.to_string(), Stored { shape: shape.to_vec(), buffer });
        }
        let stored = &map[name];
        if stored.shape != shape {
            return Err(Error::Shape(format!("{kind} {name:?} is {:?} in the store but {shape:?} in the graph", stored.shape)));
        }
        Ok(stored)
    }
}
