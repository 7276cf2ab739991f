# Shell pieces the GPU scripts share (sourced by tools/gpu_check.sh and tools/gpu_full_run.sh).
#
# sela_library_path BUILD   prints the LD_LIBRARY_PATH sela's binaries need: cuDNN 9 dlopens
#                           its sub-libraries (libcudnn_cnn.so.9, libcudnn_engines_*.so.9) by
#                           name, so when the cuDNN linked is a pip wheel's (not on the
#                           loader's path) its folder goes first. Only for sela's binaries:
#                           PyTorch finds its own copy, and another folder first on its path
#                           could hand it another cuDNN than it was built with.
# unpack_fashion_mnist SRC DST   gunzips the carried Fashion-MNIST files into DST (raw IDX,
#                           readable also by a build without zlib); prints what is there.

sela_library_path() {
  local cudnn_library
  cudnn_library=$(sed -n 's/^SELA_CUDNN_LIBRARY:FILEPATH=//p' "$1/CMakeCache.txt" 2>/dev/null)
  if [ -e "$cudnn_library" ] && [[ "$(readlink -f "$cudnn_library")" == */nvidia/cudnn/* ]]; then
    echo "$(dirname "$(readlink -f "$cudnn_library")")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  else
    echo "${LD_LIBRARY_PATH:-}"
  fi
}

unpack_fashion_mnist() {
  "${PYTHON:-python3}" - "$1" "$2" <<'PY'
import gzip, os, sys
source, destination = sys.argv[1], sys.argv[2]
os.makedirs(destination, exist_ok=True)
for name in os.listdir(source):
    if name.endswith(".gz"):
        with gzip.open(os.path.join(source, name)) as f, \
                open(os.path.join(destination, name[:-3]), "wb") as g:
            g.write(f.read())
print("Fashion-MNIST unpacked:", sorted(os.listdir(destination)))
PY
}
