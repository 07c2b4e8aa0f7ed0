"""The learner's metric table: every metric of the learner, declared once (the row type: :mod:`winnow.metric_defs`).

One row per ``metrics.jsonl`` key and per Prometheus collector. It drives the step's accumulation over micro-batches
and its reduction over data-parallel ranks (:mod:`winnow.learner.step`), the Prometheus collectors
(:mod:`winnow.learner.metrics`, :mod:`winnow.learner.tracking`), the tracking sinks' names and the learner's tables
in ``docs/metrics.md`` (``python scripts/metrics_doc.py``). A key a step emits without a row here is an error
(``StepResult.build``). The Prometheus names are a contract: the Grafana dashboard and the alerts use them.

The file is long because it is a table: one row per metric, with its formula.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from winnow.metric_defs import Metric

_PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LAST = "(last step)"


def _step(key: str, help: str, prom: str | None = None, **kw: Any) -> Metric:
    kw.setdefault("section", "learner")
    return Metric(key, help, prom, source="step", **kw)


def _row(key: str, help: str, prom: str | None = None, **kw: Any) -> Metric:
    kw.setdefault("section", "learner")
    return Metric(key, help, prom, source="row", **kw)


def _service(key: str, help: str, prom: str, **kw: Any) -> Metric:
    kw.setdefault("section", "learner")
    return Metric(key, help, prom, source="service", **kw)


def _tokens_per_s(m: Mapping[str, float]) -> float:
    return m["tokens"] / m["time_total_s"] if m["time_total_s"] > 0 else 0.0


LEARNER: tuple[Metric, ...] = (
    # -- Prometheus, in the order of docs/metrics.md ---------------------------------------------------------------
    _service("weight_version", "Policy version (optimizer steps taken).", "winnow_learner_weight_version",
             doc="Policy version the learner holds: 0 at start, +1 per optimizer step (resumed from the checkpoint)."),
    _service("steps", "Optimizer steps taken by this process.", "winnow_learner_steps_total", kind="counter",
             doc="Optimizer steps taken. `rate(...)` = steps per second."),
    _step("acceptance_rate", "Correct / valid samples in the last batch.", "winnow_learner_acceptance_ratio",
          ranks="mean", weight="groups",
          doc="Samples with reward 1 / all valid samples in the step: `sum_gi [s_gi = CORRECT] / #{valid samples}`. "
              "Valid = the verifier returned a judgement (not ERROR/UNSPECIFIED). For RAFT this is the "
              "rejection-sampling acceptance rate."),
    _step("kept_group_fraction", "Groups of the last batch with a kept sample / groups.",
          "winnow_learner_kept_group_ratio", ranks="mean", weight="groups",
          doc="Groups with at least one sample kept by the algorithm's filter / `G`. RAFT keeps groups with a "
              "correct sample; Reinforce-Rej keeps mixed groups (not all-correct, not all-wrong); GRPO/REINFORCE "
              "keep all."),
    _service("group_outcomes", "Scored groups by outcome.", "winnow_learner_groups_total", kind="counter", labels=("outcome",),
             doc="Groups by what happened to them: `trained` (used in a step), `all_correct` / `all_wrong` (filtered "
                 "out: no learning signal for the algorithm), `stale` (generated with weights more than "
                 "`algo.max_staleness` versions old, dropped), `duplicate` (a `(prompt_id, request_id)` already "
                 "trained, dropped), `corrupt` (did not decode or failed the group check: wrong `n`, a status outside "
                 "the enum, too many response tokens, ...; skipped), `foreign` (a request id that is not outstanding: "
                 "never released by this lineage, a superseded attempt, or forged), `future` (a token from a policy "
                 "version above the learner's: weights of a dead lineage; the request is released again at once); the "
                 "last two are skipped and leave no ledger row; `rejected` (a prompt longer than `max_prompt_tokens`, "
                 "not released); `unauthenticated` (with a group key set: a record without a valid `winnow-hmac` "
                 "header, dead-lettered before it is decoded)."),
    _service("samples", "Samples of batched groups by verifier status.", "winnow_learner_samples_total",
             kind="counter", labels=("status",),
             doc="Samples received, by verifier status (`correct`, `wrong`, `no_answer`, `unparsable`, `timeout`, "
                 "`too_complex`, `error`)."),
    _step("reward_mean", f"Mean reward over valid samples {_LAST}.", "winnow_learner_reward_mean",
          ranks="mean", weight="groups",
          doc="Mean reward over the valid samples of the step, `mean_gi r_gi` (status mapped to reward by the "
              "learner's config)."),
    _step("entropy", f"Mean token entropy of the policy {_LAST}.", "winnow_learner_entropy", micro="sum", ranks="sum",
          doc="Mean per-token entropy of the current policy on the trained response tokens, `mean_t H_t`, "
              "`H_t = -sum_v p_v log p_v` with `p = softmax(z_t / T)` (nats), aggregated like the loss. Its collapse "
              "is the main failure mode of positive-only training (RAFT)."),
    _step("kl", f"KL(pi || pi_ref) term {_LAST}.", "winnow_learner_kl", micro="sum", ranks="sum",
          doc="Mean KL from the current policy to the reference policy per token, k3 estimator: "
              "`mean_t (w_t - 1 - log w_t)` with `w_t = pi_ref(a_t) / pi_theta(a_t)`, aggregated like the loss."),
    _step("clip_frac", f"Clipped tokens / trained tokens {_LAST}.", "winnow_learner_clipped_token_ratio",
          micro="mean", ranks="mean", weight="tokens",
          doc="Share of trained tokens where the PPO clip is active (ratio outside `[1 - eps_low, 1 + eps_high]` on "
              "the side that zeroes the gradient)."),
    _step("grad_norm", "Gradient L2 norm before clipping (last step).", "winnow_learner_grad_norm", ranks="same",
          doc="Global L2 norm of the gradient before clipping to `optim.max_grad_norm`: `sqrt(sum_p ||g_p||^2)`."),
    _step("lr", "Learning rate of the last step.", "winnow_learner_learning_rate", ranks="same",
          doc="Learning rate the step used: `optim.lr` x the warm-up factor `(s + 1) / warmup_steps`, then 1 "
              "(`constant`) or the `linear` / `cosine` decay over `optim.total_steps` down to `min_lr_ratio`."),
    _step("response_length_mean", f"Mean response length in tokens over the batch's samples {_LAST}.",
          "winnow_learner_response_length_mean", ranks="mean", weight="groups",
          doc="Mean response length of the batch in tokens, `mean_gi len(y_gi)`."),
    _step("truncated_fraction", f"Samples of the batch that hit max_new_tokens (finish_reason length) {_LAST}.",
          "winnow_learner_truncated_ratio", ranks="mean", weight="groups",
          doc="Responses that stopped at `max_new_tokens` (finish reason `length`) / responses in the batch."),
    _service("run_finished", "1 once the run reached max_steps (completion marker written).",
             "winnow_learner_run_finished",
             doc="1 once the run reached `max_steps` (the completion marker `<run_dir>/finished.json` exists): the "
                 "learner stays up idle, serving `/metrics` and `/health`, instead of training again; 0 otherwise. "
                 "The stalled alert ignores finished runs."),
    _step("ratio_mean", f"Mean pi_theta/mu over trained tokens {_LAST}.", "winnow_learner_importance_ratio_mean",
          ranks="mean", weight="tokens", empty=1.0,
          doc="Mean over trained tokens of `ratio_t = pi_theta(a_t) / mu(a_t)` (`mu` = behaviour log-probs recorded "
              "by the generator). 1 = on-policy."),
    _step("ratio_max", f"Max pi_theta/mu over trained tokens {_LAST}.", "winnow_learner_importance_ratio_max",
          ranks="max", doc="Max over trained tokens of `ratio_t`. Spikes show stale or mismatched samples."),
    _step("ess", f"Normalised effective sample size of the importance ratios {_LAST}.",
          "winnow_learner_effective_sample_size", ranks="mean", weight="tokens", empty=1.0,
          doc="Normalised ESS of the per-token importance weights: `(sum w)^2 / (N sum w^2)` in (0, 1]; 1 = "
              "on-policy. Over ranks: the token-weighted mean of the ranks' ESS."),
    _step("mismatch_kl", "Training-inference mismatch: mean k3 KL(mu || pi) over trained tokens sampled at the "
          "learner's own version (last step that had any).", "winnow_learner_mismatch_kl",
          ranks="mean", weight="mismatch_tokens", set_if="mismatch_tokens",
          doc="Training-inference mismatch: over trained tokens whose `policy_version` equals the learner's version "
              "before the step (same weights: any difference is numerics), `mean_t (w_t - 1 - log w_t)` with "
              "`w_t = pi_theta(a_t) / mu(a_t)`, the k3 estimate of `KL(mu || pi_theta)`. Set only on steps with such "
              "tokens (`mismatch_tokens` > 0). Alert: `WinnowTrainingInferenceMismatch` (> 0.01). Generators and "
              "learner share `numerics.precision` (see `winnow/numerics.py`) so it stays small."),
    _step("mismatch_max_abs_log_ratio", "Max |log pi - log mu| over trained tokens sampled at the learner's own "
          "version (last step that had any).", "winnow_learner_mismatch_max_abs_log_ratio", ranks="max",
          set_if="mismatch_tokens", doc="Max over the same tokens of `abs(log pi_theta(a_t) - log mu(a_t))`."),
    _step("loss", f"Training loss {_LAST}.", "winnow_learner_loss", micro="sum", ranks="sum",
          doc="The step's loss: policy term + `kl_coef * KL - entropy_coef * H`, aggregated as configured (token-mean "
              "or seq-mean) with the whole batch's normaliser, so micro-batches and ranks add up to it."),
    _service("staleness", "version - policy_version of each trained group.", "winnow_learner_staleness_versions",
             kind="histogram", buckets=(0, 1, 2, 3, 4, 6, 8, 16, 32),
             doc="Per trained group, `learner version before the step - policy version that generated the group`. "
                 "Bounded by `algo.max_staleness`. Quantile: `histogram_quantile(0.9, sum by (le) "
                 "(rate(winnow_learner_staleness_versions_bucket[5m])))`."),
    _step("tokens", "Response tokens trained on.", "winnow_learner_tokens_total", kind="counter", micro="sum",
          ranks="sum", doc="Response tokens trained on. `rate(...)` = trained tokens per second (averaged over the "
                           "window, waits included)."),
    _service("tokens_per_second", "Trained tokens / compute seconds (last step).", "winnow_learner_tokens_per_second",
             doc="Trained tokens of the last step / its compute time (wait excluded)."),
    _service("phase", "Seconds per step phase.", "winnow_learner_step_phase_seconds", kind="histogram",
             labels=("phase",), buckets=_PHASE_BUCKETS,
             doc="Seconds per step in each phase: `wait` (for enough scored groups), `compute` (forward, backward, "
                 "optimizer), `publish` (writing and announcing weights). Mean: `rate(_sum[5m]) / rate(_count[5m])`."),
    _service("last_step", "Unix time of the last optimizer step.", "winnow_learner_last_step_timestamp_seconds",
             doc="Unix time when the last step finished. Stalled when `time() - value` is large."),
    _service("prompts_released", "Prompt requests released (including re-releases).",
             "winnow_learner_prompts_released_total", kind="counter",
             doc="Prompt requests released onto `<prefix>.prompts` (re-releases after `request_timeout_s` included)."),
    _service("requests_rereleased", "Requests released again after request_timeout_s.",
             "winnow_learner_requests_rereleased_total", kind="counter",
             doc="Prompt requests released again (new request id) because their group had not arrived after "
                 "`request_timeout_s`."),
    _service("dead_letters", "Scored-group records quarantined to <run_dir>/dead-letter.jsonl (undecodable, or "
             "invalid: wrong n, a status outside the enum, too many response tokens, ...).",
             "winnow_learner_dead_letters_total", kind="counter", labels=("reason",),
             label_values=(("undecodable",), ("invalid",)),
             doc="Scored-group records quarantined to `<run_dir>/dead-letter.jsonl` (one row each: topic, partition, "
                 "offset, request id, reason): `undecodable` (not a ScoredGroup) or `invalid` (wrong `n`, a status "
                 "outside the enum, more response tokens than `sampling.max_new_tokens`, token ids outside the "
                 "vocabulary, bad log-probs). Never trained, never a crash; the offset is committed past them."),
    _row("unconsumed", "Released requests not yet trained or dropped.", "winnow_learner_requests_unconsumed",
         doc="Released requests not yet trained or dropped. Admission control keeps it at most "
             "`(max_staleness + 1) * batch_groups`."),
    _service("buffered", "Groups received and waiting for a batch.", "winnow_learner_buffered_groups",
             doc="Scored groups received and waiting to fill a batch of `batch_groups`."),
    _service("consumer_lag", "Records behind the groups topic's high watermark (best effort).",
             "winnow_learner_consumer_lag",
             doc="Records behind the high watermark of `<prefix>.groups` (best effort, from the last fetch)."),
    _service("published_changed", "Published weights changed since the previous publication / weights (sampled).",
             "winnow_learner_published_changed_ratio",
             doc="Of the weights in the newest published file, the fraction whose stored value differs (bitwise) from "
                 "the previous version in the store, on about 4M elements (every s-th row of every tensor). The "
                 "learner trains float32 masters and publishes `weights.dtype` (bf16 when the run computes in bf16): an update below half "
                 "a bf16 rounding step does not reach the published policy, so near 0 means the generators' policy "
                 "barely moves per publication (a learning rate too small for the published precision, or "
                 "`publish_every` too small to accumulate it). Set on each publication with an earlier version in the "
                 "store."),
    _service("checkpoint_seconds", "Seconds to write a checkpoint.", "winnow_learner_checkpoint_seconds",
             kind="histogram", buckets=(0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
             doc="Seconds to write one checkpoint (Kafka offsets are committed after it)."),
    _row("keep_rate", "Dynamic sampling: fraction of the recent groups the filter keeps, judged on arrival "
         "(4 x batch_groups).", "winnow_learner_keep_rate",
         doc="Dynamic sampling (`algo.dynamic_sampling`): fraction of the last 4 x `batch_groups` groups the filter "
             "keeps, judged on arrival, with one kept group of prior. The admission limit is `(max_staleness + 1) x "
             "batch_groups / keep_rate`, capped at `max_prompts_per_group` times it. Prompts released per trained "
             "group: `winnow_learner_prompts_released_total / winnow_learner_groups_total{outcome=\"trained\"}` "
             "(also `prompts_per_trained_group` in metrics.jsonl)."),
    _service("samples_not_trained", "Dynamic sampling: samples generated and scored in groups the filter dropped on "
             "arrival.", "winnow_learner_samples_not_trained_total", kind="counter",
             doc="Dynamic sampling: samples generated and scored in groups the filter dropped on arrival (the "
                 "generation spent to keep batches full)."),
    _service("offset_rewinds", "Groups-topic partitions read again from below the checkpointed offset because the "
             "broker's log ended below it (records lost: a memory-only broker restarted, a topic re-created).",
             "winnow_learner_offset_rewinds_total", kind="counter",
             doc="Groups-topic partitions read again from the log's end because it ended below the checkpointed "
                 "offset (the broker lost records: a memory-only broker restarted)."),
    _row("eval_accuracy", "Accuracy on a held-out set.", "winnow_learner_eval_accuracy", labels=("set",), tag="eval",
         doc="Accuracy (correct / prompts) of greedy decoding on the held-out eval set `set`, at the last "
             "evaluation: one series per set of `eval.sets` (by `name`), or `eval.set_name` for the single set. In "
             "`metrics.jsonl`: `eval_accuracy` (the first set) and, with several sets, `eval_accuracy.NAME` for "
             "each."),
    _row("eval_mean_at_k", "Mean correctness of k samples per held-out problem.", "winnow_learner_eval_mean_at_k",
         labels=("set",), tag="eval",
         doc="mean@k on the held-out set (with `eval.k > 0`): correct samples / (k × prompts), k samples per prompt "
             "at `eval.temperature`, at the last evaluation."),
    _step("pg_loss", "Policy-gradient term of the loss (last step).", "winnow_learner_pg_loss", micro="sum",
          ranks="sum", doc="Policy-gradient term of the last step's loss (without the KL and entropy terms)."),
    _step("ratio_min", "Min pi_theta/mu over trained tokens (last step).", "winnow_learner_importance_ratio_min",
          ranks="min", doc="Min over trained tokens of `pi_theta(a_t) / mu(a_t)` (last step)."),
    _step("staleness_mean", "Mean version - policy_version of the batch's groups (last step).",
          "winnow_learner_staleness_mean", ranks="mean", weight="groups",
          doc="Mean over the last batch's groups of `version before the step - policy version that generated the "
              "group`."),
    _step("kept_sample_fraction", "Samples of the batch kept by the filter (last step).",
          "winnow_learner_kept_sample_ratio", ranks="mean", weight="groups",
          doc="Samples kept by the algorithm's filter / all samples of the last batch."),
    _step("advantage_abs_mean", "Mean |advantage| over kept samples (last step).",
          "winnow_learner_advantage_abs_mean", ranks="mean", weight="sequences",
          doc="Mean `|A|` over the kept samples of the last batch."),
    _step("dual_clip_frac", "Share of trained tokens where the dual clip is active (last step).",
          "winnow_learner_dual_clip_ratio", micro="mean", ranks="mean", weight="tokens",
          doc="Share of trained tokens where the dual clip (negative advantages) is active (last step)."),
    _step("is_trunc_frac", "Share of trained tokens whose truncated IS weight was capped (decoupled loss; last step).",
          "winnow_learner_is_truncated_ratio", micro="mean", ranks="mean", weight="tokens",
          doc="Share of trained tokens whose truncated importance weight was capped (decoupled loss; last step)."),
    _step("skipped", "1 if the last step took no optimizer step (no kept sample).", "winnow_learner_step_skipped",
          ranks="same", doc="1 if the last step took no optimizer step (no sample carried weight, or a non-finite "
                            "gradient norm)."),
    _service("tracking_errors", "Tracking sink calls that failed (the step's metrics did not reach that sink).",
             "winnow_learner_tracking_errors_total", kind="counter", labels=("sink",),
             doc="Calls to an experiment-tracking sink (`tensorboard`, `wandb`, `mlflow`, `trackio`) that failed; "
                 "that step's metrics did not reach it (see [tracking.md](tracking.md))."),
    # -- the beta-sampler (raft_beta, raft++_beta, raft_snis): labelled gauges, one series per key ------------------
    _service("beta_acceptance", "raft_beta: accepted / valid samples of the last batch (measured, and expected = "
             "mean alpha).", "winnow_learner_beta_acceptance_ratio", labels=("source",), section="beta"),
    _step("beta_acceptance_rate", "`a`, accepted / valid samples (the seeded draws).",
          "winnow_learner_beta_acceptance_ratio", series=("measured",), ranks="mean", weight="groups", section="beta"),
    _step("beta_acceptance_expected", "`A`, what `a` should be given the rewards. With rewards {0, 1} and a fraction "
          "`p` correct, `A = p + (1 - p) exp(-1 / beta)`.", "winnow_learner_beta_acceptance_ratio",
          series=("expected",), ranks="mean", weight="groups", section="beta"),
    _service("beta_identity", "Var_q[w] + E_q[w (w_max - w)] = 1/acceptance - 1, both sides (last batch).",
             "winnow_learner_beta_identity", labels=("side",), section="beta",
             doc="Both sides of `Var_q[w] + E_q[w (w_max - w)] = 1/acceptance - 1`; `is_weight_var + is_weight_gap` "
                 "tracks `inverse_acceptance_minus_one` up to sampling noise; both grow when the policy puts little "
                 "mass where `pi* ∝ pi exp(r / beta)` lives."),
    _step("beta_is_weight_var", "`mean w^2 - 1` (the importance-sampling side, from the rewards).",
          "winnow_learner_beta_identity", series=("is_weight_var",), ranks="mean", weight="groups", section="beta"),
    _step("beta_is_weight_gap", "`mean w (1/A - w)` (0 when every weight is 0 or `w_max`: beta -> 0, RAFT).",
          "winnow_learner_beta_identity", series=("is_weight_gap",), ranks="mean", weight="groups", section="beta"),
    _step("beta_inverse_acceptance_minus_one", "`1/a - 1` (the rejection side, from the draws; `a` floored at "
          "`1/N`).", "winnow_learner_beta_identity", series=("inverse_acceptance_minus_one",), ranks="mean",
          weight="groups", section="beta"),
    _service("snis_ess", "SNIS weights exp(r/beta) per group: ESS / group size, mean and min over groups (last "
             "batch).", "winnow_learner_snis_ess_ratio", labels=("stat",), section="beta",
             doc="Per group, the effective sample size of the SNIS weights `exp(r_gi / beta)` over the group's `N_g` "
                 "valid samples, `ESS_g / N_g = (sum_i w_gi)^2 / (N_g sum_i w_gi^2)` in `[1/N_g, 1]`. 1 = equal "
                 "weights (all rewards equal), `1/N_g` = one sample carries the group."),
    _step("snis_ess_fraction", "Mean over the non-empty groups of `ESS_g / N_g`.", "winnow_learner_snis_ess_ratio",
          series=("mean",), ranks="mean", weight="groups", section="beta"),
    _step("snis_ess_min_fraction", "Min over the non-empty groups of `ESS_g / N_g`.", "winnow_learner_snis_ess_ratio",
          series=("min",), ranks="min", section="beta"),
    _service("beta_groups", "Groups with >= 1 accepted sample: measured vs 1 - (1 - p)^n (last batch).",
             "winnow_learner_beta_groups_accepted", labels=("source",), section="beta",
             doc="Best-of-n. Measured below independent = the difficulty varies between prompts (`1 - (1 - p)^n` is "
                 "concave in `p`), so rejection sampling starves some prompts entirely."),
    _step("beta_groups_accepted", "Groups with at least one accepted sample / non-empty groups.",
          "winnow_learner_beta_groups_accepted", series=("measured",), ranks="mean", weight="groups", section="beta"),
    _step("beta_groups_accepted_independent", "`mean_g 1 - (1 - a)^N_g`, the same if every prompt were equally "
          "hard.", "winnow_learner_beta_groups_accepted", series=("independent",), ranks="mean", weight="groups",
          section="beta"),
    # -- metrics.jsonl only: the step ------------------------------------------------------------------------------
    _step("is_weight_mean", "Mean behaviour-correction weight over trained tokens (1 without a correction).",
          micro="mean", ranks="mean", weight="tokens", empty=1.0),
    _step("mismatch_tokens", "Trained tokens sampled at the learner's own version (the tokens of `mismatch_kl`).",
          ranks="sum"),
    _step("is_mask_frac", "Share of trained tokens the behaviour correction masked.", ranks="mean", weight="tokens"),
    _step("is_seq_trunc_frac", "Share of trained sequences whose correction weight was truncated.", ranks="mean",
          weight="sequences"),
    _step("is_seq_mask_frac", "Share of trained sequences the behaviour correction masked.", ranks="mean",
          weight="sequences"),
    _step("tokens_total", "Response tokens of the batch (trained or not).", ranks="sum"),
    _step("sequences", "Samples forwarded (weight > 0 and a non-empty response).", ranks="sum"),
    _step("groups", "Groups in the batch.", ranks="sum"),
    _step("staleness_max", "Max over the batch's groups of `version - policy_version`.", ranks="max"),
    _step("groups_all_correct", "Groups whose valid samples are all correct.", ranks="sum"),
    _step("groups_all_wrong", "Groups whose valid samples are all wrong.", ranks="sum"),
    _step("groups_mixed", "Groups with correct and wrong valid samples.", ranks="sum"),
    _step("groups_empty", "Groups with no valid sample.", ranks="sum"),
    _step("invalid_samples", "Samples the verifier could not judge (weight 0).", ranks="sum"),
    _step("overlong_dropped", "Samples the filter kept that were dropped as truncated (`overlong.drop_truncated`).",
          ranks="sum"),
    _step("overlong_penalty_mean", "Mean soft overlong penalty over valid samples (`overlong.soft_penalty`).",
          ranks="mean", weight="groups"),
    _step("overlong_penalized_fraction", "Valid samples with a penalty < 0 / valid samples.", ranks="mean",
          weight="groups"),
    _step("tokens_per_s", "Trained tokens / the step's time (`tokens / time_total_s`).", ranks="derived",
          derive=_tokens_per_s),
    _step("time_forward_s", "Seconds in the policy forwards (launch time on a GPU unless `sync_timings`).",
          ranks="max", tag="time"),
    _step("time_ref_s", "Seconds in the reference model's forwards.", ranks="max", tag="time"),
    _step("time_backward_s", "Seconds in the backwards.", ranks="max", tag="time"),
    _step("time_forward_backward_s", "Seconds of `forward_backward` (signals, micro-batches, metrics).", ranks="max",
          tag="time"),
    _step("time_optimizer_s", "Seconds of the clip and the optimizer step.", ranks="max", tag="time"),
    _step("time_total_s", "Seconds of the whole training step.", ranks="max", tag="time"),
    # -- metrics.jsonl only: the service's fields ------------------------------------------------------------------
    _row("wait_s", "Seconds waiting for enough scored groups.", tag="time"),
    _row("compute_s", "Seconds of the training step as the service sees it.", tag="time"),
    _row("publish_s", "Seconds writing and announcing weights (0 when not published).", tag="time"),
    _row("published_changed_fraction", "`winnow_learner_published_changed_ratio` of this step's publication (absent "
         "when it did not publish or had no earlier version to compare)."),
    _row("checkpoint_s", "Seconds writing the checkpoint and committing offsets (0 when none).", tag="time"),
    _row("next_position", "The next prompt position of the dataset to release."),
    _row("prompts_per_trained_group", "Prompts released / groups trained, since the start."),
)
