#!/usr/bin/env bash
# The reference runs of a refactor: nine configs (synthetic default, census mmoe, ple+gradnorm, esmm,
# a parquet log with hashed ids/sequences/nulls, pcgrad, hillstrom dbmtl, aliccp aitm, aliexpress
# mmoe+esmm) with a fixed seed on CPU; each run's metrics.json is copied to OUT/<name>.json.
# Run it before and after a change and compare with `cmp` (issue 13: outputs byte-identical).
#
# usage: scripts/reference_outputs.sh OUT_DIR [PYTHON]     (from the repository root; about 1-2 min)
set -euo pipefail
OUT=$1; PY=${2:-python}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
D=$(cd "$(dirname "$0")/../.." && pwd)/shared/data
P="$OUT/plog"
[ -f "$P/train.parquet" ] || "$PY" "$(dirname "$0")/make_reference_log.py" "$P"
run() {
  name=$1; shift
  rm -rf "$OUT/run_$name"
  "$PY" -m mtl_train hydra.run.dir="$OUT/run_$name" trainer.progress=false "$@" > "$OUT/$name.log" 2>&1 \
    || { echo "FAIL $name (see $OUT/$name.log)"; return; }
  cp "$OUT/run_$name/metrics.json" "$OUT/$name.json"
}
run default
run census_mmoe dataset=census dataset.path="$D/census-income-kdd/census-income.test.gz" model=mmoe trainer.epochs=2
run ple_gradnorm model=ple loss=gradnorm trainer.epochs=2
run esmm model=esmm trainer.epochs=2
run parquet dataset=parquet dataset.train_path="$P/train.parquet" dataset.val_path="$P/val.parquet" \
  dataset.test_path="$P/test.parquet" dataset.schema_file="$P/schema.yaml" dataset.cache_dir="$OUT/cache" \
  model=mmoe trainer.epochs=2
run pcgrad loss=pcgrad trainer.epochs=2
run hillstrom_dbmtl dataset=hillstrom dataset.path="$D/hillstrom-email/hillstrom.csv" dataset.cache_dir="$OUT/cache" \
  model=dbmtl trainer.epochs=2
run aliccp_aitm dataset=aliccp dataset.train_path="$D/ali-ccp-sample/ali_ccp_train_sample.csv" \
  dataset.val_path="$D/ali-ccp-sample/ali_ccp_val_sample.csv" dataset.test_path="$D/ali-ccp-sample/ali_ccp_test_sample.csv" \
  dataset.cache_dir="$OUT/cache" model=aitm trainer.epochs=2
run aliexpress_esmm dataset=aliexpress dataset.train_path="$D/aliexpress-sample/aliexpress_train_sample.csv" \
  dataset.test_path="$D/aliexpress-sample/aliexpress_test_sample.csv" dataset.cache_dir="$OUT/cache" \
  model=mmoe graph=esmm trainer.epochs=2
echo "metrics.json of each run: $OUT/<name>.json"
