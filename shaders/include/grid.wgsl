// The flat invocation index of a 1-D grid of WG-wide workgroups: launchers fold grids wider
// than 65,535 workgroups into y (`workgroups_1d`), and this undoes the fold. WG is the
// including file's workgroup size.
fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}
