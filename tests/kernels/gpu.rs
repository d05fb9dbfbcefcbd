use crate::support::*;
use kiln::kernels::elementwise;
use kiln::Error;

#[test]
fn a_buffer_over_the_binding_limit_is_refused_by_name() {
    let gpu = gpu();
    let too_many = (gpu.max_binding_bytes() / 4 + 1) as usize;
    match gpu.zeros("huge.activations", too_many) {
        Err(Error::Limit(msg)) => assert!(msg.contains("huge.activations") && msg.contains(&too_many.to_string()), "{msg}"),
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("a buffer over the binding limit was created"),
    }
}

#[test]
fn views_at_aligned_offsets_bind_and_read_back_their_own_elements() {
    let gpu = gpu();
    let align = gpu.limits.min_storage_buffer_offset_alignment as usize / 4;
    let data: Vec<f32> = (0..3 * align).map(|i| i as f32).collect();
    let arena = upload("arena", &data);
    let second = arena.view("second", align, align).unwrap();
    assert_eq!(read(&second), data[align..2 * align].to_vec());

    // A kernel writing through a view touches only the view's elements.
    let out = upload("out", &data);
    let third = out.view("third", 2 * align, 5).unwrap();
    gpu.run(&[elementwise::scale(gpu, 2.0, &second, &third, 5).unwrap()]).unwrap();
    let mut want = data.clone();
    for i in 0..5 {
        want[2 * align + i] = 2.0 * data[align + i];
    }
    assert_eq!(read(&out), want);
}

#[test]
fn reading_and_writing_views_of_one_buffer_in_one_dispatch_is_a_named_error() {
    // wgpu tracks usage per buffer, not per range: the executor must never plan this.
    let gpu = gpu();
    let align = gpu.limits.min_storage_buffer_offset_alignment as usize / 4;
    let arena = zeros("arena", 2 * align);
    let (a, b) = (arena.view("a", 0, align).unwrap(), arena.view("b", align, align).unwrap());
    let err = gpu.run(&[elementwise::scale(gpu, 2.0, &a, &b, align).unwrap()]).err().expect("must fail").to_string();
    assert!(err.contains("elementwise.scale") && err.contains("conflicting usages"), "{err}");
}

#[test]
fn a_view_past_the_end_is_an_error() {
    let arena = zeros("arena", 10);
    let err = arena.view("tail", 8, 3).err().expect("must fail").to_string();
    assert!(err.contains("tail") && err.contains("arena"), "{err}");
}

#[test]
fn a_misaligned_view_is_a_device_error_not_a_crash() {
    let gpu = gpu();
    let arena = zeros("arena", 100);
    let odd = arena.view("odd", 1, 10).unwrap();
    let y = zeros("y", 10);
    let result = elementwise::scale(gpu, 1.0, &odd, &y, 10);
    let err = result.err().expect("binding at a 4-byte offset must be refused").to_string();
    assert!(err.contains("elementwise.scale"), "{err}");
}
