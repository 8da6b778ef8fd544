"""The training run behind `python -m ram_jax.main`: build everything from a config, loop.

Rerunning the same command resumes from the latest checkpoint in the workdir
(state, data position), so an uninterrupted run and a killed-and-resumed one
end with bitwise equal parameters. Host/device discipline: step n+1 is
dispatched before step n's metrics are fetched, so the host never stalls the
accelerator except at logging, evaluation and checkpoint boundaries.
"""

from __future__ import annotations

import math
import os
import signal
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from ram_jax import data as data_lib
from ram_jax import io
from ram_jax import sharding as shd
from ram_jax.models.tokenizer import (
    load_tokenizer,
    prompt_bos_id,
    tokenizer_length,
    training_eos_id,
)
from ram_jax.models.tokenizer_config import load_tokenizer_config
from ram_jax.training import checkpoint as ckpt
from ram_jax.training import optim
from ram_jax.training import step as train
from ram_jax.training.losses import Objective
from ram_jax.training.metrics import MetricsWriter
from ram_jax.training.model import build_model, reference_model


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def load_examples(config, tok, objective, eos_id, bos_id=None, tokenizer_config=None):
    """(train Examples, eval Examples or None) from the data section of a config.

    `tokenizer_config` supplies the chat template (`data.prompt_template='chat'`).
    """
    d = config.data
    if not d.train_file:
        raise ValueError("data.train_file is empty; pass --config.data.train_file=PATH.jsonl.")
    need = data_lib.required_fields(objective, config.objective.negatives)
    rows = data_lib.read_rows(d.train_file, d.format, need)
    eval_rows = None
    if d.eval_file:
        eval_rows = data_lib.read_rows(d.eval_file, d.format, need)
    elif d.eval_fraction > 0:
        order = np.random.default_rng(config.seed).permutation(len(rows))
        n_eval = max(1, int(round(d.eval_fraction * len(rows))))
        eval_rows = [rows[i] for i in order[:n_eval]]
        rows = [rows[i] for i in sorted(order[n_eval:])]
    tokenize = lambda rs: data_lib.tokenize_rows(
        rs,
        tok,
        objective,
        eos_id=eos_id,
        max_length=d.max_length,
        max_prompt_length=d.max_prompt_length,
        negatives=config.objective.negatives,
        prompt_template=d.prompt_template,
        bos_id=bos_id,
        chat_template=tokenizer_config.chat_template if tokenizer_config else None,
        special_tokens=tokenizer_config.special_tokens if tokenizer_config else None,
    )
    return tokenize(rows), (tokenize(eval_rows) if eval_rows else None)


def total_steps(config, steps_per_epoch: int) -> int:
    if config.num_steps > 0:
        return int(config.num_steps)
    return max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))


