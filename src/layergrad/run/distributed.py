"""Running as one rank of many: torchrun (or any launcher that sets RANK/WORLD_SIZE/LOCAL_RANK).

layergrad needs no tensors exchanged between ranks: batches are planned once for all
examples and every rank computes its own whole batches (:func:`batching.shard_batches`)
and writes its own parts. The process group is only used to order three moments:

1. rank 0 creates (or checks) the run's manifest; the others wait for it, then check it too;
   an error on rank 0 (a configuration mismatch) is sent to every rank, so all stop with it;
2. ranks compute with no communication at all;
3. a final barrier, after which rank 0 alone reads the whole store (the summary, the
   reference-format export of the drop-in mode).

Backend: NCCL when the rank computes on CUDA, gloo on CPU. The collective timeout is long
(:data:`DEFAULT_TIMEOUT_S`, or ``LAYERGRAD_DIST_TIMEOUT_S``) because ranks legitimately
wait at the final barrier for the slowest one, e.g. after a resume left one rank little to do.
A rank that dies is noticed by torchrun, which stops the others; rerunning the same
command resumes every shard (committed parts are skipped by example id).

Devices: rank ``r`` computes on ``cuda:<LOCAL_RANK>``. For a model larger than one GPU
(``--device-map auto``), set ``LAYERGRAD_DEVICES_PER_RANK=K`` and launch ``torchrun -m
layergrad``: before torch starts, each rank's ``CUDA_VISIBLE_DEVICES`` is narrowed to its
own ``K`` devices (:func:`assign_device_group`), so accelerate spreads the model over them.

The group is created by the first run of a process and kept until the process exits, so one
process can run many jobs. This module imports torch only inside functions:
:func:`assign_device_group` must run before torch initialises CUDA.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

from layergrad.errors import LayergradError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedError",
    "World",
    "assign_device_group",
    "backend_for",
    "barrier",
    "detect",
    "device_group",
    "local_device",
    "ensure_process_group",
    "open_store",
    "shard_of",
    "shutdown",
]

DEFAULT_TIMEOUT_S = 24 * 3600
ENV_TIMEOUT = "LAYERGRAD_DIST_TIMEOUT_S"
ENV_DEVICES_PER_RANK = "LAYERGRAD_DEVICES_PER_RANK"
ENV_DEVICE_GROUP = "LAYERGRAD_DEVICE_GROUP"  # set by assign_device_group: the rank's own CUDA_VISIBLE_DEVICES

_OWNED = False  # whether this module created the default process group (then it destroys it at exit)


class DistributedError(LayergradError, ValueError):
    """The launcher's environment or the options do not make a valid multi-process run."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (from the launcher's environment variables)."""

    rank: int  # 0 .. size-1, over all nodes
    size: int  # WORLD_SIZE
    local_rank: int  # 0 .. local_size-1, on this node
    local_size: int  # LOCAL_WORLD_SIZE (ranks on this node)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def writer(self) -> str:
        """The store's writer name of this rank (part tags ``r<rank>-<seq>``)."""
        return f"r{self.rank}"


def _int(env, name: str, default: int | None = None) -> int:
    v = env.get(name)
    if v is None:
        if default is None:
            raise DistributedError(f"{name} is not set, but RANK/WORLD_SIZE are: launch with torchrun, or set all of RANK, WORLD_SIZE, LOCAL_RANK")
        return default
    try:
        return int(v)
    except ValueError:
        raise DistributedError(f"environment variable {name}={v!r} is not an integer") from None


def detect(environ=None) -> World | None:
    """The launcher's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, or ``None`` for a plain process."""
    env = os.environ if environ is None else environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    rank, size = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    local_rank = _int(env, "LOCAL_RANK", default=rank if size == 1 else None)
    local_size = _int(env, "LOCAL_WORLD_SIZE", default=size)
    if not (size >= 1 and 0 <= rank < size and 0 <= local_rank < local_size):
        raise DistributedError(f"inconsistent launcher environment: RANK={rank} WORLD_SIZE={size} LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_size}")
    return World(rank, size, local_rank, local_size)


