"""From an OpenAI request to engine jobs: the alignment, the prompt ids, the settings, the keys.

The alignment of a request: `model` names the proposal (P alone) or one
aligner (P with it, mode `product` unless `ram.mode` says otherwise);
`ram.aligners` (`{name: weight}`) composes several (`weighted_product` by
default). The other modes (`par`, `par_kl`, `sir`, `aligner`, `mds`) take
one aligner, and those that pool (`par`, `par_kl`, `sir`, `aligner`) take
several with weights. Everything is checked here, before any device work;
a bad value raises `RequestError` naming its field.

Determinism: with `seed` S, the request's choice j of prompt p (prompt-major:
index p * n + j) uses the key `split(key(S), P * n)[p * n + j]`, which is
the key `python -m ram_jax.generate --seed=S` gives prompt p * n + j of a
prompts file holding each prompt n times. So a choice's tokens equal that
command's with the same prompt text, settings, `--aligner` (the request's
aligners, in the order `/v1/models` lists them) and template (completions:
`--template=raw`; chat: the server's `--template`). Without a seed the
server draws one.
"""

from __future__ import annotations

import functools
import secrets

from ram_jax.data import templates
from ram_jax.decoding.dispatch import PerRow
from ram_jax.decoding.sampling import SamplingParams
from ram_jax.models import tokenizer as T
from ram_jax.serving import protocol as api
from ram_jax.serving.engine import MAX_CHOICES, STOP_WIDTH, Engine, Job, choice_keys

# What the ram extension may set, each a `SamplingParams` field of its name.
_RAM_FIELDS = (
    "proposal_temperature",
    "proposal_top_p",
    "proposal_top_k",
    "top_k",
    "repetition_penalty",
    "kl_threshold",
    "aligner_temperature",
)


