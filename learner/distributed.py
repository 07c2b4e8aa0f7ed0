"""The learner under ``torchrun``: one process per GPU (or per CPU share, gloo), FSDP2, rank 0 the controller.

    torchrun --nproc-per-node N [--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT] -m winnow learner run ...

Every rank loads the initial model with fp32 master weights and shards it (:func:`winnow.learner.fsdp.shard_model`:
each decoder layer, then the root; bf16 compute by FSDP2's ``MixedPrecisionPolicy``, fp32 gradient reduction).
**Rank 0** runs the ordinary :class:`~winnow.learner.service.LearnerService` (Kafka, the request book, dedupe,
release, commit, the ledger, metrics, evaluation) over a :class:`ShardedTrainer`, which turns each trainer call
into a command that every rank executes together:

    STEP        the batch's ScoredGroup protobuf bytes (never pickle): every rank decodes the same groups, takes
                its share (:func:`split_by_tokens`: whole groups, balanced by tokens) and runs
                ``Trainer.train_step`` on it (the global normaliser, the equal micro-batch count and the metric
                reduction are the Trainer's data-parallel hooks); the per-group outcomes are gathered to rank 0.
    PUBLISH     ``Trainer.save_weights``: the full state dict is gathered (a collective), rank 0 writes the file.
    CHECKPOINT  ``torch.distributed.checkpoint`` (DCP) of the sharded model and optimizer state into the
                checkpoint's temporary folder, each rank its shards; rank 0 then adds ``state.json`` (the book)
                and renames the folder (:func:`winnow.learner.checkpoint.finish_checkpoint`).
    RESTORE     load a checkpoint, DCP (resharded to this world size) or a single-process ``trainer.pt``.
    GATHER      the full state dict for rank 0's evaluation replica.
    STOP        leave the loop.

Commands travel on a separate gloo group with a long timeout (rank 0 may wait on Kafka for a long time); the
tensors of the training collectives use the default group (NCCL on GPUs). A rank that dies takes the others
down (their next collective fails); torchrun's ``--max-restarts`` (or ``winnow up --resume``) restarts them
all, and the run resumes from the last checkpoint: the ledger keeps each group once (docs/distributed.md).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import struct
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from winnow.learner.faults import maybe_die

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from winnow.learner.algo import AlgoConfig
    from winnow.learner.batch import GroupData
    from winnow.learner.checkpoint import LearnerState
    from winnow.learner.step import StepResult, Trainer

log = logging.getLogger(__name__)

STEP, PUBLISH, CHECKPOINT, RESTORE, GATHER, STOP = range(1, 7)
_OUTCOMES = ("trained", "all_correct", "all_wrong")


def split_by_tokens(tokens: list[int], world: int) -> list[list[int]]:
    """Group indices per rank: whole groups, the largest first to the rank holding the fewest tokens (ties: the
    fewest groups, then the lowest rank); each rank's indices in ascending order. Deterministic, so every rank
    computes the same split. With ``len(tokens) >= world`` every rank gets at least one group.

    >>> split_by_tokens([5, 1, 4, 2], 2)
    [[0, 1], [2, 3]]
    """
    load = [(0, 0, r) for r in range(world)]
    out: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(tokens)), key=lambda i: (-tokens[i], i)):
        t, k, r = min(load)
        out[r].append(i)
        load[r] = (t + tokens[i], k + 1, r)
    return [sorted(x) for x in out]


def group_tokens(group: Any) -> int:
    """Prompt tokens once per sample plus the response tokens: what a group costs a rank's forward."""
    return sum(len(group.prompt_token_ids) + len(s.response_token_ids) for s in group.samples)


def encode_groups(groups: list[Any]) -> bytes:
    """GroupData -> length-prefixed ScoredGroup protobuf bytes (the wire's own message, no pickle): every field the
    trainer reads, the verifier's ``score`` included (a rank without it would train on the status rewards)."""
    from winnow.v1 import messages_pb2

    parts = []
    for g in groups:
        msg = messages_pb2.ScoredGroup(
            prompt_id=g.prompt_id, request_id=g.request_id, prompt_token_ids=g.prompt_token_ids,
            samples=[messages_pb2.Sample(response_token_ids=s.response_token_ids,
                                         behaviour_logprobs=s.behaviour_logprobs, policy_versions=s.policy_versions,
                                         status=s.status, finish_reason=s.finish_reason,
                                         **({} if s.score is None else {"score": s.score})) for s in g.samples])
        data = msg.SerializeToString()
        parts.append(struct.pack("<Q", len(data)) + data)
    return b"".join(parts)


