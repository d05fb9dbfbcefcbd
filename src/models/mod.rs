//! The models kiln trains: the TensorFlow tutorial's DCGAN and the VAEs of PyTorch's example.

pub mod dcgan;
pub mod vae;