class _Preemption:
    """Turns SIGTERM into a flag the loop polls, so it can save before exiting."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def run(config, workdir: str) -> dict:
    """Trains per `config` in `workdir`; returns the final metrics summary."""
    t_start = time.time()
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if not config.tokenizer:
        raise ValueError("config.tokenizer is empty; pass a tokenizer.json or HF model directory.")
    tok = load_tokenizer(config.tokenizer)
    tok_config = load_tokenizer_config(config.tokenizer, tok)
    mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    objective = Objective.from_config(config.objective)
    model = build_model(config, tok, mesh)
    vocab_limit = tokenizer_length(tok)
    eos_id = training_eos_id(tok, model.config, tok_config)
    d = config.data
    bos_id = prompt_bos_id(tok, tok_config, d.add_bos, d.prompt_template, model.config)
    logging.info(
        "responses end with EOS %d %r; prompts start with %s",
        eos_id,
        tok.id_to_token(eos_id),
        "no BOS" if bos_id is None else f"BOS {bos_id} {tok.id_to_token(bos_id)!r}",
    )
    train_ex, eval_ex = load_examples(config, tok, objective, eos_id, bos_id, tok_config)

    per_micro = config.batch_size // max(config.grad_accum, 1)
    row_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.batch_size % config.grad_accum or per_micro % row_shards:
        raise ValueError(
            f"batch_size={config.batch_size} / grad_accum={config.grad_accum} must give a "
            f"microbatch divisible by the data x fsdp mesh size ({row_shards})."
        )
    batches = data_lib.Batches(
        train_ex,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        seed=config.seed,
        shuffle=d.shuffle,
        bucket_min=d.bucket_min,
        max_length=d.max_length,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    steps = total_steps(config, batches.steps_per_epoch)
    optimizer, schedule = optim.from_config(config, steps)
    abstract = train.abstract_state(model.config, optimizer)
    shardings = train.state_shardings(abstract, mesh)
    meta = ckpt.make_meta(model.config, config, train_examples=len(train_ex))
    checkpointer = ckpt.Checkpointer(workdir, keep=config.keep_checkpoints)
    iterator = data_lib.DataIterator(batches)
    if checkpointer.latest_step() is not None:
        state, data_state = checkpointer.restore(abstract, shardings, meta)
        iterator.restore(data_state)
        logging.info("resumed from step %d in %s", int(state.step), checkpointer.directory)
    else:
        state = model.initial_state(optimizer, shardings)
    ref_config, ref_params, ref_shardings = None, None, None
    if objective.needs_reference:
        ref_config, ref_params, ref_shardings = reference_model(config, model, mesh)

    step_fn = train.make_train_step(
        model.config,
        objective,
        optimizer,
        schedule,
        shardings,
        mesh,
        vocab_limit=vocab_limit,
        remat=config.model.remat,
        ref_config=ref_config,
        ref_shardings=ref_shardings,
    )
    eval_fn = train.make_eval_step(
        model.config,
        objective,
        shardings.params,
        mesh,
        vocab_limit=vocab_limit,
        ref_config=ref_config,
        ref_shardings=ref_shardings,
    )
    eval_bs = config.eval_batch_size or per_micro
    if eval_bs % row_shards:
        raise ValueError(
            f"eval_batch_size={eval_bs} must be divisible by the data x fsdp mesh size "
            f"({row_shards})."
        )

    def evaluate(params):
        if eval_ex is None:
            return {}
        numer = denom = 0.0
        sums: dict[str, float] = {}
        for b in data_lib.eval_batches(
            eval_ex,
            eval_bs,
            bucket_min=d.bucket_min,
            max_length=d.max_length,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        ):
            n, de, s = jax.device_get(eval_fn(params, train.put_batch(b, mesh), ref_params))
            numer, denom = numer + float(n), denom + float(de)
            for k, v in s.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return train.finish_eval(numer, denom, sums)

    writer = MetricsWriter(workdir, enabled=is_main)
    start = int(jax.device_get(state.step))
    preempt = _Preemption()
    last_saved = checkpointer.latest_step()
    pending = None  # (step, metrics on device, tokens) of the last dispatched step
    last_train: dict[str, float] = {}
    window_tokens, window_t0 = 0, time.time()

    def fetch(p):
        """Host copy of a step's metrics; stops the run on a non-finite loss."""
        nonlocal last_train, window_tokens, window_t0
        step, metrics_dev, tokens = p
        metrics = {k: float(v) for k, v in jax.device_get(metrics_dev).items()}
        if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
            raise NonFiniteLossError(
                f"non-finite training loss {metrics['loss']} (grad norm {metrics['grad_norm']}) "
                f"at step {step}; stopping. The last good checkpoint (step {last_saved}) in "
                f"{checkpointer.directory} is kept. Lower optimizer.lr, set optimizer.clip_norm, "
                "or check the data."
            )
        last_train = metrics
        window_tokens += tokens
        if config.log_every and step % config.log_every == 0 or step == steps:
            elapsed = max(time.time() - window_t0, 1e-9)
            metrics["tokens_per_s"] = window_tokens / elapsed
            writer.write(step, {f"train/{k}": v for k, v in metrics.items()})
            bar.set_postfix(loss=f"{metrics['loss']:.4g}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            window_tokens, window_t0 = 0, time.time()

    def save(current_state):
        nonlocal last_saved
        checkpointer.save(current_state, iterator.state(), meta)
        last_saved = int(jax.device_get(current_state.step))

    bar = tqdm(
        total=steps, initial=start, desc="train", unit="step", disable=not is_main, smoothing=0.1
    )
    preempted = False
    if start == 0 and config.eval_every:
        writer.write(0, {f"eval/{k}": v for k, v in evaluate(state.params).items()})
    try:
        for step in range(start + 1, steps + 1):
            batch = next(iterator)
            tokens = int(batch["mask"].sum()) * jax.process_count()
            state, metrics = step_fn(state, train.put_batch(batch, mesh), ref_params)
            if pending is not None:
                fetch(pending)
            pending = (step, metrics, tokens)
            bar.update(1)
            stop = preempt.requested or checkpointer.reached_preemption(step)
            do_eval = config.eval_every and step % config.eval_every == 0 and step < steps
            do_save = config.checkpoint_every and step % config.checkpoint_every == 0
            if do_eval or do_save or stop:
                fetch(pending)
                pending = None
            if do_eval:
                writer.write(step, {f"eval/{k}": v for k, v in evaluate(state.params).items()})
            if do_save or stop:
                save(state)
            if stop:
                preempted = True
                logging.warning("preempted at step %d; rerun the same command to resume.", step)
                break
        if pending is not None:
            fetch(pending)
            pending = None
    finally:
        bar.close()
        preempt.restore()
        checkpointer.wait()
    if preempted:
        checkpointer.close()
        writer.close()
        return {"preempted_at": last_saved}
    save(state)
    eval_metrics = evaluate(state.params)
    final_step = int(jax.device_get(state.step))
    if eval_metrics:
        writer.write(final_step, {f"eval/{k}": v for k, v in eval_metrics.items()})
    checkpointer.close()
    export_dir = ""
    if config.export:
        export_dir = config.export_dir or os.path.join(workdir, "export")
        model.export(state.params, export_dir, tok, tok_config, eos_id=eos_id)
    writer.close()
    summary = {
        "step": final_step,
        "train_loss": last_train.get("loss"),
        "eval_loss": eval_metrics.get("loss"),
        "seconds": time.time() - t_start,
        "export_dir": export_dir,
    }
    if is_main:
        io.write_json(os.path.join(workdir, "summary.json"), summary)
        print(
            f"done: {final_step} steps in {summary['seconds']:.1f}s, train loss "
            f"{summary['train_loss']}, eval loss {summary['eval_loss']}, export {export_dir or '-'}"
        )
    return summary
