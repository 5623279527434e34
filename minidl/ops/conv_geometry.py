"""The sizes of one 2-D convolution and the checks of its inputs, shared by both algorithms
(``im2col.py`` and ``winograd.py``) and by the dispatcher ``conv.py``."""
from . import checks, workspace

OP = "conv2d"


class Geometry:
    """Sizes of one convolution, derived once from the input and weight shapes."""

    def __init__(self, x_shape, w_shape, stride, padding, groups, dilation=(1, 1), padding_end=None):
        """``padding`` is before the first row and column; ``padding_end`` after the last (the
        same when None; one more for padding="same" with an odd total, as in PyTorch)."""
        self.batch, self.channels, self.height, self.width = x_shape
        self.out_channels, _, self.kernel_h, self.kernel_w = w_shape
        self.stride_h, self.stride_w = stride
        self.pad_h, self.pad_w = padding
        self.dilation_h, self.dilation_w = dilation
        end_h, end_w = padding if padding_end is None else padding_end
        self.groups = groups
        span_h = self.dilation_h * (self.kernel_h - 1) + 1  # rows one window spans
        span_w = self.dilation_w * (self.kernel_w - 1) + 1
        self.out_h = (self.height + self.pad_h + end_h - span_h) // self.stride_h + 1
        self.out_w = (self.width + self.pad_w + end_w - span_w) // self.stride_w + 1
        self.pixels = self.out_h * self.out_w  # output pixels per image
        self.rows = self.channels * self.kernel_h * self.kernel_w  # im2col rows, all groups
        self.rows_per_group = self.rows // groups
        self.channels_per_group = self.channels // groups
        self.out_per_group = self.out_channels // groups

    def kernel_args(self):
        """The window arguments every im2col-style kernel takes, in their C order."""
        return (self.kernel_h, self.kernel_w, self.stride_h, self.stride_w,
                self.pad_h, self.pad_w, self.dilation_h, self.dilation_w, self.out_h, self.out_w)

    def chunk_size(self, bytes_per_image, xp=None):
        """Images per chunk: a chunk's buffers of ``bytes_per_image`` each fit in the workspace
        limit of ``xp``'s device (``workspace.workspace_bytes``; the CPU's when None), or it is
        1 image, and the chunks are of near-equal size (32 images in chunks of 30 then 2 would
        waste the second chunk's products)."""
        limit = workspace.workspace_bytes() if xp is None else workspace.workspace_bytes(xp)
        largest = max(1, min(self.batch, limit // max(1, bytes_per_image)))
        n_chunks = max(1, -(-self.batch // largest))
        return max(1, -(-self.batch // n_chunks))

    def chunks(self, bytes_per_image, xp=None):
        """(first image, images) of each chunk of the batch, in order."""
        size = self.chunk_size(bytes_per_image, xp)
        return [(start, min(size, self.batch - start)) for start in range(0, self.batch, size)]


def check_inputs(x, weight, bias, stride, padding, groups, dilation=(1, 1), padding_end=None):
    """The arrays of one conv2d call against each other and against its options."""
    checks.float_array(OP, "input", x, ndim=4, layout="N, C, H, W; or unbatched C, H, W")
    checks.float_array(OP, "weight", weight, ndim=4,
                       layout="out_channels, in_channels // groups, kH, kW")
    if bias is not None:
        checks.float_array(OP, "bias", bias)
    checks.same_dtype(OP, input=x, weight=weight, bias=bias)
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    channels = x.shape[1]
    if out_channels % groups:
        raise ValueError(f"{OP}: groups={groups} must divide the out channels, but weight has "
                         f"{out_channels} (weight shape {tuple(weight.shape)})")
    if channels % groups:
        raise ValueError(f"{OP}: groups={groups} must divide the input channels, but input has "
                         f"{channels} (input shape {tuple(x.shape)})")
    if channels != channels_per_group * groups:
        raise ValueError(
            f"{OP}: input has {channels} channels (shape {tuple(x.shape)}) but weight "
            f"{tuple(weight.shape)} with groups={groups} expects weight.shape[1] * groups = "
            f"{channels_per_group * groups}")
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"{OP}: bias must have shape ({out_channels},), one value per output "
                         f"channel, got shape {tuple(bias.shape)}")
    end = padding if padding_end is None else padding_end
    padded = (x.shape[2] + padding[0] + end[0], x.shape[3] + padding[1] + end[1])
    span = ((kernel_h - 1) * dilation[0] + 1, (kernel_w - 1) * dilation[1] + 1)
    if span[0] > padded[0] or span[1] > padded[1]:
        dilated = "" if tuple(dilation) == (1, 1) else f" with dilation {tuple(dilation)}"
        raise ValueError(f"{OP}: kernel {kernel_h}x{kernel_w}{dilated} is larger than the padded "
                         f"input {padded[0]}x{padded[1]} (input {x.shape[2]}x{x.shape[3]}, "
                         f"padding {padding}); expected a kernel no larger than the padded input")
