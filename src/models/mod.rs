//! The models kiln trains: the TensorFlow tutorial's DCGAN, the VAEs of PyTorch's example, and
//! the classifier whose features score generated images.

pub mod classifier;
pub mod dcgan;
pub mod inception;
pub mod vae;