def decode_groups(data: bytes) -> list[Any]:
    """The inverse of :func:`encode_groups` (groups already checked by rank 0)."""
    from winnow.learner.batch import GroupData, SampleData
    from winnow.v1 import messages_pb2

    groups, i = [], 0
    while i < len(data):
        (size,) = struct.unpack_from("<Q", data, i)
        msg = messages_pb2.ScoredGroup.FromString(data[i + 8 : i + 8 + size])
        i += 8 + size
        groups.append(GroupData(
            prompt_id=msg.prompt_id, request_id=msg.request_id, prompt_token_ids=list(msg.prompt_token_ids),
            samples=[SampleData(response_token_ids=list(s.response_token_ids),
                                behaviour_logprobs=list(s.behaviour_logprobs), policy_versions=list(s.policy_versions),
                                status=int(s.status), finish_reason=s.finish_reason or "stop",
                                score=s.score if s.HasField("score") else None) for s in msg.samples]))
    return groups


class Channel:
    """Rank 0 -> every rank: ``(command, payload bytes)`` by two broadcasts on a gloo group."""

    def __init__(self, timeout_s: float = 7 * 24 * 3600) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))

    def send(self, command: int, payload: bytes = b"") -> None:
        header = torch.tensor([command, len(payload)], dtype=torch.int64)
        self.dist.broadcast(header, src=0, group=self.group)
        if payload:
            self.dist.broadcast(torch.frombuffer(bytearray(payload), dtype=torch.uint8), src=0, group=self.group)

    def recv(self) -> tuple[int, bytes]:
        header = torch.zeros(2, dtype=torch.int64)
        self.dist.broadcast(header, src=0, group=self.group)
        command, size = int(header[0]), int(header[1])
        if not size:
            return command, b""
        buf = torch.empty(size, dtype=torch.uint8)
        self.dist.broadcast(buf, src=0, group=self.group)
        return command, buf.numpy().tobytes()


def train_share(trainer: Any, groups: list[Any]) -> Any:
    """This rank's share of one optimizer step over ``groups`` (the whole batch, identical on every rank): the
    StepResult with every group's outcome, in the batch's order, gathered from the rank that trained it."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    if len(groups) < world:
        raise ValueError(f"a batch of {len(groups)} groups cannot feed {world} ranks: batch_groups must be >= the "
                         "number of learner processes")
    mine = split_by_tokens([group_tokens(g) for g in groups], world)[rank]
    maybe_die("step", trainer.version)
    result = trainer.train_step([groups[i] for i in mine])
    codes = torch.full((len(groups),), -1, dtype=torch.int64)
    for i, outcome in zip(mine, result.group_outcomes, strict=True):
        codes[i] = _OUTCOMES.index(outcome)
    codes = codes.to(trainer.device)
    dist.all_reduce(codes, op=dist.ReduceOp.MAX)
    return replace(result, group_outcomes=tuple(_OUTCOMES[int(c)] for c in codes.cpu()), judged=None)


# -- checkpoints: DCP of the sharded state, or a single-process trainer.pt ------------------------------------------

def save_sharded(trainer: Any, folder: Path) -> None:
    """Every rank writes its shards of the model and optimizer state into ``folder`` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    fresh = not trainer.optimizer.state
    model_sd, optim_sd = get_state_dict(trainer.model, trainer.optimizer)
    if fresh:  # get_state_dict made the state by an optimizer step at lr 0: that step must not count
        _uncount_init_step(trainer.optimizer, optim_sd)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder))
    maybe_die("checkpoint", trainer.version)


def _uncount_init_step(optimizer: Any, optim_sd: dict[str, Any]) -> None:
    """torch.distributed.checkpoint's ``get_state_dict`` / ``set_state_dict`` create a missing optimizer state by one
    ``step()`` with zero gradients at lr 0: the weights and AdamW's moments stay, but its step count becomes 1, so the
    first real update would get step 2's bias correction (about 0.74x the update of one process, which never runs
    that step). Set the counts back to 0 in the live optimizer and in ``optim_sd`` (fresh state = step 0)."""
    import torch

    def zero(st: dict[str, Any]) -> None:
        step = st.get("step")
        if isinstance(step, torch.Tensor):
            step.zero_()
        elif step is not None:
            st["step"] = 0

    for st in optimizer.state.values():
        zero(st)
    for st in (optim_sd.get("state") or {}).values():
        if isinstance(st, dict):
            zero(st)


