"""Does fine-tuning move the built-in BoolQ-style task's accuracy? (prints one line per run)

    automix bench boolq [--model builtin:tiny] [--steps 100]

Real `run_trial`s: task `boolq` (built-in data, negation rate 0.5), QLoRA rank 16 on every
layer at 4 and 2 bits, batch 16, lr 2e-3; accuracy on 13 x 16 held-out examples before
(`steps 0`) and after fine-tuning.
"""

from __future__ import annotations

import argparse

import torch

from automix.trial import TrialSpec, run_trial


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="automix bench boolq", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:tiny")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    for bits in (4, 2):
        for steps in (0, args.steps):
            r = run_trial(TrialSpec(model=args.model, task="boolq", method="qlora",
                                    layers={"default": {"bits": bits, "rank": 16}}, steps=steps, lr=2e-3,
                                    batch_size=16, seq_len=128, eval_batches=13, eval_batch_size=16))
            print(f"bits {bits} steps {steps}: accuracy {r.accuracy} status {r.status} "
                  f"loss {r.first_loss} -> {r.last_loss}", flush=True)
    return 0


if __name__ == "__main__":
    main()