class Resolver:
    """Turns validated requests into `Job`s for `engine` (names, modes, tokenizer)."""

    def __init__(
        self,
        engine: Engine,
        *,
        proposal_name: str,
        aligner_names: tuple[str, ...],
        tokenizer,
        tokenizer_config,
        template: str,
        default_max_tokens: int = 256,
    ):
        self.engine, self.tok, self.tc = engine, tokenizer, tokenizer_config
        self.proposal_name, self.aligner_names = proposal_name, tuple(aligner_names)
        self.template, self.default_max_tokens = template, int(default_max_tokens)
        self.table: PerRow = engine.modes
        self.mode_names = [m.name for m in self.table.modes]
        p_config = engine.models.proposal[1]
        self._raw_bos = T.prompt_bos_id(self.tok, self.tc, None, "raw", p_config)
        self._chat_bos = T.prompt_bos_id(self.tok, self.tc, None, template, p_config)

    # -- /v1/models ---------------------------------------------------------------

    def model_cards(self) -> list[dict]:
        """The bare proposal, each aligner, and how to ask for a composition."""
        modes = ", ".join(self.mode_names)
        card = lambda name, text: {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "ram_jax",
            "ram": text,
        }
        cards = [card(self.proposal_name, {"kind": "proposal", "default_mode": "proposal"})]
        for name in self.aligner_names:
            cards.append(
                card(
                    name,
                    {
                        "kind": "aligner",
                        "default_mode": "product",
                        "modes": modes,
                        "compose": {
                            "ram": {
                                "mode": "weighted_product",
                                "aligners": {a: 1.0 for a in self.aligner_names},
                            }
                        },
                    },
                )
            )
        return cards

    # -- requests -----------------------------------------------------------------

    def completion(self, req: api.CompletionRequest) -> list[Job]:
        req.check_unsupported()
        prompts = req.prompts()
        ids = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                ids += templates.encode_prompts(self.tok, [p], "raw", bos_id=self._raw_bos)
            elif isinstance(p, list) and all(isinstance(t, int) for t in p):
                ids.append(list(p))
            else:
                raise api.RequestError(f"prompt[{i}]: expected a string or token ids.", "prompt")
        return self._jobs(req, ids, req.max_tokens)

    def chat(self, req: api.ChatCompletionRequest) -> list[Job]:
        req.check_unsupported()
        conversation = req.conversation()
        if templates.resolve(self.template) == templates.CHAT:
            if not self.tc.chat_template:
                raise api.RequestError(
                    "messages: this server's tokenizer has no chat template; use "
                    "/v1/completions, or start the server with --template=NAME.",
                    "messages",
                )
            prompt = conversation
        else:
            if len(conversation) != 1 or conversation[0]["role"] != "user":
                raise api.RequestError(
                    f"messages: this server renders chats with the {self.template!r} template, "
                    "which holds one user message; send exactly one.",
                    "messages",
                )
            prompt = conversation[0]["content"]
        ids = templates.encode_prompts(
            self.tok,
            [prompt],
            self.template,
            bos_id=self._chat_bos,
            chat_template=self.tc.chat_template,
            special_tokens=self.tc.special_tokens,
        )
        return self._jobs(req, ids, req.token_limit())

    def _jobs(self, req, prompt_ids: list[list[int]], max_tokens: int | None) -> list[Job]:
        weights, mode_index = self._alignment(req)
        if max_tokens is None:
            # Unasked, a request may fill what the cache leaves its longest prompt.
            room = min(self.engine.room(len(ids)) for ids in prompt_ids)
            max_tokens = max(1, min(self.default_max_tokens, room))
        params = self._params(req, max_tokens, weights)
        vocab = self.engine.vocab_size
        for i, ids in enumerate(prompt_ids):
            if not ids:
                raise api.RequestError(f"prompt[{i}]: empty after templating.", "prompt")
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise api.RequestError(
                    f"prompt[{i}]: token ids {bad[:5]} lie outside the tokenizer's [0, {vocab}).",
                    "prompt",
                )
            problem = self.engine.check_fits(len(ids), params.max_new_tokens)
            if problem:
                fits = len(ids) <= self.engine.max_prompt_length
                param = "max_tokens" if fits and len(ids) < self.engine.max_length else "prompt"
                raise api.RequestError(f"{param}: {problem}", param)
        used = tuple(i for i, w in enumerate(weights) if w > 0)
        stop_ids = self._stop_ids(used, params.stop_token_ids)
        count = len(prompt_ids) * req.n
        if count > MAX_CHOICES:
            raise api.RequestError(
                f"n: {len(prompt_ids)} prompts x n={req.n} = {count} sequences; at most "
                f"{MAX_CHOICES} per request.",
                "n",
            )
        seed = req.seed if req.seed is not None else secrets.randbits(31)
        keys = choice_keys(seed, count)
        return [
            Job(tuple(ids), mode_index, params, keys[p * req.n + j], stop_ids)
            for p, ids in enumerate(prompt_ids)
            for j in range(req.n)
        ]

    def _alignment(self, req) -> tuple[tuple[float, ...], int]:
        """The per-aligner weights (0: unused) and the mode's index in the table."""
        ram = req.ram or api.RamOptions()
        names = {n: i for i, n in enumerate(self.aligner_names)}
        if req.model != self.proposal_name and req.model not in names:
            served = [self.proposal_name, *self.aligner_names]
            raise api.RequestError(
                f"model: unknown model {req.model!r}; this server serves {served} "
                "(GET /v1/models).",
                "model",
                code="model_not_found",
            )
        weights = [0.0] * len(self.aligner_names)
        if ram.aligners:
            for name, w in ram.aligners.items():
                if name not in names:
                    raise api.RequestError(
                        f"ram.aligners: unknown aligner {name!r}; choose among "
                        f"{list(self.aligner_names)}.",
                        f"ram.aligners.{name}",
                    )
                if not w >= 0:
                    raise api.RequestError(
                        f"ram.aligners.{name}: weight {w} must be >= 0 (0 leaves it out).",
                        f"ram.aligners.{name}",
                    )
                weights[names[name]] = float(w)
            default = "weighted_product"
        elif req.model in names:
            weights[names[req.model]] = 1.0
            default = "product"
        else:
            default = "proposal"
        name = ram.mode or default
        if name not in self.mode_names:
            raise api.RequestError(
                f"ram.mode: {name!r} is not served here; choose one of {self.mode_names}.",
                "ram.mode",
            )
        mode = self.table.modes[self.mode_names.index(name)]
        used = [w for w in weights if w > 0]
        if ram.aligners and not used and name != "proposal":
            raise api.RequestError(
                "ram.aligners: every weight is 0; give one aligner a positive weight, or "
                "use the proposal model alone.",
                "ram.aligners",
            )
        if len(used) < mode.min_aligners:
            raise api.RequestError(
                f"ram.mode: {name!r} needs an aligner; set model to an aligner or give "
                "ram.aligners.",
                "ram.mode",
            )
        if mode.max_aligners is not None and len(used) > mode.max_aligners:
            raise api.RequestError(
                f"ram.mode: {name!r} takes {mode.max_aligners} aligner(s), got {len(used)}; "
                "to combine aligners use 'weighted_product' (or 'par', 'par_kl').",
                "ram.mode",
            )
        if not mode.reads_weights and any(w != 1.0 for w in used):
            raise api.RequestError(
                f"ram.aligners: mode {name!r} does not read aligner weights (got {used}); use "
                "'weighted_product', or leave the weights at 1.",
                "ram.aligners",
            )
        return tuple(weights), self.mode_names.index(name)

    def _params(self, req, max_tokens, weights) -> SamplingParams:
        ram = req.ram or api.RamOptions()
        extra = {f: getattr(ram, f) for f in _RAM_FIELDS if getattr(ram, f) is not None}
        try:
            return SamplingParams(
                temperature=req.temperature,
                top_p=req.top_p,
                max_new_tokens=int(max_tokens),
                stop=tuple(req.stop_strings()),
                aligner_weights=weights or None,
                **extra,
            )
        except ValueError as e:
            raise api.RequestError(str(e), None) from None

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one resolver per server)
    def _stop_ids(self, used: tuple[int, ...], extra: tuple[int, ...]) -> tuple[int, ...]:
        """The EOS ids of the proposal and the aligners a request reads (`pair_eos_ids`)."""
        models = self.engine.models
        q_configs = [models.aligners[i][1] for i in used]
        ids = T.pair_eos_ids(self.tok, models.proposal[1], q_configs, self.tc) + extra
        ids = tuple(dict.fromkeys(ids))
        if len(ids) > STOP_WIDTH:
            raise api.RequestError(
                f"{len(ids)} stop ids (EOS included) exceed the {STOP_WIDTH} per request.", None
            )
        return ids
