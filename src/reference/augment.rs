//! DiffAugment on `[N, C, H, W]` images given its draws (`[N, 7]` uniforms, the columns of
//! [`crate::kernels::augment::PARAMS_PER_SAMPLE`]), step by step as DiffAugment_pytorch.py
//! writes it. Transposes: color's linear part is symmetric (its own transpose), shift's is
//! [`shift_backward`].

/// Columns of a sample's row of draws.
const BRIGHTNESS: usize = 0;
const SATURATION: usize = 1;
const CONTRAST: usize = 2;
const TRANSLATE_X: usize = 3;
const TRANSLATE_Y: usize = 4;
const CUTOUT_X: usize = 5;
const CUTOUT_Y: usize = 6;
const DRAWS: usize = 7;

/// An integer uniform on 0..m from u in [0, 1), computed in f32 as the shader does: this is
/// the definition of the discrete draw, not an approximation of it.
pub fn pick(u: f64, m: usize) -> usize {
    ((u as f32 * m as f32).floor().max(0.0) as usize).min(m - 1)
}

/// rand_brightness, rand_saturation, rand_contrast in turn; without `brightness` only the
/// linear part (the backward, applied to dy).
pub fn color(x: &[f64], [n, c, h, w]: [usize; 4], draws: &[f64], brightness: bool) -> Vec<f64> {
    let hw = h * w;
    let mut y = x.to_vec();
    for s in 0..n {
        let r = &draws[s * DRAWS..(s + 1) * DRAWS];
        let img = &mut y[s * c * hw..(s + 1) * c * hw];
        if brightness {
            img.iter_mut().for_each(|v| *v += r[BRIGHTNESS] - 0.5);
        }
        for q in 0..hw {
            let mean = (0..c).map(|ch| img[ch * hw + q]).sum::<f64>() / c as f64;
            for ch in 0..c {
                img[ch * hw + q] = (img[ch * hw + q] - mean) * (2.0 * r[SATURATION]) + mean;
            }
        }
        let mean = img.iter().sum::<f64>() / img.len() as f64;
        img.iter_mut().for_each(|v| *v = (*v - mean) * (r[CONTRAST] + 0.5) + mean);
    }
    y
}

/// Sample `s`'s translation (rows, columns) and cutout rectangle (first row, first column,
/// height, width), drawn as rand_translation (ratio 1/8) and rand_cutout (ratio 1/2) draw.
fn geometry(r: &[f64], h: usize, w: usize, translation: bool, cutout: bool) -> ([i64; 2], Option<[i64; 4]>) {
    let shift = |size: usize| (size as f64 * 0.125 + 0.5) as usize;
    let t = if translation {
        let (sh, sw) = (shift(h), shift(w));
        [pick(r[TRANSLATE_X], 2 * sh + 1) as i64 - sh as i64, pick(r[TRANSLATE_Y], 2 * sw + 1) as i64 - sw as i64]
    } else {
        [0, 0]
    };
    let cut = cutout.then(|| {
        let size = |s: usize| (s as f64 * 0.5 + 0.5) as usize;
        let (ch, cw) = (size(h), size(w));
        let top = pick(r[CUTOUT_X], h + 1 - ch % 2) as i64 - (ch / 2) as i64;
        let left = pick(r[CUTOUT_Y], w + 1 - cw % 2) as i64 - (cw / 2) as i64;
        [top, left, ch as i64, cw as i64]
    });
    (t, cut)
}

/// rand_translation then rand_cutout: y[n, c, i, j] = x[n, c, i + tx, j + ty] (zero outside),
/// zero inside the cutout square.
pub fn shift(x: &[f64], shape: [usize; 4], draws: &[f64], translation: bool, cutout: bool) -> Vec<f64> {
    shift_map(x, shape, draws, translation, cutout, false)
}

/// The transpose of [`shift`]: dx[n, c, a, b] = dy[n, c, a − tx, b − ty] where that output
/// pixel exists and is outside the cutout square.
pub fn shift_backward(dy: &[f64], shape: [usize; 4], draws: &[f64], translation: bool, cutout: bool) -> Vec<f64> {
    shift_map(dy, shape, draws, translation, cutout, true)
}

/// Scatters (transpose) or gathers (forward) along the pairs (output pixel, input pixel).
fn shift_map(src: &[f64], [n, c, h, w]: [usize; 4], draws: &[f64], translation: bool, cutout: bool, transpose: bool) -> Vec<f64> {
    let mut out = vec![0.0; src.len()];
    for s in 0..n {
        let (t, cut) = geometry(&draws[s * DRAWS..(s + 1) * DRAWS], h, w, translation, cutout);
        for i in 0..h as i64 {
            for j in 0..w as i64 {
                let (si, sj) = (i + t[0], j + t[1]);
                let outside = si < 0 || sj < 0 || si >= h as i64 || sj >= w as i64;
                let covered = cut.is_some_and(|[top, left, ch, cw]| i >= top && i < top + ch && j >= left && j < left + cw);
                if outside || covered {
                    continue;
                }
                for ch in 0..c {
                    let plane = (s * c + ch) * h * w;
                    let (o, x) = (plane + i as usize * w + j as usize, plane + si as usize * w + sj as usize);
                    if transpose {
                        out[x] += src[o];
                    } else {
                        out[o] = src[x];
                    }
                }
            }
        }
    }
    out
}
