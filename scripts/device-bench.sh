#!/usr/bin/env bash
# kiln's GPU benchmark in one call of the `device` tool (docs/BENCHMARKS.md, "GPU benchmark in
# one call"). The GPU machine has no Rust and no network, so the work is split in two:
#
#   scripts/device-bench.sh prepare   here: builds the release binary, stages a stripped copy,
#                                     torch_steps.py and this script in .device-bench/, the
#                                     Vulkan loader .debs in .gl/, and prints the `run` call
#   bash .device-bench/device-bench.sh run
#                                     there, from the repo root: kiln info, bench all --json,
#                                     profile tables and bench steps at batch 64 and 256, and
#                                     PyTorch CUDA's same steps, into $OUT
#
# `run` gives each part its own `timeout` and stops starting parts once the whole budget
# (DEVICE_BENCH_BUDGET seconds, default 420) is spent, so one hang cannot eat the lease.
# DEVICE_BENCH_QUICK=1 makes `run` small (batch 16, one profiled step, `bench peak` only) to
# try the script on lavapipe in a few minutes.
# DEVICE_BENCH_DEST=DIR makes `prepare` stage into another checkout (the one the device tool
# sends) instead of this one.
set -euo pipefail

STAGE=.device-bench
LOADERS=.gl
# The debs the device README names: the Vulkan loader and GL/EGL's dispatch libraries.
LOADER_PACKAGES=(libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
NVIDIA_ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
NVIDIA_EGL=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

# Adds /NAME/ to the checkout's info/exclude unless git already ignores NAME.
ignore_in() {
    local root=$1 name=$2 exclude
    if ! git -C "$root" check-ignore -q "$name"; then
        exclude=$(git -C "$root" rev-parse --git-path info/exclude)
        [[ $exclude = /* ]] || exclude=$root/$exclude
        mkdir -p "$(dirname "$exclude")"
        echo "/$name/" >>"$exclude"
        echo "added /$name/ to $exclude"
    fi
}

prepare() {
    local src dest
    src=$(cd "$(dirname "$0")/.." && pwd)
    dest=$(cd "${DEVICE_BENCH_DEST:-$src}" && pwd)
    (cd "$src" && cargo build --release)
    mkdir -p "$dest/$STAGE"
    ignore_in "$dest" "$STAGE"
    ignore_in "$dest" "$LOADERS"
    strip -o "$dest/$STAGE/kiln" "$src/target/release/kiln"
    cp "$src/scripts/device-bench.sh" "$dest/$STAGE/device-bench.sh"
    local torch_steps
    for torch_steps in "$src/../shared/peers/torch_steps.py" /work/shared/peers/torch_steps.py; do
        if [[ -f $torch_steps ]]; then
            cp "$torch_steps" "$dest/$STAGE/torch_steps.py"
            break
        fi
    done
    [[ -f $dest/$STAGE/torch_steps.py ]] || echo "warning: torch_steps.py not found; the PyTorch part will be skipped" >&2
    if ! compgen -G "$dest/$LOADERS/libvulkan1_*.deb" >/dev/null; then
        # amd64 packages whatever this machine is: the GPU machine is x86-64.
        local apt=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
        mkdir -p "$dest/$LOADERS" /tmp/amd64/partial
        apt-get "${apt[@]}" update
        (cd "$dest/$LOADERS" && apt-get "${apt[@]}" download "${LOADER_PACKAGES[@]}")
    fi
    du -sh "$dest/$STAGE" "$dest/$LOADERS"
    cat <<EOF

Staged in $dest. From a session whose checkout is $dest, call the device tool's run with:
  command:   bash $STAGE/device-bench.sh run
  carry:     ["$STAGE", "$LOADERS"]
  timeout_s: 480
Everything comes back in \$OUT (7 files); summary.log has the wall time of each part.
EOF
}

# --- run -------------------------------------------------------------------------------------

BEGAN=$SECONDS

# part NAME LIMIT FILE CMD...: runs CMD under `timeout` (LIMIT seconds, or what is left of the
# budget), appending its output to $OUT/FILE and the part's wall time and status to the log.
part() {
    local name=$1 limit=$2 file=$3
    shift 3
    local left=$((BUDGET - (SECONDS - BEGAN)))
    if ((left < 15)); then
        echo "== $name: skipped, ${left}s of the ${BUDGET}s budget left"
        return 0
    fi
    ((limit <= left)) || limit=$left
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS status=0
    if [[ $file = *.json ]]; then
        # Only the JSON document on stdout, so the file parses; stderr goes to machine.txt.
        timeout -k 5 "$limit" "$@" >>"$OUT/$file" 2>>"$OUT/machine.txt" || status=$?
    else
        {
            echo "== $name: $*"
            timeout -k 5 "$limit" "$@" 2>&1 || status=$?
            echo
        } >>"$OUT/$file"
    fi
    case $status in
        0) echo "   $name: $((SECONDS - start)) s" ;;
        124 | 137) echo "   $name: TIMED OUT after $((SECONDS - start)) s (output so far in $file)" ;;
        *) echo "   $name: FAILED with status $status after $((SECONDS - start)) s (see $file)" ;;
    esac
}

run() {
    : "${OUT:?run writes into \$OUT (set by the device tool; OUT=/tmp/x to try it here)}"
    mkdir -p "$OUT"
    BUDGET=${DEVICE_BENCH_BUDGET:-420}
    local here
    here=$(cd "$(dirname "$0")" && pwd)
    # Staged (.device-bench/) or straight from a build tree (scripts/, to try it here).
    local kiln=$here/kiln torch_steps=$here/torch_steps.py
    [[ -x $kiln ]] || kiln=$here/../target/release/kiln
    [[ -f $torch_steps ]] || torch_steps=/work/shared/peers/torch_steps.py

    # The GPU machine has no Vulkan loader: unpack the carried debs into / (as the device
    # README says; only these, other packages can break /).
    if ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
        if compgen -G "$LOADERS/*.deb" >/dev/null; then
            for f in "$LOADERS"/*.deb; do dpkg -x "$f" /; done
            ldconfig
        else
            echo "warning: no Vulkan loader here and no $LOADERS/*.deb to unpack (carry $LOADERS, run from the repo root)" >&2
        fi
    fi
    if [[ -z ${VK_DRIVER_FILES:-} && -f $NVIDIA_ICD ]] && ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
        export VK_DRIVER_FILES=$NVIDIA_ICD
        [[ -f $NVIDIA_EGL ]] && export __EGL_VENDOR_LIBRARY_FILENAMES=$NVIDIA_EGL
    fi
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

    local batches=(64 256) profiled=5 torch_steps_n=50 bench=all
    if [[ ${DEVICE_BENCH_QUICK:-0} = 1 ]]; then
        batches=(16) profiled=1 torch_steps_n=3 bench=peak
    fi
    local torch_device=cpu
    if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        torch_device=cuda
    fi

    {
        echo "device-bench run, $(date -u '+%F %T') UTC, budget ${BUDGET}s, batches ${batches[*]}"
        echo "kiln: $kiln; VK_DRIVER_FILES=${VK_DRIVER_FILES:-unset}; torch on $torch_device"
        uptime
        part "nvidia-smi" 20 machine.txt nvidia-smi
        part "kiln info" 60 machine.txt "$kiln" info
        local b model
        for b in "${batches[@]}"; do
            for model in gan vae-mlp vae; do
                part "kiln profile $model, batch $b" 45 profile.txt "$kiln" profile "$model" --batch-size "$b" --steps "$profiled"
            done
            part "kiln bench steps, batch $b" 60 steps.txt "$kiln" bench steps --gan-batch "$b" --vae-batch "$b" --timed-steps $((profiled * 4))
            if [[ -f $torch_steps ]]; then
                part "PyTorch $torch_device steps, batch $b" 60 torch.txt python3 "$torch_steps" --device "$torch_device" --batch "$b" --steps "$torch_steps_n"
            fi
        done
        # The tile engine runs trusted (no wgpu bounds checks or loop counters); the same steps
        # with the checks kept say what that is worth on this GPU.
        part "kiln bench steps, batch ${batches[0]}, wgpu's checks kept" 60 steps_checked.txt \
            env KILN_CHECKED_SHADERS=1 "$kiln" bench steps --gan-batch "${batches[0]}" --vae-batch "${batches[0]}" --timed-steps $((profiled * 4))
        # Last, with what is left of the budget: --json prints nothing until the whole suite
        # is done, so a cut-off run would return nothing at all.
        part "kiln bench $bench --json" "$BUDGET" bench.json "$kiln" bench "$bench" --json --gan-batch "${batches[0]}" --vae-batch "${batches[0]}"
        part "nvidia-smi after" 20 machine.txt nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
        uptime
        echo "device-bench done in $((SECONDS - BEGAN)) s"
    } 2>&1 | tee "$OUT/summary.log"
    # The results' short form at the end of the reply (output_tail).
    grep -HE "step, batch|ms/step|^peak|\"(fma_gflops|copy_gbps)\"" "$OUT/steps.txt" "$OUT/steps_checked.txt" "$OUT/torch.txt" "$OUT/bench.json" 2>/dev/null || true
}

case ${1:-} in
    prepare) prepare ;;
    run) run ;;
    *) usage ;;
esac
