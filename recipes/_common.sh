# Shared by the sentiment recipes (sourced, not run).
complete() {  # complete FOLDER: true when the folder's run record says "complete"
  python -c 'import json,sys; r=json.load(open(sys.argv[1]+"/aligndistil.json")); sys.exit(r.get("status")!="complete")' "$1" 2>/dev/null
}
stage() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }
# bf16 autocast for training: on CUDA by default (--mixed-precision auto); on a CPU only when it
# multiplies bf16 natively (AVX512-BF16/AMX), where it is about 1.7x faster than fp32.
if python -c 'import sys, torch; from aligndistil_cli.models import cpu_bf16_native
sys.exit(torch.cuda.is_available() or not cpu_bf16_native())' 2>/dev/null; then
  MIXED_PRECISION=bf16
else
  MIXED_PRECISION=auto
fi
