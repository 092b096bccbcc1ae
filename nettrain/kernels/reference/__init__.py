"""The NumPy reference kernels: the definitions that every other kernel set is tested against.

:data:`KERNELS` maps each kernel name to the function the reference kernel set runs:
the pooling, batch-norm and ReLU kernels split over the worker threads (their
``threaded_`` versions), the others as they are. The plain functions, importable
from here, stay the definitions.
"""

from __future__ import annotations

from . import activations, batchnorm, conv, optim, pooling, recurrent
from .activations import relu_backward, relu_forward
from .batchnorm import batchnorm_affine, batchnorm_backward, batchnorm_stats
from .conv import (channels_major, col2im, im2col, im2row, images_to_rows, pad_rows, padded_to_rows, row2im,
                   rows_to_images, rows_to_images_add, samples_major)
from .pooling import avg_pool_backward, avg_pool_forward, max_pool_backward, max_pool_forward, window_counts
from .recurrent import (gru_cell_backward, gru_cell_forward, lstm_cell_backward, lstm_cell_forward,
                        rnn_cell_backward, rnn_cell_forward, sigmoid_)

KERNELS = {
    "im2col": conv.im2col,
    "col2im": conv.col2im,
    "channels_major": conv.channels_major,
    "samples_major": conv.samples_major,
    "im2row": conv.im2row,
    "row2im": conv.row2im,
    "rows_to_images": conv.rows_to_images,
    "images_to_rows": conv.images_to_rows,
    "pad_rows": conv.pad_rows,
    "padded_to_rows": conv.padded_to_rows,
    "rows_to_images_add": conv.rows_to_images_add,
    "max_pool_forward": pooling.threaded_max_pool_forward,
    "max_pool_backward": pooling.threaded_max_pool_backward,
    "avg_pool_forward": pooling.threaded_avg_pool_forward,
    "avg_pool_backward": pooling.threaded_avg_pool_backward,
    "batchnorm_stats": batchnorm.threaded_batchnorm_stats,
    "batchnorm_affine": batchnorm.threaded_batchnorm_affine,
    "batchnorm_backward": batchnorm.threaded_batchnorm_backward,
    "batchnorm_relu_affine": batchnorm.batchnorm_relu_affine,
    "batchnorm_relu_backward": batchnorm.batchnorm_relu_backward,
    "relu_forward": activations.threaded_relu_forward,
    "relu_backward": activations.threaded_relu_backward,
    "residual_add": activations.threaded_residual_add,
    "rnn_cell_forward": recurrent.rnn_cell_forward,
    "rnn_cell_backward": recurrent.rnn_cell_backward,
    "lstm_cell_forward": recurrent.lstm_cell_forward,
    "lstm_cell_backward": recurrent.lstm_cell_backward,
    "lstm_cell_infer": recurrent.lstm_cell_infer,
    "lstm_scan_backward": recurrent.lstm_scan_backward,
    "gru_cell_forward": recurrent.gru_cell_forward,
    "gru_cell_backward": recurrent.gru_cell_backward,
    "adam_update": optim.adam_update,
}

__all__ = ["KERNELS", "avg_pool_backward", "avg_pool_forward", "batchnorm_affine", "batchnorm_backward",
           "batchnorm_stats", "channels_major", "col2im", "gru_cell_backward", "gru_cell_forward", "im2col",
           "im2row", "images_to_rows", "lstm_cell_backward", "lstm_cell_forward", "max_pool_backward",
           "max_pool_forward", "pad_rows", "padded_to_rows", "relu_backward", "relu_forward", "rnn_cell_backward",
           "rnn_cell_forward", "row2im", "rows_to_images", "rows_to_images_add", "samples_major", "sigmoid_",
           "window_counts"]