def shard_of(world: World | None, shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """The shard this process computes: the rank under torchrun, else ``--shard i/N``."""
    if world is None:
        return shard
    if shard is not None:
        raise DistributedError(
            f"--shard {shard[0]}/{shard[1]} was given under torchrun (RANK={world.rank}, WORLD_SIZE={world.size}); "
            "torchrun already gives each rank its shard: drop --shard (or run without torchrun)"
        )
    return (world.rank, world.size)


# ---------------------------------------------------------------------------------- devices


def device_group(local_rank: int, per_rank: int, local_size: int, visible: list[str] | None) -> list[str]:
    """The ``per_rank`` devices of local rank ``local_rank``: consecutive, in ``visible`` order.

    ``visible`` is the node's ``CUDA_VISIBLE_DEVICES`` as a list (``None`` when unset: then
    device indices ``0, 1, ...`` are meant).
    """
    if per_rank < 1:
        raise DistributedError(f"{ENV_DEVICES_PER_RANK} must be at least 1, got {per_rank}")
    need = per_rank * local_size
    if visible is not None and len(visible) < need:
        raise DistributedError(
            f"{ENV_DEVICES_PER_RANK}={per_rank} with {local_size} ranks on this node needs {need} GPUs, "
            f"but CUDA_VISIBLE_DEVICES lists {len(visible)} ({','.join(visible)}): lower --nproc_per_node or {ENV_DEVICES_PER_RANK}"
        )
    pool = visible if visible is not None else [str(i) for i in range(need)]
    return pool[local_rank * per_rank : (local_rank + 1) * per_rank]


def assign_device_group(environ=None) -> str | None:
    """Narrow ``CUDA_VISIBLE_DEVICES`` to this rank's own devices, when asked for.

    Acts only under a launcher (``LOCAL_RANK`` set) with ``LAYERGRAD_DEVICES_PER_RANK``
    set; must run before torch initialises CUDA (``python -m layergrad`` calls it first).
    Returns the group (e.g. ``"2,3"``) or ``None``.
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_DEVICES_PER_RANK) is None or env.get("LOCAL_RANK") is None:
        return None
    if env.get(ENV_DEVICE_GROUP) is not None:  # already narrowed (e.g. a re-exec): keep it
        return env[ENV_DEVICE_GROUP]
    per_rank = _int(env, ENV_DEVICES_PER_RANK)
    local_rank = _int(env, "LOCAL_RANK")
    local_size = _int(env, "LOCAL_WORLD_SIZE", default=1)
    vis = env.get("CUDA_VISIBLE_DEVICES")
    visible = [d.strip() for d in vis.split(",") if d.strip()] if vis is not None else None
    group = ",".join(device_group(local_rank, per_rank, local_size, visible))
    env["CUDA_VISIBLE_DEVICES"] = group
    env[ENV_DEVICE_GROUP] = group
    return group


def local_device(world: World, device: str, device_map=None, environ=None) -> str:
    """The device rank ``world`` computes on, given the resolved ``--device``.

    ``cuda`` becomes ``cuda:<LOCAL_RANK>``, or ``cuda:0`` (the first of the rank's own
    devices) when :func:`assign_device_group` narrowed the visible devices. An explicit
    ``cuda:i`` is kept as given (then every rank of the node uses that one GPU).
    A ``device_map`` with several ranks on a node needs a device group per rank: without
    one every rank would spread its model over the same GPUs.
    """
    env = os.environ if environ is None else environ
    grouped = env.get(ENV_DEVICE_GROUP) is not None
    if not device.startswith("cuda"):
        return device
    if device_map is not None and world.local_size > 1 and not grouped:
        raise DistributedError(
            f"--device-map {device_map} with {world.local_size} ranks on this node would put every rank's model on the "
            f"same GPUs; give each rank its own: {ENV_DEVICES_PER_RANK}=K torchrun --nproc_per_node N -m layergrad run ... "
            f"(K GPUs per rank, N x K GPUs on the node)"
        )
    if device != "cuda":
        return device
    return "cuda:0" if grouped else f"cuda:{world.local_rank}"


def backend_for(device: str) -> str:
    """NCCL for ranks on CUDA, gloo on CPU."""
    return "nccl" if device.startswith("cuda") else "gloo"


# ---------------------------------------------------------------------------------- the group


def ensure_process_group(world: World | None, device: str) -> bool:
    """Create the default process group for ``world`` unless one exists; ``True`` if created now.

    Created once per process and kept: a process may run many jobs (``layergrad experiment``),
    and a group destroyed and created again under the same torchrun hangs. It is destroyed
    when the process exits (:func:`shutdown`). A group the caller made (e.g. a training script
    that calls ``engine.run``) is used as it is.
    """
    if world is None:
        return False
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    timeout = datetime.timedelta(seconds=float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_S)))
    dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size, timeout=timeout)
    global _OWNED
    if not _OWNED:
        atexit.register(shutdown)
    _OWNED = True
    return True


def shutdown() -> None:
    """Destroy the process group if :func:`ensure_process_group` made it (no-op otherwise)."""
    global _OWNED
    if not _OWNED:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _OWNED = False


def barrier() -> None:
    """Wait for every rank (no-op in a plain process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _broadcast_from_main(value):
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def open_store(store, manifest: dict, world: World | None, *, wait: bool = False, log=None, add_data: bool = False) -> None:
    """Rank 0 creates or checks the manifest; then the others check it.

    Rank 0's error (e.g. :class:`store.ConfigMismatch`) is raised on every rank, with
    rank 0's message, so no rank is left waiting.
    """
    import torch.distributed as dist

    if world is None or not dist.is_initialized():
        store.open(manifest, wait=wait, log=log, add_data=add_data)
        return
    error = None
    if world.is_main:
        try:
            store.open(manifest, wait=wait, log=log, add_data=add_data)
        except Exception as e:  # sent to the other ranks, then raised here too
            error = e
    sent = _broadcast_from_main(None if error is None else (type(error), str(error)))
    if error is not None:
        raise error
    if sent is not None:
        kind, message = sent
        try:
            err = kind(message)
        except Exception:
            err = RuntimeError(message)
        raise err
    if not world.is_main:
        store.open(manifest, wait=wait, log=log)