def load_into(trainer: Any, checkpoint_dir: Path) -> None:
    """Load a checkpoint folder's trainer state into ``trainer`` (sharded or not; every rank calls it when
    sharded): ``trainer.dcp/`` resharded to this world size, or ``trainer.pt`` of a single-process run. The
    version comes from ``state.json`` (the caller sets it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    dcp_dir = checkpoint_dir / "trainer.dcp"
    if dcp_dir.is_dir():
        import torch.distributed.checkpoint as dcp

        model_sd, optim_sd = get_state_dict(trainer.model, trainer.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(dcp_dir))
        set_state_dict(trainer.model, trainer.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        return
    sd = torch.load(checkpoint_dir / "trainer.pt", map_location="cpu", weights_only=True)
    set_state_dict(trainer.model, trainer.optimizer, model_state_dict=sd["model"],
                   optim_state_dict=_optimizer_by_name(trainer, sd["optimizer"]),
                   options=StateDictOptions(full_state_dict=True))
    if not sd["optimizer"].get("state"):  # saved before any update: the state set_state_dict made is not a step
        _uncount_init_step(trainer.optimizer, {})


def _optimizer_by_name(trainer: Any, optim_sd: dict[str, Any]) -> dict[str, Any]:
    """A ``torch.optim`` state dict (parameters by index, as a single process saves it) keyed by parameter names,
    the form ``set_state_dict`` takes: the Trainer numbers parameters group by group (decayed, then not)."""
    names = {p: n for n, p in trainer.model.named_parameters()}
    order = [names[p] for group in trainer.optimizer.param_groups for p in group["params"]]
    state = {order[int(i)]: v for i, v in optim_sd["state"].items()}
    groups = [{**g, "params": [order[int(i)] for i in g["params"]]} for g in optim_sd["param_groups"]]
    return {"state": state, "param_groups": groups}


# -- rank 0's trainer and the other ranks' loop -------------------------------------------------------------------

class ShardedTrainer:
    """Rank 0's view of the sharded trainer: the service calls it like a :class:`~winnow.learner.step.Trainer`;
    each call is broadcast as a command and executed by every rank (see the module docstring). Attributes the
    service only reads (``model``, ``algo``, ``version``, ``compute_dtype``...) are the local Trainer's."""

    def __init__(self, trainer: Any, channel: Channel) -> None:
        self.trainer, self.channel = trainer, channel
        self._replica: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.trainer, name)

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.model

    @property
    def algo(self) -> AlgoConfig:
        return self.trainer.algo

    @property
    def version(self) -> int:
        return self.trainer.version

    def train_step(self, groups: list[GroupData]) -> StepResult:
        from winnow.learner.objective import judge_samples

        self.channel.send(STEP, encode_groups(groups))
        result = train_share(self.trainer, groups)
        return replace(result, judged=judge_samples(groups, self.trainer.algo))

    def save_weights(self, path: str | Path, dtype: torch.dtype | None = None) -> str:
        self.channel.send(PUBLISH, json.dumps({"path": str(path), "dtype": str(dtype) if dtype else None}).encode())
        return self.trainer.save_weights(path, dtype=dtype)

    def write_checkpoint(self, directory: str | Path, state: LearnerState, keep: int) -> Path:
        from winnow.learner import checkpoint

        tmp = checkpoint.begin_checkpoint(directory, state.version)
        self.channel.send(CHECKPOINT, str(tmp).encode())
        save_sharded(self.trainer, tmp / "trainer.dcp")
        torch.distributed.barrier()
        return checkpoint.finish_checkpoint(directory, tmp, state, keep)

    def read_checkpoint(self, path: Path) -> LearnerState:
        from winnow.learner.checkpoint import LearnerState

        self.channel.send(RESTORE, str(path).encode())
        load_into(self.trainer, Path(path))
        state = LearnerState.from_json((Path(path) / "state.json").read_text())
        self.trainer.version = int(state.version)
        return state

    def eval_view(self) -> _Replica:
        """An unsharded replica of the current weights on rank 0 (for the held-out evaluation): the full state dict
        is gathered from every rank into it. Needs the whole model in rank 0's memory once."""
        self.channel.send(GATHER)
        full = self.trainer.full_state_dict()
        if self._replica is None:
            self._replica = _Replica(self.trainer, full)
        else:
            self._replica.model.load_state_dict(full, strict=False)
        self._replica.version = self.trainer.version
        return self._replica

    def stop(self) -> None:
        self.channel.send(STOP)


