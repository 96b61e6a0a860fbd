#!/usr/bin/env bash
# The experiment loop in miniature on synthetic data (`make zoo-demo`, a few minutes; README
# "Experiments"): an Optuna sweep, the zoo trained in parallel, the table of runs, the best models
# exported, predicted in one pass, blended and scored. Run from anywhere; everything goes to $W.
# Re-running continues where it stopped (encode skips shards, the sweep and the zoo resume).
set -euo pipefail
W=${1:-zoo-demo}
[ -e $W/raw ] || python -m data_prep.synth --out $W/raw --days 0.5                     # a raw tree
python -m data_prep.encode --src $W/raw --dst $W/enc --shard 0 --num-shards 1 --blocks-per-file 2
python -m data_prep.stats  --data $W/enc --out $W/enc/stats.json
[ -e $W/raw-test ] || python -m data_prep.synth --out $W/raw-test --days 0.25 --start 0001-02-02
python -m data_prep.encode --src $W/raw-test --dst $W/enc-test --shard 0 --num-shards 1  # the test set
tfpipe export --data $W/enc-test --out $W/test.truth.parquet                              # and its truth
cat > $W/space.yaml <<'EOF'
optim.learning_rate: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}
model.mlp_units: {type: categorical, choices: [[64], [128, 128]]}
EOF
tfpipe sweep --config tiny model.name=mlp data.sources.0.path=$W/enc epochs=1 --space $W/space.yaml \
    --trials 4 --study mlp --storage sqlite:///$W/sweeps.db --runs-dir $W/sweeps
cat > $W/zoo.yaml <<EOF
runs:
  - sweep: {study: mlp, storage: "sqlite:///$W/sweeps.db", best: 2}   # the sweep's best two, longer
    overrides: [epochs=2]
  - name: sq                                                          # and the flagship
    config: tiny
    overrides: [data.sources.0.path=$W/enc, epochs=1]
EOF
tfpipe launch --runs $W/zoo.yaml --runs-dir $W/zoo --slots 2                  # or --engine ray --address auto
tfpipe runs ls $W/zoo                                                         # what differs, R², status
tfpipe export-models --runs $W/zoo --select best:3 --out $W/models            # self-contained .keras + index
tfpipe predict --models $W/models --oof --out-dir $W/oof                      # validation, one pass, 3 models
tfpipe predict --models $W/models --data $W/enc-test --out-dir $W/pred        # the test set, one pass
tfpipe blend --pred-dir $W/oof --method hill-climb --out $W/blend.oof.parquet
tfpipe blend --apply $W/blend.oof.blend.json --pred-dir $W/pred --out $W/submission.parquet
tfpipe score --pred $W/submission.parquet --truth $W/test.truth.parquet
