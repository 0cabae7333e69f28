"""``python -m layergrad`` (also ``torchrun -m layergrad``): the command line."""
import sys

from layergrad.run.distributed import assign_device_group

# Under torchrun with LAYERGRAD_DEVICES_PER_RANK set: narrow CUDA_VISIBLE_DEVICES to this
# rank's own GPUs, before anything imports torch (see layergrad.run.distributed).
assign_device_group()

from .cli import main  # noqa: E402

sys.exit(main())
