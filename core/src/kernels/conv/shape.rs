//! What a "same" convolution is: its operands on raw values, and the layer configurations that
//! are one.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;

/// The operands of a "same" convolution (stride 1, odd k x k kernel, zero padding (k-1)/2) on
/// raw values.
#[derive(Clone, Copy)]
pub(crate) struct SameConv<'a> {
    /// The input, `[batch, c, h, w]` contiguous.
    pub x: &'a [f32],
    /// `[batch, c, h, w]`.
    pub dims: [usize; 4],
    /// `[out_channels, c, k, k]` contiguous.
    pub weight: &'a [f32],
    pub out_channels: usize,
    pub k: usize,
    /// Added per output channel.
    pub bias: Option<&'a [f32]>,
    /// Added to the output, `[batch, out_channels, h, w]`.
    pub residual: Option<&'a [f32]>,
}

/// The kernel size when `conv` is a "same" convolution (odd square kernel, stride 1, no dilation,
/// one group, padding (k-1)/2 on every side), the case the kernels here handle.
pub(crate) fn same_conv_kernel(conv: &Conv2d) -> Option<usize> {
    let [k, kw] = conv.kernel_size;
    let pad = (k - 1) / 2;
    let same = k == kw
        && k % 2 == 1
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && match conv.padding {
            PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r] == [pad; 4],
            PaddingConfig2d::Same => true,
            PaddingConfig2d::Valid => k == 1,
        };
    same.then_some(k)
}
