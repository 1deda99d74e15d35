"""Sample text from a trained SpikingSSM language model, token by token (recurrent mode).

    python -m spiking_ssm.lm.generate ckpt=outputs/train/<run>/checkpoints/last.pt prompt="the meaning of" \\
        max_new_tokens=50 temperature=1.0 top_k=0 seed=0 [device=auto] [use_ema=false] [paths.data=/data ...]

The checkpoint (written by the engine's trainer: model weights, the training config and the vocabulary) gives the
model and its words; no data set is read (:mod:`spiking_ssm.lm.restore`; older checkpoints without a vocabulary
rebuild their data set, with a warning). Dotted ``key=value`` arguments override the training config (e.g.
``paths.data=/data``); the key must exist there (``+key=value`` adds one).

The prompt is split on whitespace into words (a word-level vocabulary such as WikiText-103's); words outside the
vocabulary become ``<unk>`` with a warning (an error when the vocabulary has no ``<unk>``); an empty prompt starts
from ``<eos>``. The prompt runs through :class:`~spiking_ssm.lm.streaming.StreamingLanguageModel`, then each
sampled token is fed back. ``temperature=0`` is greedy decoding, any other temperature must be a finite number > 0;
``top_k=0`` samples from the whole vocabulary. ``max_new_tokens`` and ``top_k`` are at most 2**31 - 1 and ``seed`` lies
in [0, 2**32 - 1] (:mod:`snn_engine.protection.bounds`).

Printed: the prompt and its continuation, word by word as they are sampled (flushed), then tokens/s of the decoding
loop, spikes per generated token (all somas) and energy per generated token (the SpikingSSM paper's convention,
``snn_engine.measure.ops`` ``ssm_paper``: ACs of the 1x1 mixing convs at 0.9 pJ; beside it the dense ANN twin of the same
layers at 4.6 pJ per MAC), and beside it the memory-inclusive energy per generated token
(:mod:`spiking_ssm.lm.stream_energy`: SpikingJelly's SimpleEnergy on a replay of the decoding steps, weight and
state traffic included). Errors
(missing or foreign checkpoint, bad or misspelt arguments, with the closest valid one, unknown words without
``<unk>``) are one line on stderr, exit 1. Ctrl-C keeps the text printed so far, ends its line and exits with
status 130 without a traceback.
"""

from __future__ import annotations

import difflib
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from snn_engine.protection.bounds import SEED_MAX, SIZE_MAX
from snn_engine.errors import UserError

if TYPE_CHECKING:
    from spiking_ssm.lm.language_model import SpikingSSMLanguageModel

USAGE = ("usage: python -m spiking_ssm.lm.generate ckpt=PATH [prompt=TEXT] [max_new_tokens=50] [temperature=1.0] "
         "[top_k=0] [seed=0] [device=auto|cpu|cuda] [use_ema=false] [section.key=value ...] (temperature=0: greedy)")
#: exit status after Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED = 130
DEFAULTS = {"ckpt": None, "prompt": "", "max_new_tokens": 50, "temperature": 1.0, "top_k": 0, "seed": 0,
            "device": "auto", "use_ema": False}
UNK, EOS = "<unk>", "<eos>"


def parse_args(argv: list[str]) -> tuple[dict, list[str]]:
    """``key=value`` arguments -> (settings of this command, dotted overrides of the training config)."""
    settings, overrides = dict(DEFAULTS), []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key.lstrip("+"):
            raise UserError(f"argument {arg!r} is not key=value; {USAGE}")
        if "." in key:
            overrides.append(f"{key}={value}")  # checked against the stored config (run.checkpoint_config)
            continue
        key = key.lstrip("+")
        if key not in DEFAULTS:
            close = difflib.get_close_matches(key, list(DEFAULTS), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(DEFAULTS)}"
            raise UserError(f"unknown argument {key!r}; {hint} ({USAGE})")
        else:
            settings[key] = value
    return _typed(settings), overrides


