//! Output storage for the kernels: zero-filled in parallel, or left unwritten for a kernel that
//! writes every value; and the zero-padded copies the convolutions read.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// `len` zeros, written by all threads when there are many: a zero fill on the calling thread
/// (what `vec![0.0; len]` does with reused memory) leaves the other threads idle meanwhile; such
/// fills were the largest part of the time one thread waited for the other in a training step.
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    const PARALLEL_FROM: usize = 1 << 16;
    if len < PARALLEL_FROM {
        return vec![0.0; len];
    }
    let mut values = unwritten(len);
    values
        .par_chunks_mut(PARALLEL_FROM)
        .for_each(|chunk| chunk.fill(MaybeUninit::new(0.0)));
    // SAFETY: every chunk was filled.
    unsafe { written(values) }
}

/// Storage for `len` values that a kernel writes completely: no zero fill first, which would
/// be one more pass over memory as large as a convolution's input or output (the zero fills
/// were 1-2 % of a teacher training step).
pub(crate) fn unwritten(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut values = Vec::with_capacity(len);
    // SAFETY: `MaybeUninit` values need no initialisation.
    unsafe { values.set_len(len) };
    values
}

/// The values of [`unwritten`] storage once all of them have been written.
///
/// # Safety
/// Every value of `values` has been written.
pub(crate) unsafe fn written(values: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut values = std::mem::ManuallyDrop::new(values);
    let (ptr, len, cap) = (values.as_mut_ptr(), values.len(), values.capacity());
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; same allocation, length and capacity;
    // the caller vouches that every value is initialised.
    unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, cap) }
}

/// Copies the planes of `image` (`h x w` each) into the interiors of the zero-bordered planes of
/// `padded` (`(h + 2 pad) x (w + 2 pad)` each, borders already zero).
pub(crate) fn fill_padded(padded: &mut [f32], image: &[f32], [h, w]: [usize; 2], pad: usize) {
    let wp = w + 2 * pad;
    let plane = (h + 2 * pad) * wp;
    padded
        .par_chunks_mut(plane)
        .zip(image.par_chunks(h * w))
        .for_each(|(dst, src)| {
            for y in 0..h {
                dst[(y + pad) * wp + pad..][..w].copy_from_slice(&src[y * w..][..w]);
            }
        });
}

/// [`fill_padded`] into storage that has not been written: every value of the `c` planes is
/// written, the border with zeros.
pub(crate) fn write_padded(
    padded: &mut [MaybeUninit<f32>],
    image: &[f32],
    [h, w]: [usize; 2],
    pad: usize,
) {
    let wp = w + 2 * pad;
    let plane = (h + 2 * pad) * wp;
    let zero = MaybeUninit::new(0.0f32);
    padded
        .par_chunks_mut(plane)
        .zip(image.par_chunks(h * w))
        .for_each(|(dst, src)| {
            dst[..pad * wp].fill(zero);
            dst[(h + pad) * wp..].fill(zero);
            for (y, row) in dst[pad * wp..(h + pad) * wp]
                .chunks_exact_mut(wp)
                .enumerate()
            {
                row[..pad].fill(zero);
                row[pad..pad + w].write_copy_of_slice(&src[y * w..][..w]);
                row[pad + w..].fill(zero);
            }
        });
}
