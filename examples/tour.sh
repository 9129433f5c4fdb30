#!/usr/bin/env bash
# Every stage by hand through the CLI, on small data and the packaged defaults, offline.
# Outputs go to runs/tour/. The whole pipeline in one command is `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=runs/tour
rm -rf "$RUN" && mkdir -p "$RUN"
export RLHFKIT_STORE="sqlite:///$RUN/feedback.db"
rlhfkit() { .venv/bin/rlhfkit "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Sample 4 completions for 48 RealToxicityPrompts (train split) with SmolLM2-135M"
rlhfkit generate --prompts builtin:rtp --split train --limit 48 --samples-per-prompt 4 --max-new-tokens 24 \
    --project rtp --out "$RUN/completions.jsonl"

step "2. A helpfulness project with instructions; rankings by four labelers imported"
rlhfkit project create helpfulness --criterion helpfulness --instructions examples/instructions.md
rlhfkit feedback import examples/helpfulness_rankings.jsonl --project helpfulness

step "3. Agreement: Krippendorff's alpha, pairwise agreement, each labeler vs the others"
rlhfkit feedback agreement --project helpfulness --heatmap "$RUN/agreement.png"

step "4. Consensus rankings (flagged labelers excluded) -> all C(n,2) training pairs"
rlhfkit feedback pairs --project helpfulness --out "$RUN/pairs.jsonl"

step "5. The hot-house example: three labelers rank three answers, H3 disagrees and is left out"
rlhfkit feedback import examples/seed_rankings.jsonl --project hot-house
rlhfkit feedback agreement --project hot-house
rlhfkit feedback pairs --project hot-house --out "$RUN/seed_pairs.jsonl"
.venv/bin/python -c "
import json
for line in open('$RUN/seed_pairs.jsonl'):
    p = json.loads(line); print(f'  chosen: {p[\"chosen\"]!r:52} rejected: {p[\"rejected\"]!r}')"

step "6. Three automatic labelers rank the sampled completions by profanity, with noise"
for k in 1 2 3; do
    rlhfkit label auto --project rtp --reward scorer:profanity --labeler "ai-$k" --noise 0.5 --seed "$k"
done
rlhfkit feedback agreement --project rtp
rlhfkit feedback pairs --project rtp --out "$RUN/rtp_pairs.jsonl"

step "7. A MiniLM reward model on those pairs, and how it ranks them"
rlhfkit train-rm --pairs "$RUN/rtp_pairs.jsonl" --out "$RUN/rm" --epochs 2 --held-out-fraction 0.25
rlhfkit eval-rm --reward-model "$RUN/rm" --pairs "$RUN/rtp_pairs.jsonl" --project rtp

step "8. RL in miniature: PPO learns tic-tac-toe against a random player"
rlhfkit examples tictactoe --plot "$RUN/tictactoe.png"

step "9. Two PPO steps of SmolLM2 + LoRA against that reward model (the full run: make demo)"
rlhfkit ppo --out "$RUN/ppo" --reward "rm:$RUN/rm" --steps 2 --batch-size 8 --minibatches 2 \
    --max-new-tokens 16

step "10. Before vs after on 16 held-out prompts, and the report"
rlhfkit eval --policy "$RUN/ppo/policy" --limit 16 --samples-per-prompt 1 --max-new-tokens 16 \
    --reward "rm:$RUN/rm" --out "$RUN/ppo/eval.json"
rlhfkit report "$RUN/ppo"

step "Done. Outputs in $RUN/"
ls -1 "$RUN"
