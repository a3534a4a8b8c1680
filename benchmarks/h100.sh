#!/usr/bin/env bash
# The GPU measurements of issues 3, 4, 6 and 8, stage by stage, each stage's output teed to
# $OUT/<stage>.txt (or ./h100-out/).  Meant for the lent H100 machine, which has torch + CUDA,
# numpy, pandas, pyarrow and scipy but not Ray, healpy, astropy, zuko or scikit-learn:
#
#   here:    bash ../shared/gpu/pack-site.sh zuko scikit-learn pyyaml tqdm h5py hpgeom
#   device:  mkdir -p /tmp/site && tar -xJf .gpu/site.tar.xz -C /tmp/site \
#              && export PYTHONPATH=/tmp/site:$PWD/src && bash benchmarks/h100.sh step sample sgan
#            (carry [".gpu"]; one call runs at most 10 minutes, so split the stages over calls)
#
# Stages (rough H100 minutes):
#   imports  what is importable (seconds)
#   step     cWGAN-GP training step, batch 200 / 5 critic steps and larger batches   (~1)
#            target: >= 240k rows/s at batch 200 (20x the published code's 11.8k)
#   sample   model-only sampling rate, GAN and flow, 20M rows                        (~1)
#            targets: flow >= 10M rows/s (issue 8); the model must outrun 5M rows/s (issue 4)
#   sgan     SGAN training s/epoch (30 x 128 crops) and generation Mpix/s            (~3)
#            targets: <= 1.0 s per epoch, >= 500 Mpix/s
#   compare  galray-flow and galray-cWGAN-GP on 1.7M injections, 45 s each          (~5)
#            (PZFlow's reference on an H100: 0.524 in 45 s; target: flow <= 0.52)
#   emulate  end-to-end `galray emulate` on Ray, 2M deep x 50 realizations = 100M    (~6)
#            target: >= 5M rows/s; needs Ray (the site pack) and writes ~5 GB
#   stamps   galaxy-stamp generator (issue 18): 48x48 stamps/s generated and trained      (~1)
#   estimator measurement yardstick (issue 19): galaxies/s of the CNN (GPU), bound, fit (~2)
#
# GALRAY_SMALL=1 shrinks every stage to a minute on a CPU, to check the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-h100-out}
mkdir -p "$out"
small=${GALRAY_SMALL:-0}
py=${PYTHON:-python3}

pick() { if [ "$small" = 1 ]; then echo "$2"; else echo "$1"; fi; }

stage() {
  local name=$1
  shift
  echo "=== $name: $*" | tee "$out/$name.txt"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$out/$name.txt"
}

run_stage() {
  case $1 in
    imports)
      stage imports "$py" -c "
import importlib, torch
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')
for m in ['ray', 'healpy', 'hpgeom', 'astropy', 'zuko', 'sklearn', 'yaml', 'tqdm', 'mlflow',
          'galsim', 'sep']:
    try:
        importlib.import_module(m); print('ok     ', m)
    except Exception as e:
        print('MISSING', m, type(e).__name__, e)
" ;;
    step)
      stage step "$py" benchmarks/bench_emulator_step.py \
        --batch-size "$(pick 200,1024,4096 200)" --critic-steps 5 --seconds "$(pick 5 1)" ;;
    sample)
      for model in gan flow; do
        stage "sample-$model" "$py" benchmarks/bench_emulate.py --model "$model" --model-only \
          --model-rows "$(pick 20000000 200000)" --deep-rows "$(pick 1000000 20000)"
      done ;;
    sgan)
      if [ "$small" = 1 ]; then
        stage sgan "$py" benchmarks/bench_sgan.py --net debug --batch 8 --batches 2 \
          --gen-tile 128 --repeats 1 --image 256
      else
        stage sgan "$py" benchmarks/bench_sgan.py
        stage sgan-mixed "$py" benchmarks/bench_sgan.py --crop mixed --skip-generate --modes bf16
      fi ;;
    compare)
      stage compare "$py" benchmarks/bench_flow_compare.py --methods flow,gan \
        --injections "$(pick 1700000 60000)" --budget "$(pick 45 5)" \
        --eval-rows "$(pick 50000 5000)" ;;
    emulate)
      stage emulate "$py" benchmarks/bench_emulate.py --skip-memory \
        --deep-rows "$(pick 2000000 20000)" --realizations "$(pick 50 2)" \
        --model-rows "$(pick 4000000 20000)" ;;
    stamps)
      stage stamps "$py" benchmarks/bench_stamps.py --net "$(pick default smoke)" \
        --rows "$(pick 262144 256)" --batch "$(pick 8192 256)" \
        --train-batch "$(pick 512 32)" --galsim-rows "$(pick 200 10)" --repeats "$(pick 5 1)" ;;
    estimator)
      stage estimator "$py" benchmarks/bench_estimator.py --device auto \
        --rows "$(pick 4000 40)" --workers "$(pick 16 1)" --only cnn bound "fit (n interpolated)" ;;
    *)
      echo "unknown stage $1 (imports step sample sgan compare emulate stamps estimator)" >&2
      return 2 ;;
  esac
}

[ $# -gt 0 ] || set -- imports step sample sgan stamps estimator
for s in "$@"; do run_stage "$s" || exit $?; done
