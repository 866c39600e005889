"""mmdeform.visualization: plots of training logs, dataset samples and attention sampling."""
from .browse import browse_dataset, draw_gt_boxes
from .curves import load_scalars, plot_curves
from .sampling import (
    QuerySampling,
    SamplingRecord,
    SamplingRun,
    capture_sampling,
    detection_sampling,
    encoder_pixel_sampling,
    to_image_pixels,
)
from .sampling_plot import plot_sampling

__all__ = ['QuerySampling', 'SamplingRecord', 'SamplingRun', 'browse_dataset',
           'capture_sampling', 'detection_sampling', 'draw_gt_boxes', 'encoder_pixel_sampling',
           'load_scalars', 'plot_curves', 'plot_sampling', 'to_image_pixels']
