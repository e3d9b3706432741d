#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md in one command that fits one 10-minute device call.
#
# Here, once:    bash benchmarks/gpu_wheels.sh        (pydantic & co. into build/gpu-wheels/, 2.8 MiB)
# There:         bash benchmarks/gpu_suite.sh         (device run with carry ["build/gpu-wheels"], timeout_s 600)
#
# Stages (each writes its JSON as soon as it ends, so a stage cut off by the time limit loses only itself):
#   0. wheels, versions, a numerical check of the fused LoRA layer against peft's on the GPU (fp32, bf16)
#   1. ViT-B/16, 224 px, batch 128, bf16: every ViT method of the CPU table
#   2. ResNet-50, 224 px, batch 256, bf16: CNN methods, then full/bn with --channels-last in both loops
#   3. whatever time is left: ViT-B/16 under torch.compile (full, bitfit, LoRA on every block Linear)
# Results go to $OUT (the device tool's folder) or benchmarks/results/.
# SMOKE=1 runs every stage here on the CPU with tiny models (test_vit/test_resnet, 32 px, a few steps)
# to check the script itself before spending device time; its files go to a temporary folder, never
# over the recorded results in benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET=${BUDGET:-585}
if [ "${SMOKE:-0}" = 1 ]; then OUT=${OUT:-$(mktemp -d /tmp/gpu-suite-smoke.XXXXXX)}; fi
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
[ "${SMOKE:-0}" = 1 ] && PY=${PY:-.venv/bin/python}
PY=${PY:-python3}
if ! $PY -c "import pydantic" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site build/gpu-wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
left() { echo $((BUDGET - ($(date +%s) - START))); }
if [ "${SMOKE:-0}" = 1 ]; then
    DEVICE=cpu VIT=test_vit RESNET=test_resnet SIZE=32 VIT_BATCH=8 CNN_BATCH=8 STEPS="--warmup 1 --steps 2 --window 1 --memory-steps 1" EVAL="--eval-batch 8 --eval-batches 1"
    CHECK_MODEL=test_vit CHECK_SIZE=32
    export ACCELERATE_USE_CPU=true
else
    DEVICE=cuda VIT=vit_base_patch16_224 RESNET=resnet50 SIZE=224 VIT_BATCH=128 CNN_BATCH=256 STEPS="" EVAL=""
    CHECK_MODEL=vit_small_patch16_224 CHECK_SIZE=224
fi
export DEVICE CHECK_MODEL CHECK_SIZE

$PY - <<'PY' 2>&1 | tee "$OUT/gpu_suite_check.txt"
import os, sys, torch, timm, peft, accelerate, pydantic
print("python", sys.version.split()[0], "torch", torch.__version__, "timm", timm.__version__, "peft", peft.__version__,
      "accelerate", accelerate.__version__, "pydantic", pydantic.__version__)
device, model_name, size = os.environ["DEVICE"], os.environ["CHECK_MODEL"], int(os.environ["CHECK_SIZE"])
if device == "cuda":
    print("device", torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported())
sys.path.insert(0, ".")
from medpeft_cli.methods import get_method, validate_options
from medpeft_cli.models import create_backbone

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
def build(impl):
    info = get_method("lora")
    model = info.apply(create_backbone(model_name, "random", 4, size, 0), validate_options(info, {"impl": impl, "targets": ["qkv", "proj", "fc1", "fc2"]}))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.to(device).train()
x = torch.randn(16, 3, size, size, device=device)
fused, ref = build("fused"), build("peft")
for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
    outs = []
    for m in (fused, ref):
        m.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            y = m(x)
        y.float().square().mean().backward()
        a = next(p.grad for n, p in m.named_parameters() if n.endswith("blocks.0.mlp.fc1.lora_A.default.weight"))
        outs.append((y.float(), a.float()))
    rel = lambda u, v: ((u - v).norm() / v.norm()).item()
    print(f"fused vs peft LoRA ({label}): output rel. error {rel(outs[0][0], outs[1][0]):.2e}, lora_A grad rel. error {rel(outs[0][1], outs[1][1]):.2e}")
PY

run() {  # run NAME SECONDS ARGS...
    local name=$1 secs=$2; shift 2
    if [ "$(left)" -lt 60 ]; then echo "skipped $name: $(left) s left"; return; fi
    [ "$secs" -gt "$(left)" ] && secs=$(left)
    echo "== $name (limit ${secs}s) =="
    # shellcheck disable=SC2086  # STEPS and EVAL are lists of flags
    timeout "$secs" $PY benchmarks/train_step.py --device "$DEVICE" --out "$OUT" "$@" $STEPS $EVAL 2>&1 | grep -v ": done$" || echo "$name: stopped (exit $?)"
}

VIT_METHODS='full,linear,bitfit,lora,lora:impl=peft,lora:targets=[qkv,proj,fc1,fc2],lora:impl=peft:targets=[qkv,proj,fc1,fc2],ssf,adaptformer'
# Later flags win: in SMOKE mode $STEPS and $EVAL (appended by run) shrink every stage.
run vit-b16 240 --backbone $VIT --img-size $SIZE --batch $VIT_BATCH --warmup 5 --steps 20 --window 5 --eval-batch 256 --eval-batches 4 --method "$VIT_METHODS"
run resnet50 150 --backbone $RESNET --img-size $SIZE --batch $CNN_BATCH --warmup 5 --steps 15 --window 5 --eval-batch 256 --eval-batches 4 --method 'full,linear,bitfit,bn,ssf'
run resnet50-channels-last 80 --backbone $RESNET --img-size $SIZE --batch $CNN_BATCH --warmup 5 --steps 15 --window 5 --eval-batch 256 --eval-batches 2 --method 'full,bn' --channels-last
[ "${SMOKE:-0}" = 1 ] && BUDGET=0  # inductor needs minutes per model on a CPU: the smoke run stops before compiling
run vit-b16-compile 600 --backbone $VIT --img-size $SIZE --batch $VIT_BATCH --warmup 3 --steps 10 --window 5 --eval-batch 256 --eval-batches 2 --memory-steps 2 --method 'full,bitfit,lora:targets=[qkv,proj,fc1,fc2]' --compile
echo "suite took $(( $(date +%s) - START )) s; files in $OUT:"; ls "$OUT"