def _typed(settings: dict) -> dict:
    def number(key, kind, low, high=None):
        try:
            value = kind(settings[key])
        except (TypeError, ValueError):
            raise UserError(f"{key}={settings[key]!r} is not a{'n integer' if kind is int else ' number'}") from None
        if high is not None and not low <= value <= high:
            raise UserError(f"{key}={settings[key]} must be a whole number in [{low}, {high}]")
        if not math.isfinite(value) or value < low:
            raise UserError(f"{key}={settings[key]} must be a finite number >= {low}"
                            + (" (0 = greedy decoding)" if key == "temperature" else ""))
        return value

    if not settings["ckpt"]:
        raise UserError(f"pass the checkpoint to sample from: ckpt=PATH; {USAGE}")
    out = dict(settings, max_new_tokens=number("max_new_tokens", int, 1, SIZE_MAX),
               temperature=number("temperature", float, 0.0), top_k=number("top_k", int, 0, SIZE_MAX),
               seed=number("seed", int, 0, SEED_MAX))
    use_ema = str(settings["use_ema"]).lower()
    if use_ema not in ("true", "false"):
        raise UserError(f"use_ema={settings['use_ema']!r} must be true or false")
    out["use_ema"] = use_ema == "true"
    if out["device"] not in ("auto", "cpu", "cuda") and not str(out["device"]).startswith("cuda:"):
        raise UserError(f"device={out['device']!r}: choose auto, cpu or cuda[:N]")
    return out


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but this machine has no CUDA device; use device=cpu")
    return torch.device(name)


def load_model(ckpt: str, overrides: list[str], use_ema: bool = False):
    """(model in eval mode on CPU, vocabulary, training config): :func:`spiking_ssm.lm.restore.load_model`, imported
    on use so that argument errors come before the model code's imports (seconds)."""
    from spiking_ssm.lm.restore import load_model as restore

    return restore(ckpt, overrides, use_ema)


def encode_prompt(vocab, prompt: str) -> list[int]:
    """Whitespace-split words -> ids; unknown words -> ``<unk>`` (warning) or UserError without one.

    The unknown and end-of-line words are the vocabulary's ``unk``/``eos`` attributes where it has them
    (``snn_engine.data.language.Vocab``), else ``<unk>``/``<eos>`` when present in ``stoi``."""
    stoi = vocab.stoi
    unk = getattr(vocab, "unk", UNK)
    eos = getattr(vocab, "eos", EOS)
    words = prompt.split()
    if not words:
        if eos not in stoi:
            raise UserError(f"the prompt is empty and the vocabulary has no {EOS} to start from; pass prompt=TEXT")
        return [stoi[eos]]
    unknown = sorted({w for w in words if w not in stoi})
    if unknown:
        if unk not in stoi:
            raise UserError(f"prompt words not in the vocabulary and no {UNK} to map them to: {unknown[:5]}")
        warnings.warn(f"{len(unknown)} prompt word(s) not in the vocabulary, read as {unk}: {unknown[:5]}",
                      stacklevel=2)
    return [stoi.get(w, stoi.get(unk)) for w in words]


def sample(log_probs: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator) -> int:
    """One token id from log-probs [V]: greedy at temperature 0, else softmax(log p / T) over the top_k (0 = all)."""
    if not math.isfinite(temperature) or temperature < 0:
        raise UserError(f"temperature={temperature} must be a finite number >= 0 (0 = greedy decoding)")
    log_probs = log_probs.detach().double().cpu()
    best = log_probs.max()
    if not torch.isfinite(best):
        raise UserError("the model's next-token log-probabilities are not finite (NaN or infinite weights?); "
                        "check the checkpoint with eval.py or use another one")
    if temperature == 0.0:
        return int(log_probs.argmax())
    scores = (log_probs - best) / temperature  # the best word scores 0: no overflow at tiny temperatures
    if 0 < top_k < scores.numel():
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator))


def generate(model: SpikingSSMLanguageModel, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, seed: int = 0, device: torch.device | str = "cpu",
             on_token: Callable[[int], None] | None = None) -> tuple[list[int], dict]:
    """Run the prompt, then sample ``max_new_tokens`` ids, handing each to ``on_token`` as soon as it is drawn.
    Returns (new ids, statistics of the decoding steps: tokens/s and, per generated token, spikes, mixing-conv ACs
    and energy; ``prompt_*`` for the prompt steps)."""
    from spiking_ssm.lm.streaming import StreamingLanguageModel

    device = torch.device(device)
    model = model.to(device).eval()
    stream = StreamingLanguageModel(model)
    generator = torch.Generator().manual_seed(int(seed))
    started = time.perf_counter()
    log_probs = stream.prefill(torch.tensor([prompt_ids], dtype=torch.long, device=device))[0]
    prompt_stats = stream.stats()
    prompt_time = time.perf_counter() - started
    stream.reset_counters()  # from here on: the decoding steps only
    new_ids = []
    started = time.perf_counter()
    for _ in range(max_new_tokens):
        token = sample(log_probs, temperature, top_k, generator)
        new_ids.append(token)
        if on_token is not None:
            on_token(token)
        log_probs = stream.step(torch.tensor([token], device=device))[0]  # each generated token runs once
    elapsed = time.perf_counter() - started
    stats = {**stream.stats(), "seconds": elapsed, "tokens_per_s": max_new_tokens / max(elapsed, 1e-9),
             "prompt_tokens": len(prompt_ids), "prompt_seconds": prompt_time,
             **{f"prompt_{k}": v for k, v in prompt_stats.items() if k.endswith("per_token")}}
    return new_ids, stats


