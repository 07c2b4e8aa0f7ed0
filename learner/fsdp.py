"""FSDP2 for the learner: the process group and the sharding that docs/distributed.md describes.

Under ``torchrun`` (one process per GPU), :func:`init_distributed` joins the process group (NCCL on
CUDA, gloo on CPU) and :func:`shard_model` applies FSDP2's ``fully_shard`` to every decoder layer and
then to the root module, optionally with a ``MixedPrecisionPolicy`` (bf16 compute over fp32 master
weights, fp32 gradient reduction). The :class:`~winnow.learner.step.Trainer` built over the sharded
model then takes the data-parallel path (global normaliser, world-size loss factor, equal micro-batch
counts, all-reduced metrics; see its docstring).

Checked by ``benchmarks/gpu/fsdp_check.py`` (``scripts/gpu_check.sh`` step 4): the loss, gradients and
updated weights of one step equal the single-process step's (gloo on CPU with 1 and 2 ranks; NCCL on one
GPU). Not run yet on several GPUs.
"""

from __future__ import annotations

import os

import torch


def init_distributed(backend: str = "auto") -> tuple[int, int, torch.device]:
    """Join the torchrun process group; returns ``(rank, world_size, device)``.

    ``backend="auto"``: ``nccl`` when CUDA is available (device ``cuda:LOCAL_RANK``), else ``gloo`` (cpu).
    """
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError("init_distributed: RANK/WORLD_SIZE are not set; start the process with torchrun")
    cuda = torch.cuda.is_available() and backend in ("auto", "nccl")
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if cuda:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        import logging

        logging.getLogger(__name__).info(
            "joining the process group: rank %s of %s, %s, store %s:%s, restart %s, agent store %s", os.environ["RANK"],
            os.environ["WORLD_SIZE"], backend, os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"),
            os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), os.environ.get("TORCHELASTIC_USE_AGENT_STORE"))
        dist.init_process_group(backend, store=_restart_store(), rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]), device_id=dev if dev.type == "cuda" else None)
    return dist.get_rank(), dist.get_world_size(), dev


def _restart_store():
    """torchrun's store, under a prefix of its own for each restart of the workers.

    torchrun keeps one store across worker restarts (``--max-restarts``), so the keys through which the previous
    round's ranks published their gloo/NCCL addresses are still there; a restarted rank that reads a peer's key
    before the peer rewrote it connects to a dead address ("connectFullMesh failed ... Connection refused").
    Measured here with gloo on every restart where the ranks started ~0.5 s apart."""
    import datetime

    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent, timeout=datetime.timedelta(minutes=30),
                          multi_tenant=not agent)
    return dist.PrefixStore(f"winnow/restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def shard_model(
    model: torch.nn.Module,
    *,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = torch.float32,
    reshard_after_forward: bool = True,
) -> torch.nn.Module:
    """``fully_shard`` each decoder layer, then the root (which holds the embeddings, the final norm and
    the LM head, tied or not). ``param_dtype`` (e.g. bf16) casts the gathered parameters for compute;
    None keeps them as stored. Returns ``model`` (sharded in place: its parameters become DTensors).

    The Trainer then needs ``autocast_dtype=None`` (the policy casts) and a reference model sharded the
    same way and passed in (``ref_model="copy"`` would deep-copy a sharded module).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dev = next(model.parameters()).device
    mesh = init_device_mesh(dev.type, (dist.get_world_size(),))
    kw: dict = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if param_dtype is not None:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"shard_model: {type(model).__name__} has no get_decoder().layers to shard")
    for layer in layers:
        fully_shard(layer, **kw)
    # the root: embeddings, final norm, the LM head (tied or not); kept gathered from its forward to its backward
    # (FSDP2's own heuristic for a root), which the Trainer's chunked head relies on (model.sharded_response_hidden)
    fully_shard(model, **{**kw, "reshard_after_forward": False})
    return model