class _Replica:
    """What the Evaluator reads of a trainer: an unsharded model (compute dtype), its dtype and version."""

    def __init__(self, trainer: Any, full: dict[str, torch.Tensor]) -> None:
        import copy

        from transformers import AutoModelForCausalLM

        config = copy.deepcopy(trainer.model.config)
        self.compute_dtype = trainer.compute_dtype
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        if hasattr(trainer.model, "peft_config"):  # LoRA: the same adapters over the base, so the names match
            import peft

            model = peft.get_peft_model(model, trainer.model.peft_config[trainer.model.active_adapter])
        model.to_empty(device=trainer.device)
        model.load_state_dict(full, strict=False)
        with torch.no_grad():  # non-persistent buffers (rotary inv_freq) are not in the state dict: to_empty left
            for name, buf in trainer.model.named_buffers():  # them uninitialised memory
                model.get_buffer(name).copy_(buf)
        model.tie_weights()
        self.model = model.to(self.compute_dtype).eval().requires_grad_(False)
        self.version = trainer.version


def worker_loop(trainer: Any, channel: Channel) -> int:
    """Ranks 1..N-1: execute rank 0's commands until STOP; returns the number of steps trained."""
    from winnow.learner.checkpoint import LearnerState

    steps = 0
    while True:
        command, payload = channel.recv()
        if command == STEP:
            train_share(trainer, decode_groups(payload))
            steps += 1
        elif command == PUBLISH:
            args = json.loads(payload)
            dtype = getattr(torch, args["dtype"].removeprefix("torch.")) if args["dtype"] else None
            trainer.save_weights(args["path"], dtype=dtype)
            maybe_die("publish", trainer.version)
        elif command == CHECKPOINT:
            save_sharded(trainer, Path(payload.decode()) / "trainer.dcp")
            torch.distributed.barrier()
        elif command == RESTORE:
            path = Path(payload.decode())
            load_into(trainer, path)
            trainer.version = int(LearnerState.from_json((path / "state.json").read_text()).version)
        elif command == GATHER:
            trainer.full_state_dict()
        elif command == STOP:
            return steps
        else:
            raise RuntimeError(f"unknown learner command {command}")


def build_sharded_trainer(cfg: Any) -> tuple[Trainer, PreTrainedTokenizerBase]:
    """On every rank: join the process group, load the initial model with fp32 master weights, shard it with bf16
    compute (``numerics.precision``), a separately loaded sharded reference when ``kl_coef > 0``; the Trainer."""
    from winnow.learner.fsdp import init_distributed, shard_model
    from winnow.learner.model import load_causal_lm, low_precision_warning
    from winnow.learner.step import Trainer
    from winnow.models import resolve_model
    from winnow.numerics import resolve_attention, resolve_precision, torch_dtype

    rank, world, device = init_distributed()
    torch.manual_seed(cfg.seed)
    compute = torch_dtype(resolve_precision(cfg.numerics.precision, device.type))
    path = resolve_model(cfg.model) if rank == 0 else None
    obj = [path]
    torch.distributed.broadcast_object_list(obj, src=0)  # rank 0 converts/locates the model once
    attention = resolve_attention(cfg.numerics.attention, device.type)
    model, tokenizer = load_causal_lm(obj[0], dtype=cfg.dtype, device=device, attn_implementation=attention)
    param_dtype = next(model.parameters()).dtype
    if (warning := low_precision_warning(param_dtype, cfg.optim.lr)) is not None and rank == 0:
        log.warning(warning)
    mp = compute if compute != param_dtype else None
    trainer_cls = Trainer
    if cfg.lora is not None:  # adapters before sharding; the KL reference is the same model with adapters off
        from winnow.learner.lora import AdaptersOff, LoraTrainer, apply_lora

        model, trainer_cls = apply_lora(model, cfg.lora), LoraTrainer
    shard_model(model, param_dtype=mp)
    ref = AdaptersOff(model) if cfg.lora is not None and cfg.algo.kl_coef > 0 else None
    if cfg.algo.kl_coef > 0 and ref is None:
        ref, _ = load_causal_lm(obj[0], dtype=cfg.dtype, device=device, attn_implementation=attention)
        ref.requires_grad_(False)
        shard_model(ref, param_dtype=mp)
    temperature = cfg.sampling.temperature  # > 0: LearnerConfig refuses 0
    optim = cfg.optim
    if optim.share_prompt:  # the sharded forward runs the whole rows; packing by the shared cost would overfill
        if rank == 0:
            log.warning("optim.share_prompt is not supported under FSDP2 (the sharded forward runs every row's prompt): "
                        "off, micro-batches packed by their full length")
        optim = optim.model_copy(update={"share_prompt": False})
    trainer = trainer_cls(model, cfg.algo, optim, ref_model=ref, pad_token_id=tokenizer.pad_token_id,
                          temperature=temperature, autocast_dtype=None)
    log.info("rank %d of %d on %s: %s master weights, %s compute (FSDP2)", rank, world, device,
             param_dtype, mp or param_dtype)
    return trainer, tokenizer


def launched_by_torchrun() -> bool:
    """More than one process in this learner (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