def format_stats(stats: dict, device: torch.device) -> str:
    return "\n".join([
        f"generated {stats['tokens']} tokens in {stats['seconds']:.3f} s: {stats['tokens_per_s']:.1f} tokens/s on "
        f"{device} (prompt: {stats['prompt_tokens']} tokens in {stats['prompt_seconds']:.3f} s)",
        f"spikes per token: {stats['spikes_per_token']:.1f} of {stats['somas']} somas "
        f"(firing rate {stats['firing_rate']:.4f})",
        f"energy per token: {stats['energy_pj_per_token'] / 1e3:.3f} nJ ({stats['ac_per_token']:.0f} AC in the 1x1 "
        f"mixing convs x 0.9 pJ, SpikingSSM paper convention); dense ANN twin of those layers: "
        f"{stats['ann_energy_pj_per_token'] / 1e3:.3f} nJ ({stats['ann_mac_per_token']:.0f} MAC x 4.6 pJ)",
        *([f"memory-inclusive energy per token: {stats['memory_energy_pj_per_token'] / 1e3:.3f} nJ (SpikingJelly's "
           f"SimpleEnergy on the replayed steps + our lines for the S4D state, somas, GLU and norms: compute "
           f"{stats['compute_pj_per_token'] / 1e3:.3f} nJ, weight reads {stats['weights_pj_per_token'] / 1e3:.3f} "
           f"nJ, state {stats['state_pj_per_token'] / 1e3:.3f} nJ; 45 nm, 24.96 pJ/byte)"]
          if "memory_energy_pj_per_token" in stats else []),
    ])


def user_error_in(error: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``error`` (Hydra's instantiate wraps errors raised by a constructor)."""
    while error is not None and not isinstance(error, UserError):
        error = error.__cause__
    return error


class LinePrinter:
    """Words on one line of ``stream`` as they come, flushed at once (space-separated, like ``Vocab.decode``)."""

    def __init__(self, stream) -> None:
        self.stream, self.started = stream, False

    def write(self, text: str) -> None:
        if text:
            self.stream.write((" " if self.started else "") + text)
            self.stream.flush()
            self.started = True

    def end_line(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    printer, new_ids = LinePrinter(sys.stdout), []
    try:
        settings, overrides = parse_args(argv)
        device = pick_device(settings["device"])
        model, vocab, _ = load_model(settings["ckpt"], overrides, settings["use_ema"])
        prompt_ids = encode_prompt(vocab, settings["prompt"])
        printer.write(settings["prompt"].strip())

        def show(token: int) -> None:
            new_ids.append(token)
            printer.write(vocab.decode([token]))

        _, stats = generate(model, prompt_ids, settings["max_new_tokens"], settings["temperature"],
                            settings["top_k"], settings["seed"], device, on_token=show)
        printer.end_line()
        from spiking_ssm.lm.stream_energy import replay_energy

        stats.update(replay_energy(model, prompt_ids, new_ids, device))
        print("---")
        print(format_stats(stats, device), flush=True)
    except KeyboardInterrupt:
        if printer.started:
            printer.end_line()  # the text so far stays, on a line of its own
        print(f"interrupted (Ctrl-C) after {len(new_ids)} generated tokens", file=sys.stderr, flush=True)
        return INTERRUPTED
    except Exception as error:  # noqa: BLE001 - only user errors (also wrapped by Hydra's instantiate) become one line
        cause = user_error_in(error)
        if cause is None:
            raise
        if printer.started:
            printer.end_line()
        print(f"error: {cause}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"
    sys.exit(main())
